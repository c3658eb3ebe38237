"""The public Python API (capro.run, capro.load_run, Run.verdicts / predict / export, capro.validate)."""

import json

import numpy as np
import pandas as pd
import pytest

import capro
from capro.api import config_overrides
from capro.engine.predict import image_batch, predict_images
from capro.errors import UsageError


def test_config_overrides_from_mapping_list_and_keywords():
    assert config_overrides({"stage1.epochs": 2, "method.keep_rules": ["paper"], "model.pretrained": None}) == [
        "stage1.epochs=2", "method.keep_rules=[paper]", "model.pretrained=null"]
    assert config_overrides(["seed=3"], stage2__lr=0.5, data__channels=3) == ["seed=3", "stage2.lr=0.5", "data.channels=3"]
    cfg = capro.load_config(preset="tiny", overrides=config_overrides({"train.keep": "last", "match.min_margin": None}))
    assert cfg.train.keep == "last" and cfg.match.min_margin is None


def test_load_run_verdicts_metrics_and_predictions(tiny_run, tiny_web_data):
    run_dir, metrics = tiny_run
    run = capro.load_run(run_dir, device="cpu")
    assert run.metrics == json.loads((run_dir / "metrics.json").read_text())
    assert run.metrics["eval"] == metrics["eval"]
    assert run.classes == [c["name"] for c in json.loads((tiny_web_data / "classes.json").read_text())]
    assert run.config.preset == "tiny" and not run.multi_label

    frame = run.verdicts()
    rows = [json.loads(line) for line in (run_dir / "stage3a" / "samples.jsonl").read_text().splitlines()]
    assert isinstance(frame, pd.DataFrame) and frame.index.name == "id" and len(frame) == len(rows) == metrics["n_train"]
    assert list(frame.index) == [r["id"] for r in rows]
    assert frame["is_label_issue"].tolist() == [r["is_label_issue"] for r in rows]
    assert frame["label_quality"].tolist() == pytest.approx([r["label_quality"] for r in rows])
    issues = run.label_issues()
    assert len(issues) == sum(r["is_label_issue"] for r in rows)
    assert issues["label_quality"].is_monotonic_increasing

    test_rows = [json.loads(line) for line in (tiny_web_data / "test.jsonl").read_text().splitlines()][:5]
    images = [tiny_web_data / r["image"] for r in test_rows]
    got = run.predict(images, topk=3)
    assert got == predict_images(run_dir, images, topk=3, device="cpu")
    probs = run.predict(image_batch(images, run.config))
    assert probs.shape == (5, len(run.classes)) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert [run.classes[i] for i in probs.argmax(axis=1)] == [g["prediction"] for g in got]
    with pytest.raises(UsageError, match="list of image paths"):
        run.predict(str(images[0]))
    with pytest.raises(UsageError, match=r"expected a batch \[N, 1, S, S\]"):
        run.predict(np.zeros((2, 3, 16, 16), dtype=np.float32))


def test_export_from_a_loaded_run(tiny_run, tmp_path):
    run_dir, metrics = tiny_run
    summary = capro.load_run(run_dir, device="cpu").export(tmp_path / "clean")
    cleaning = metrics["cleaning"]
    assert (summary.exported, summary.removed) == (cleaning["kept"] + cleaning["relabeled"], cleaning["removed"])


def test_run_returns_a_loaded_run(tiny_web_data, tmp_path):
    run = capro.run(tiny_web_data, tmp_path / "run", preset="tiny", progress=False,
                    overrides={"model.backbone": "simple_cnn", "stage2.epochs": 0}, stage1__epochs=1)
    assert run.config.stage1.epochs == 1 and run.config.stage2.epochs == 0
    assert run.metrics["final_stage"] == "stage1" and "test" in run.metrics["eval"]


def test_load_run_and_validate_errors(tiny_web_data, tmp_path):
    with pytest.raises(UsageError, match="run directory not found"):
        capro.load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no model.pt"):
        capro.load_run(tmp_path / "empty")
    assert capro.validate(tiny_web_data, check_images=False).ok
