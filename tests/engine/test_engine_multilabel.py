"""Multi-label runs end to end: class weights, per-class cleaning verdicts, metrics recomputed,
the demo's scenario table, and NUS-WIDE's native layout converted and run."""

import io
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from capro.cli import demo as demo_cli
from capro.cli import main
from capro.cli.demo import scenario_table
from capro.config import load_config
from capro.data.adapters import convert
from capro.data.layout import read_classes, read_split
from capro.engine.distributed import DistInfo
from capro.engine.evaluate import collect
from capro.engine.predict import evaluate_run
from capro.engine.runner import load_run_model, run_pipeline
from capro.engine.stages import RunContext
from capro.eval.multilabel import multilabel_metrics
from capro.losses import pos_weights
from capro.utils.io import read_json, read_jsonl

TINY_ML = ["model.backbone=simple_cnn", "stage3.mixup=false", "train.max_steps_per_epoch=3"]


@pytest.fixture(scope="module")
def ml_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``capro demo --quick --multilabel`` on the tiny sizes: (output dir, printed text)."""
    out = tmp_path_factory.mktemp("ml_demo")
    tiny = {"data": {"train_size": 200, "val_size": 40, "test_size": 60, "image_size": 16},
            "preset": "tiny", "overrides": ["model.backbone=simple_cnn", "train.max_steps_per_epoch=3",
                          "clean.protect_anchors=true"]}
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(buf):
        mp.setitem(demo_cli.DEMOS, "quick", tiny)
        assert main(["demo", "--quick", "--multilabel", "--out", str(out), "--device", "cpu"]) == 0
    return out, buf.getvalue()


def test_multilabel_demo_runs_every_stage_and_prints_the_scenario(ml_demo):
    out, text = ml_demo
    run, data = out / "run", out / "data"
    m = read_json(run / "metrics.json")
    assert m["multi_label"] is True and m["final_stage"] == m["fine_tune_guard"]["kept"]  # D18
    assert set(m["stages"]) >= {"stage1", "features", "anchors", "stage2", "stage3a", "stage3b"}
    keys = {"CP", "CR", "CF1", "OP", "OR", "OF1", "mAP_micro", "mAP_macro", "n"}
    assert set(m["eval"]["test"]) == keys and set(m["stages"]["stage1"]["eval"]["test"]) == keys
    assert "openset" not in m
    first, final = m["stages"]["stage1"]["eval"]["test"], m["eval"]["test"]
    assert f"{first['mAP_macro']:.2f}" in text and f"{final['OF1']:.2f}" in text and "macro mAP" in text

    # the metrics are multilabel_metrics of the final model's sigmoid scores on the test split
    model, classes, cfg, multi = load_run_model(run)
    assert multi
    ctx = RunContext(cfg=cfg, data_root=data, run_dir=run, dist=DistInfo(0, 1, 0, torch.device("cpu")),
                     classes=classes, train=read_split(data, "train"), multi_label=True)
    logits, targets = collect(model, ctx.eval_dataset(read_split(data, "test").records),
                              device=torch.device("cpu"))
    assert targets.shape == (60, 10)
    again = multilabel_metrics(1 / (1 + np.exp(-logits.astype(np.float64))), targets)
    assert again == pytest.approx({k: v for k, v in final.items() if k != "n"}, abs=1e-9)
    assert evaluate_run(run, device="cpu") == pytest.approx({"split": "test", "data": str(data), **final})

    # positive weights from the web-label counts: sqrt((N - n_c) / n_c)
    web = ctx.web_targets()
    state = torch.load(run / "model.pt", weights_only=False)["model"]
    pw = pos_weights(web.sum(axis=0), len(web))
    assert torch.allclose(state["pos_weight"], pw)
    counts = web.sum(axis=0)
    assert float(pw[0]) == pytest.approx(np.sqrt((200 - counts[0]) / counts[0]), rel=1e-6)


def test_multilabel_cleaning_verdicts_per_class(ml_demo):
    out, _ = ml_demo
    run, data = out / "run", out / "data"
    names = [c.name for c in read_classes(data)]
    train = read_split(data, "train")
    with np.load(run / "stage3a" / "verdicts.npz") as z:
        target, clean = z["target"], z["clean"]
    with np.load(run / "anchors" / "anchors.npz") as z:
        domain = z["domain"]
    assert target.shape == domain.shape == (200, 10) and set(np.unique(target)) <= {-1, 0, 1}
    assert set(np.unique(domain)) <= {-1, 0, 1} and (domain == 1).any() and (domain == -1).any()
    web = np.zeros((200, 10), np.int64)
    for i, r in enumerate(train.records):
        web[i, list(r.labels)] = 1
    # positive (nearest) and negative (farthest) anchor entries are protected
    # (clean.protect_anchors=true, as nuswide)
    assert load_config(run / "config.yaml").clean.protect_anchors
    assert (target[domain != 0] == web[domain != 0]).all()
    assert (web[domain != 0] == 1).all()  # both kinds are drawn among a class's web positives
    rows = read_jsonl(run / "stage3a" / "samples.jsonl")
    assert [r["id"] for r in rows] == [r.id for r in train.records]
    for i, r in enumerate(rows):
        assert r["web_label"] == [names[c] for c in train.records[i].labels]
        if r["removed"]:
            assert r["label"] is None and not clean[i]
        else:
            assert r["label"] == [names[c] for c in np.flatnonzero(target[i] == 1)]
            assert r["relabeled"] == bool(((target[i] != web[i]) & (target[i] >= 0)).any())
    m = read_json(run / "metrics.json")
    assert m["cleaning"]["removed"] == int((~clean).sum())
    assert m["train_truth"]["noise_detection"]["n"] == 200 * 10


def test_scenario_table_hand_values():
    metrics = {"eval": {"test": {"mAP_macro": 50.0, "mAP_micro": 60.0, "CF1": 40.0, "OF1": 45.5, "n": 3}},
               "stages": {"stage1": {"eval": {"test": {"mAP_macro": 42.125, "mAP_micro": 55.0,
                                                       "CF1": 30.0, "OF1": 35.0, "n": 3}}}}}
    text = "\n".join(scenario_table(metrics, "multilabel"))
    assert "42.12" in text.splitlines()[1] and "50.00" in text.splitlines()[1]
    assert "45.50" in text.splitlines()[4]
    os_metrics = {"openset": {"mean_cf1": 33.333, "pr_auc": 0.41234},
                  "stages": {"stage1": {"openset": {"mean_cf1": 20.0, "pr_auc": 0.3}}}}
    lines = scenario_table(os_metrics, "open-set")
    assert "20.00" in lines[1] and "33.33" in lines[1] and "0.3000" in lines[2] and "0.4123" in lines[2]
    assert scenario_table({}, "open-set")[1].split()[-2:] == ["-", "-"]


# --------------------------------------------------------------------------- NUS-WIDE

NUS_CONCEPTS = ["animal", "beach", "sky", "flowers", "water"]


def _nuswide_native(src: Path, *, n_train: int = 48, n_test: int = 16) -> None:
    """A tiny NUS-WIDE download: Concepts81, image lists, AllTags81, All_Tags, AllLabels, images."""
    rng = np.random.default_rng(0)
    n = n_train + n_test
    paths = [f"{NUS_CONCEPTS[i % 5]}\\{i:04d}_{1000 + i}.jpg" for i in range(n)]
    web = (rng.random((n, 5)) < 0.3).astype(int)
    web[np.arange(n), np.arange(n) % 5] = 1  # every image has a web label
    truth = web.copy()
    truth[rng.random((n, 5)) < 0.1] ^= 1
    truth[np.arange(n), np.arange(n) % 5] = 1
    files = {
        "Concepts81.txt": "\n".join(NUS_CONCEPTS),
        "ImageList/TrainImagelist.txt": "\n".join(paths[:n_train]),
        "ImageList/TestImagelist.txt": "\n".join(paths[n_train:]),
        "NUS_WID_Tags/AllTags81.txt": "\n".join(" ".join(map(str, row)) for row in web),
        "NUS_WID_Tags/All_Tags.txt": "\n".join(f"{1000 + i} " + " ".join(NUS_CONCEPTS[c] for c in np.flatnonzero(web[i]))
                                               for i in range(n)),
        **{f"AllLabels/Labels_{c}.txt": "\n".join(str(v) for v in truth[:, j]) for j, c in enumerate(NUS_CONCEPTS)},
    }
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text + "\n")
    for i, p in enumerate(paths):
        img = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
        for c in np.flatnonzero(truth[i]):  # a bright block per true concept
            img[(c // 3) * 6:(c // 3) * 6 + 5, (c % 3) * 5:(c % 3) * 5 + 5] = 255
        out = src / "Flickr" / p.replace("\\", "/")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(out)


def test_nuswide_native_layout_converts_and_runs(tmp_path: Path):
    src, data = tmp_path / "nus", tmp_path / "data"
    _nuswide_native(src)
    result = convert("nuswide", src, data)
    assert result.rows == {"train": 48, "test": 16}
    cfg = load_config(preset="tiny", overrides=[*TINY_ML, "stage3.batch_size=16", "stage1.batch_size=16",
                                                "stage2.batch_size=16", "model.queue=32"])
    m = run_pipeline(data, tmp_path / "run", cfg, progress=False)
    held = m["validation"]["held_out_rows"]  # no val split: train.val_split=auto holds rows out
    assert m["validation"]["split"] == "holdout" and 0 < held < 48
    assert m["multi_label"] is True and m["n_train"] == 48 - held
    g = m["fine_tune_guard"]  # D18 on the held-out rows, by macro mAP
    assert g["split"] == "holdout" and g["metric"] == "mAP_macro"
    assert m["final_stage"] == ("stage3b" if g["stage3b"] >= g["stage2"] else "stage2") == g["kept"]
    test = m["eval"]["test"]
    assert test["n"] == 16 and 0 <= test["mAP_macro"] <= 100 and 0 <= test["mAP_micro"] <= 100
    rows = read_jsonl(tmp_path / "run" / "stage3a" / "samples.jsonl")
    assert len(rows) == 48 - held and all(isinstance(r["web_label"], list) for r in rows)
