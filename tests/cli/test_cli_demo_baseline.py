"""``capro demo --baseline``: plain cross-entropy on the same data and backbone epochs, beside CAPro."""

import io
from contextlib import redirect_stdout

import pytest

import capro.cli.demo as demo_cli
from capro.cli import main
from capro.config import load_config
from capro.utils.io import read_json

TINY_DEMO = {"data": {"train_size": 200, "val_size": 40, "test_size": 60, "image_size": 16},
             "preset": "tiny", "overrides": ["model.backbone=simple_cnn", "train.max_steps_per_epoch=3"]}


def test_baseline_trains_the_backbone_for_capro_s_epochs():
    cfg = load_config(preset="cpu")
    ce = load_config(preset="cpu", overrides=demo_cli.baseline_overrides(cfg))
    assert ce.stage1.epochs == cfg.stage1.epochs + cfg.stage2.epochs
    assert (ce.stage2.epochs, ce.stage3.epochs) == (0, 0)
    assert (ce.method.bootstrap, ce.stage1.w_inst, ce.stage1.w_recn) == ("none", 0.0, 0.0)
    assert ce.train.keep == "last"  # the table shows what training to the end does to plain CE


def test_full_demo_is_the_long_regime():
    demo = demo_cli.DEMOS["full"]
    cfg = load_config(preset=demo["preset"], overrides=demo["overrides"])
    assert (cfg.stage1.epochs, cfg.stage2.epochs, cfg.stage3.epochs) == (10, 110, 2)
    assert cfg.train.keep == "best" and cfg.train.curve_splits == ["test"]
    assert demo["data"]["train_size"] == 2000 and cfg.data.image_size == 16
    # mosaics need the pixels: the multi-label and open-set scenarios keep 32 px and the preset's epochs
    scenario = demo_cli.DEMOS["scenario"]
    cfg = load_config(preset=scenario["preset"], overrides=scenario["overrides"])
    assert scenario["data"]["image_size"] == cfg.data.image_size == 32
    assert cfg.stage2.epochs == load_config(preset="cpu").stage2.epochs


def test_best_val_reading_takes_the_first_best_validation_epoch():
    log = {"val_top1": [0.5, 0.7, None, 0.7, 0.6], "test_top1": [0.4, 0.65, 0.9, 0.8, 0.55]}
    assert demo_cli.best_val_reading(log, "test") == (1, 0.65)
    assert demo_cli.best_val_reading({"val_top1": [0.5]}, "test") is None
    assert demo_cli.best_val_reading(None, "test") is None


def test_baseline_table_formats_both_rows():
    capro = {"eval": {"test": {"top1": 0.801}}, "train_truth": {"memorisation": {"noisy_fit": 0.125}}}
    ce = {"eval": {"test": {"top1": 0.72}}, "train_truth": {"memorisation": {"noisy_fit": 0.6}}}
    lines = demo_cli.baseline_table(capro, ce)
    assert lines[0].split() == ["test", "top-1", "noisy", "rows", "fitted"]
    assert lines[1].split() == ["plain", "CE,", "last", "epoch", "72.0%", "60.0%"]
    assert lines[2].split() == ["CAPro", "80.1%", "12.5%"]
    log = {"val_top1": [0.6, 0.75, 0.7], "test_top1": [0.6, 0.769, 0.72]}
    lines = demo_cli.baseline_table(capro, ce, log)
    assert lines[2].split() == ["plain", "CE,", "best-val", "epoch", "(2)", "76.9%", "-"]
    assert lines[3].split() == ["CAPro", "80.1%", "12.5%"]


def test_demo_baseline_end_to_end(tmp_path):
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(buf):
        mp.setitem(demo_cli.DEMOS, "quick", TINY_DEMO)
        assert main(["demo", "--quick", "--baseline", "--out", str(tmp_path), "--device", "cpu"]) == 0
    text = buf.getvalue()
    capro, ce = read_json(tmp_path / "run" / "metrics.json"), read_json(tmp_path / "baseline" / "metrics.json")
    assert ce["final_stage"] == "stage1" and "stage2" not in ce["stages"]
    assert ce["stages"]["stage1"]["epochs"] == 5  # tiny: 2 + 3 CAPro epochs
    assert demo_cli.baseline_table(capro, ce)[1] in text.splitlines()
    assert demo_cli.baseline_table(capro, ce)[2] in text.splitlines()
