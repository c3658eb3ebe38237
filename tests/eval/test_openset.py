import numpy as np
import pytest
from sklearn.metrics import auc

from capro.errors import DataError
from capro.eval.openset import openset_metrics


def test_hand_computed_two_known_classes():
    # num_known = 2 -> classes 0, 1 and unknown (2).
    max_prob = np.array([0.9, 0.4, 0.8, 0.3, 0.95])
    pred = np.array([0, 0, 1, 1, 0])
    target = np.array([0, 0, 1, -1, -1])
    got = openset_metrics(max_prob, pred, target, num_known=2, thresholds=np.array([0.5, 0.85]))
    # th 0.5: effective [0, U, 1, U, 0]; truth [0, 0, 1, U, U]
    #   class 0: TP1 pred2 gt2 -> P .5 R .5; class 1: TP1 pred1 gt1 -> 1, 1; U: TP1 pred2 gt2 -> .5 .5
    cp1, cr1 = (0.5 + 1 + 0.5) / 3 * 100, (0.5 + 1 + 0.5) / 3 * 100
    # th 0.85: effective [0, U, U, U, 0]
    #   class 0: TP1 pred2 gt2 -> .5 .5; class 1: TP0 pred0 gt1 -> 0, 0; U: TP1 pred3 gt2 -> 1/3, .5
    cp2, cr2 = (0.5 + 0 + 1 / 3) / 3 * 100, (0.5 + 0 + 0.5) / 3 * 100
    assert got["cp"] == pytest.approx([cp1, cp2], abs=1e-12)
    assert got["cr"] == pytest.approx([cr1, cr2], abs=1e-12)
    f1 = [2 * cp1 * cr1 / (cp1 + cr1), 2 * cp2 * cr2 / (cp2 + cr2)]
    assert got["cf1"] == pytest.approx(f1, abs=1e-12)
    assert got["mean_cf1"] == pytest.approx(np.mean(f1), abs=1e-12)
    # recall-sorted points: (cr2, cp2), (cr1, cp1); trapezoid
    area = (cr1 - cr2) / 100 * (cp1 + cp2) / 200
    assert got["pr_auc"] == pytest.approx(area, abs=1e-12)


def test_default_thresholds_and_auc_consistency():
    rng = np.random.default_rng(0)
    n = 400
    target = rng.integers(-1, 5, n)
    pred = np.where(rng.random(n) < 0.6, np.maximum(target, 0), rng.integers(0, 5, n))
    max_prob = rng.random(n)
    got = openset_metrics(max_prob, pred, target, num_known=5)
    assert np.allclose(got["thresholds"], np.linspace(0.01, 0.99, 100))
    order = np.argsort(got["cr"], kind="stable")
    assert got["pr_auc"] == pytest.approx(auc(got["cr"][order] / 100, got["cp"][order] / 100))
    # threshold above every probability: everything is unknown -> only the unknown class scores
    top = openset_metrics(max_prob, pred, target, num_known=5, thresholds=np.array([1.0]))
    share_unknown = np.mean(target == -1)
    assert top["cp"][0] == pytest.approx(share_unknown / 6 * 100)
    assert top["cr"][0] == pytest.approx(100 / 6)


def test_rejects_out_of_range_labels():
    with pytest.raises(DataError, match="predictions"):
        openset_metrics(np.array([0.9]), np.array([3]), np.array([0]), num_known=3)
    with pytest.raises(DataError, match="targets"):
        openset_metrics(np.array([0.9]), np.array([0]), np.array([-2]), num_known=3)


def test_auroc_counts_known_over_unknown_pairs_by_hand():
    # known max-probs 0.9, 0.4; unknown 0.6, 0.3: pairs (0.9>0.6, 0.9>0.3, 0.4<0.6, 0.4>0.3) -> 3/4
    got = openset_metrics(np.array([0.9, 0.6, 0.4, 0.3]), np.array([0, 1, 1, 0]),
                          np.array([0, -1, 1, -1]), num_known=2)
    assert got["auroc"] == pytest.approx(0.75)
    # a tie between a known and an unknown sample counts half: 1 + 0.5 over 2 pairs
    tie = openset_metrics(np.array([0.7, 0.7, 0.2]), np.array([0, 0, 0]), np.array([0, -1, -1]), num_known=1)
    assert tie["auroc"] == pytest.approx(0.75)
    # no unknown sample: undefined
    assert openset_metrics(np.array([0.7]), np.array([0]), np.array([0]), num_known=1)["auroc"] is None


def test_pr_auc_collapses_for_a_confident_model_while_auroc_keeps_the_ranking():
    # the same ranking of 40 known over 40 unknown samples, squeezed above 0.99: PR-AUC reads only
    # the fixed thresholds 0.01-0.99, where nothing changes, so its area is 0; AUROC is unchanged
    rng = np.random.default_rng(1)
    known, unknown = rng.uniform(0.5, 1.0, 40), rng.uniform(0.0, 0.6, 40)
    prob = np.concatenate([known, unknown])
    target = np.concatenate([np.zeros(40, int), -np.ones(40, int)])
    pred = np.zeros(80, int)
    spread = openset_metrics(prob, pred, target, num_known=1)
    squeezed = openset_metrics(0.995 + 0.004 * prob, pred, target, num_known=1)
    assert spread["pr_auc"] > 0.3 and squeezed["pr_auc"] == 0.0
    assert squeezed["auroc"] == pytest.approx(spread["auroc"])
    assert 0.5 < spread["auroc"] < 1.0
