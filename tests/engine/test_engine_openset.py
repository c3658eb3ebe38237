"""Open-set recognition end to end: metrics vs sklearn, the manifest reader, run / evaluate / predict / demo."""

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import auc, precision_recall_fscore_support

from capro.cli import demo as demo_cli
from capro.cli import main
from capro.data.layout import ClassInfo, read_classes
from capro.engine.evaluate import OPENSET_FILE, openset_from_logits, read_openset
from capro.errors import DataError
from capro.utils.io import read_json, read_jsonl

TINY_DEMO = {"data": {"train_size": 200, "val_size": 40, "test_size": 60, "image_size": 16},
             "preset": "tiny",
             "overrides": ["model.backbone=simple_cnn", "train.max_steps_per_epoch=3", "openset.threshold=1.0"]}


def _reference(logits: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Mean C-F1 (%) and PR-AUC by sklearn's per-class precision / recall, threshold by threshold."""
    k = logits.shape[1]
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    truth = np.where(target < 0, k, target)
    cps, crs = [], []
    for th in np.linspace(0.01, 0.99, 100):
        pred = np.where(prob.max(1) > th, prob.argmax(1), k)
        p, r, _, _ = precision_recall_fscore_support(truth, pred, labels=list(range(k + 1)),
                                                     average=None, zero_division=0)
        cps.append(100 * p.mean())
        crs.append(100 * r.mean())
    cp, cr = np.array(cps), np.array(crs)
    cf1 = np.where(cp + cr > 0, 2 * cp * cr / np.maximum(cp + cr, 1e-300), 0)
    order = np.argsort(cr, kind="stable")
    return float(cf1.mean()), float(auc(cr[order] / 100, cp[order] / 100))


def test_openset_from_logits_matches_sklearn():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=2.0, size=(80, 4))
    target = rng.integers(-1, 4, size=80)
    out = openset_from_logits(logits.astype(np.float32), target)
    mean_cf1, pr_auc = _reference(logits.astype(np.float32).astype(np.float64), target)
    assert out["n"] == 80 and out["n_unknown"] == int((target == -1).sum())
    assert out["mean_cf1"] == pytest.approx(mean_cf1, abs=1e-9)
    assert out["pr_auc"] == pytest.approx(pr_auc, abs=1e-9)


def test_openset_hand_computed_case():
    # two known classes; sample 0 confidently right, sample 1 (unknown) confidently class 0,
    # sample 2 (class 1) unsure (max prob 0.5): with th < 0.5 all answered, above it 2 is unknown
    logits = np.log(np.array([[0.9, 0.1], [0.8, 0.2], [0.5, 0.5]]))
    out = openset_from_logits(logits, np.array([0, -1, 1]))
    # th < 0.5 (50 thresholds): pred 0,0,0 -> P = (1/3, 0, 0), R = (1, 0, 0): CP 11.1, CR 33.3
    # 0.5 <= th < 0.8 (30): pred 0,0,U -> P = (1/2, 0, 0), R = (1, 0, 0): CP 16.7, CR 33.3
    # 0.8 <= th < 0.9 (10): pred 0,U,U -> P = (1, 0, 1/2), R = (1, 0, 1): CP 50, CR 66.7
    # th >= 0.9 (10): all U -> P = (0, 0, 1/3), R = (0, 0, 1): CP 11.1, CR 33.3
    ths = np.linspace(0.01, 0.99, 100)
    counts = [(ths < 0.5).sum(), ((ths >= 0.5) & (ths < 0.8)).sum(), ((ths >= 0.8) & (ths < 0.9)).sum(),
              (ths >= 0.9).sum()]
    assert counts == [50, 30, 10, 10]

    def f1(p: float, r: float) -> float:
        return 2 * p * r / (p + r)

    expect = (50 * f1(100 / 9, 100 / 3) + 30 * f1(100 / 6, 100 / 3) + 10 * f1(50, 200 / 3)
              + 10 * f1(100 / 9, 100 / 3)) / 100
    assert out["mean_cf1"] == pytest.approx(expect, rel=1e-9)


@pytest.mark.parametrize(("text", "message"), [
    ('{"id": "a", "image": "x.png", "label": "nope"}', r"openset_test.jsonl:1: label 'nope' is not in classes.json"),
    ('{"id": "a", "image": "x.png"}', r"openset_test.jsonl:1: expected an object"),
    ('{"id": "a", "image": "x.png", "label": null}\n{oops', r"openset_test.jsonl:2: not valid JSON"),
])
def test_read_openset_errors_name_file_and_row(tmp_path: Path, text: str, message: str):
    (tmp_path / OPENSET_FILE).write_text(text + "\n")
    with pytest.raises(DataError, match=message):
        read_openset(tmp_path, [ClassInfo(name="cat")])
    with pytest.raises(DataError, match="openset_test.jsonl: not found"):
        read_openset(tmp_path / "elsewhere", [ClassInfo(name="cat")])


@pytest.fixture(scope="module")
def openset_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``capro demo --quick --open-set`` on the tiny sizes: (output dir, printed text)."""
    out = tmp_path_factory.mktemp("openset_demo")
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(buf):
        mp.setitem(demo_cli.DEMOS, "quick", TINY_DEMO)
        assert main(["demo", "--quick", "--open-set", "--out", str(out), "--device", "cpu"]) == 0
    return out, buf.getvalue()


def test_openset_demo_reports_vanilla_and_final(openset_demo):
    out, text = openset_demo
    m = read_json(out / "run" / "metrics.json")
    rows = read_jsonl(out / "data" / OPENSET_FILE)
    n_unknown = sum(r["label"] is None for r in rows)
    assert 0 < n_unknown < len(rows)
    assert m["openset"]["n"] == len(rows) and m["openset"]["n_unknown"] == n_unknown
    stage1 = m["stages"]["stage1"]["openset"]
    assert stage1["n"] == len(rows) and 0 <= stage1["pr_auc"] <= 1 and 0 <= stage1["mean_cf1"] <= 100
    assert f"{stage1['mean_cf1']:.2f}" in text and f"{m['openset']['pr_auc']:.4f}" in text
    assert "stage-1 (vanilla)" in text and "mean C-F1" in text


def test_evaluate_open_set_recomputes_and_records(openset_demo, capsys):
    out, _ = openset_demo
    run = out / "run"
    before = read_json(run / "metrics.json")["openset"]
    (run / "metrics.json").write_text(json.dumps({"eval": {}}))
    assert main(["evaluate", str(run), "--open-set", "--json", "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert {k: got[k] for k in before} == pytest.approx(before)
    assert read_json(run / "metrics.json")["openset"] == pytest.approx(before)
    assert main(["evaluate", str(run), "--open-set", "--device", "cpu"]) == 0
    assert "mean C-F1" in capsys.readouterr().out


def test_predict_open_set_uses_the_configured_threshold(openset_demo, capsys):
    out, _ = openset_demo
    run, data = out / "run", out / "data"
    image = str(data / read_jsonl(data / OPENSET_FILE)[0]["image"])
    names = {c.name for c in read_classes(data)}
    assert main(["predict", str(run), image, "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["prediction"] in names
    # openset.threshold=1.0 in the run's config: no softmax reaches it
    assert main(["predict", str(run), image, "--open-set", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["prediction"] == "unknown"
    assert main(["predict", str(run), image, "--open-set", "--threshold", "0", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["prediction"] in names


def test_evaluate_open_set_without_the_manifest_names_the_file(tiny_run, capsys):
    code = main(["evaluate", str(tiny_run[0]), "--open-set", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0 and "openset_test.jsonl" in err and len(err.strip().splitlines()) == 1


def test_open_set_warns_when_stage_2_kept_a_stricter_rule(tmp_path: Path):
    import warnings

    from capro.engine.predict import warn_strict_rule_for_open_set
    from capro.utils.io import write_json

    assert not warn_strict_rule_for_open_set(tmp_path)  # no metrics.json: nothing to say
    write_json(tmp_path / "metrics.json", {"online_rule": {"chosen": "paper", "rules": {}}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_strict_rule_for_open_set(tmp_path)
    write_json(tmp_path / "metrics.json", {"online_rule": {"chosen": "top1", "rules": {}}})
    with pytest.warns(UserWarning, match=r"'top1' keep rule .* retrain with method.keep_rules=\[\]"):
        assert warn_strict_rule_for_open_set(tmp_path)
