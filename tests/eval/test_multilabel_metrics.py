from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from capro.eval.multilabel import multilabel_metrics

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "capro_released_golden.npz"
NAMES = {"C-P": "CP", "C-R": "CR", "C-F1": "CF1", "O-P": "OP", "O-R": "OR", "O-F1": "OF1",
         "mAP-micro": "mAP_micro"}


def test_matches_released_precision_recall_map():
    d = np.load(GOLDEN)
    got = multilabel_metrics(d["ml_scores"], d["ml_targets"])
    for name, value in zip(d["ml_metric_names"], d["ml_metrics"]):
        assert got[NAMES[str(name)]] == pytest.approx(float(value), abs=1e-9), name
    ap = [average_precision_score(d["ml_targets"][:, c], d["ml_scores"][:, c]) for c in range(12)]
    assert got["mAP_macro"] == pytest.approx(100 * np.mean(ap), abs=1e-9)


def test_macro_map_matches_sklearn_and_skips_classes_without_positives():
    rng = np.random.default_rng(0)
    targets = (rng.random((80, 6)) < 0.3).astype(int)
    targets[0, :] = 1
    scores = rng.random((80, 6))
    got = multilabel_metrics(scores, targets)
    assert got["mAP_macro"] == pytest.approx(
        100 * average_precision_score(targets, scores, average="macro"), abs=1e-9
    )
    targets[:, 2] = 0
    got = multilabel_metrics(scores, targets)
    keep = [0, 1, 3, 4, 5]
    assert got["mAP_macro"] == pytest.approx(
        100 * average_precision_score(targets[:, keep], scores[:, keep], average="macro"), abs=1e-9
    )


def test_hand_case_edge_readings():
    # 3 samples, 4 classes, top-2. Class 3 is never predicted; sample 2 has no GT label.
    scores = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.9, 0.8, 0.0], [0.7, 0.1, 0.9, 0.0]])
    targets = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0]])
    got = multilabel_metrics(scores, targets, top=2)
    e = 1e-4
    # predicted: s0 {0,1}, s1 {1,2}, s2 {2,0}; correct: s0 {0}, s1 {1,2}.
    cp = np.mean([1 / (2 + e), 1 / (2 + e), 1 / (2 + e), 0.0]) * 100
    cr = np.mean([1 / (1 + e), 1 / (1 + e), 1 / (1 + e), 0.0]) * 100
    op = np.mean([1 / (2 + e), 2 / (2 + e), 0.0]) * 100
    orr = np.mean([1 / (2 + e), 2 / (2 + e), 0 / e]) * 100
    assert got["CP"] == pytest.approx(cp, abs=1e-12)
    assert got["CR"] == pytest.approx(cr, abs=1e-12)
    assert got["CF1"] == pytest.approx(2 * cp * cr / (cp + cr), abs=1e-12)
    assert got["OP"] == pytest.approx(op, abs=1e-12)
    assert got["OR"] == pytest.approx(orr, abs=1e-12)
    assert got["OF1"] == pytest.approx(2 * op * orr / (op + orr), abs=1e-12)


def test_empty_input_gives_nan():
    got = multilabel_metrics(np.zeros((0, 4)), np.zeros((0, 4)))
    assert set(got) == {"CP", "CR", "CF1", "OP", "OR", "OF1", "mAP_micro", "mAP_macro"}
    assert all(np.isnan(v) for v in got.values())
