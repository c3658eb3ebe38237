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


def test_baseline_table_formats_both_rows():
    capro = {"eval": {"test": {"top1": 0.801}}, "train_truth": {"memorisation": {"noisy_fit": 0.125}}}
    ce = {"eval": {"test": {"top1": 0.72}}, "train_truth": {"memorisation": {"noisy_fit": 0.6}}}
    lines = demo_cli.baseline_table(capro, ce)
    assert lines[0].split() == ["test", "top-1", "noisy", "rows", "fitted"]
    assert lines[1].split() == ["plain", "CE", "72.0%", "60.0%"]
    assert lines[2].split() == ["CAPro", "80.1%", "12.5%"]


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
