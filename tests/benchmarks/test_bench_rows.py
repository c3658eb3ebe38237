"""The benchmark rows resolve to the configs benchmark.md describes; aggregation and tables are right."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_common():
    spec = importlib.util.spec_from_file_location("capro_bench_common", ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bc = _load_common()


@pytest.mark.parametrize("size_name", ["quick", "full", "long"])
@pytest.mark.parametrize("row", bc.ROWS)
def test_every_row_resolves_with_the_same_backbone_budget(row, size_name):
    size = bc.SIZES[size_name]
    cfg = bc.row_config(row, size, seed=7)
    assert cfg.seed == 7 and cfg.preset == "cpu"
    assert cfg.model.backbone == size.backbone
    assert cfg.data.image_size == size.image_size
    assert {cfg.stage1.batch_size, cfg.stage2.batch_size, cfg.stage3.batch_size} == {size.batch_size}
    epochs = bc.stage_epochs(cfg)
    assert epochs["stage1"] + epochs["stage2"] == size.e1 + size.e2
    assert epochs["stage3"] == (size.e3 if row.startswith("capro-ft") else 0)


def test_rows_differ_only_where_benchmark_md_says():
    size = bc.SIZES["full"]
    cfg = {row: bc.row_config(row, size, seed=0) for row in bc.ROWS}
    assert cfg["ce"].method.bootstrap == "none"
    assert cfg["ce"].stage1.w_inst == 0 and cfg["ce"].stage1.w_recn == 0
    assert cfg["cleanlab"] == cfg["ce"] == cfg["oracle"]
    # the full tables run on the current defaults (D12: clean from stage 2's best epoch; D16-D18)
    assert cfg["capro-ft-s2best"].clean.stage2_checkpoint == "best"
    assert cfg["capro-ft"].clean.stage2_checkpoint == "best" and cfg["capro-ft"].clean.guard
    assert cfg["capro"].match.min_margin == 0.0 and cfg["capro"].graph.self_weight == 0.25
    # the quick smoke test keeps what it was recorded with
    quick = bc.row_config("capro-ft", bc.SIZES["quick"], seed=0)
    assert quick.clean.stage2_checkpoint == "kept" and quick.match.min_margin is None and not quick.clean.guard
    long = {row: bc.row_config(row, bc.SIZES["long"], seed=0) for row in bc.ROWS}
    assert long["capro-ft"].clean.stage2_checkpoint == "best"  # D12
    assert long["capro-ft-s2last"].clean.stage2_checkpoint == "kept" and long["capro-ft"].train.keep == "last"
    assert cfg["vanilla"].method.bootstrap == "collective" and cfg["vanilla"].stage2.epochs == 0
    assert cfg["mopro"].method.prototypes == "all"
    # MoPro as published: one stage 2 (no D21), no weight average (no D22); CAPro rows average
    assert cfg["mopro"].method.keep_rules == [] and cfg["mopro"].stage2.ema_epochs == 0
    assert cfg["capro"].stage2.ema_epochs == 5
    assert cfg["capro-random-anchors"].match.anchors == "random"
    assert cfg["capro-no-enhance"].graph.enhance is False
    for row in ("mopro", "capro-random-anchors", "capro-no-enhance", "capro-ft"):
        assert cfg[row].stage1 == cfg["capro"].stage1
    assert cfg["capro-ft"].stage2 == cfg["capro"].stage2
    assert cfg["capro"].match.anchors == "text" and cfg["capro"].graph.enhance is True
    # The quick table used the paper's instance-loss weight; full runs the cpu preset's 0.1 now.
    assert bc.load_config(preset="cpu").stage1.w_inst == 0.1
    for row in ("vanilla", "mopro", "capro", "capro-ft"):
        assert (cfg[row].stage1.w_inst, cfg[row].stage2.w_inst) == (0.1, 0.1)
        q = bc.row_config(row, bc.SIZES["quick"], seed=0)
        assert (q.stage1.w_inst, q.stage2.w_inst) == (1.0, 1.0)


def test_shared_steps_only_between_rows_with_equal_upstream_configs():
    size = bc.SIZES["full"]
    for row, (donor, steps) in bc.SHARED_STEPS.items():
        a, b = bc.row_config(row, size, 0), bc.row_config(donor, size, 0)
        assert a.stage1 == b.stage1 and a.model == b.model and a.method == b.method and a.text == b.text
        if "stage2" in steps:
            assert a.stage2 == b.stage2 and a.graph == b.graph and a.match == b.match
        assert bc.RUN_ORDER.index(donor) < bc.RUN_ORDER.index(row)
    assert sorted(bc.RUN_ORDER) == sorted(bc.ROWS)


def test_row_command_reproduces_the_overrides():
    size = bc.SIZES["quick"]
    cmd = bc.row_command("capro-no-enhance", size, 2, profile="hard")
    assert "--profile hard --seed 2" in cmd and "--preset cpu" in cmd
    assert " ".join(bc.row_overrides("capro-no-enhance", size, 2)) in cmd
    assert "--rows cleanlab" in bc.row_command("cleanlab", size, 1)


def test_a_noval_key_reads_without_val_jsonl(tmp_path):
    assert bc.profile_key("web-noval") == ("web", True) and bc.profile_key("hard") == ("hard", False)
    size = bc.SIZES["long"]
    cmd = bc.row_command("ce", size, 0, profile="weak-noval")
    assert "--profile weak --seed 0" in cmd and "rm DATA/val.jsonl && capro run" in cmd
    assert bc.row_command("oracle", size, 0, profile="web-noval").endswith("--rows oracle --without-val")
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for name in ("classes.json", "train.jsonl", "val.jsonl", "test.jsonl"):
        (data / name).write_text(name)
    copy = bc.without_val(data)
    assert sorted(p.name for p in copy.iterdir()) == ["classes.json", "images", "test.jsonl", "train.jsonl"]
    assert (copy / "images").resolve() == (data / "images").resolve()


def test_unknown_row_is_refused():
    with pytest.raises(KeyError, match="unknown row"):
        bc.row_overrides("nope", bc.SIZES["quick"], 0)


def test_mean_std_by_hand():
    s = bc.mean_std([0.80, 0.84, 0.86])
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(0.8333333333)
    # sample std: sqrt(((-.0333)^2 + (.00667)^2 + (.02667)^2) / 2) = sqrt(0.0018667 / 2)
    assert s["std"] == pytest.approx(math.sqrt(0.00186666667 / 2))
    assert bc.mean_std([0.5, None, float("nan")]) == {"mean": 0.5, "std": None, "n": 1}
    assert bc.mean_std([None]) == {"mean": None, "std": None, "n": 0}


def _result(row, seed, top1, seconds, f1=None):
    return {"row": row, "seed": seed,
            "metrics": {"top1": top1, "top5": 0.99, "noise_f1": f1, "seconds": sum(seconds.values())},
            "stages": seconds}


def test_aggregate_groups_by_row_in_table_order():
    results = [
        _result("capro", 1, 0.90, {"stage1": 10.0, "stage2": 20.0}, f1=0.6),
        _result("ce", 0, 0.80, {"stage1": 30.0}),
        _result("capro", 0, 0.86, {"stage1": 12.0, "stage2": 22.0}, f1=0.7),
        _result("ce", 1, 0.82, {"stage1": 34.0}),
    ]
    agg = bc.aggregate(results)
    assert list(agg) == ["ce", "capro"]
    assert agg["capro"]["seeds"] == [0, 1]
    assert agg["capro"]["metrics"]["top1"]["mean"] == pytest.approx(0.88)
    assert agg["capro"]["metrics"]["top1"]["std"] == pytest.approx(math.sqrt(0.0008))
    assert agg["capro"]["metrics"]["noise_f1"]["mean"] == pytest.approx(0.65)
    assert agg["ce"]["metrics"]["noise_f1"] == {"mean": None, "std": None, "n": 0}
    assert agg["ce"]["metrics"]["seconds"]["mean"] == pytest.approx(32.0)
    assert agg["capro"]["stages"]["stage2"]["mean"] == pytest.approx(21.0)
    assert "stage2" not in agg["ce"]["stages"]


def test_quality_table_formats_mean_std_and_missing():
    agg = bc.aggregate([_result("ce", 0, 0.80, {"stage1": 60.0}), _result("ce", 1, 0.82, {"stage1": 120.0})])
    table = bc.quality_table(agg)
    line = table.splitlines()[2]
    assert line.startswith("| `ce` | 2 | 81.0 ± 1.4 | 99.0 ± 0.0 | – |")
    assert line.endswith("| 1.5 ± 0.7 |")  # 90 s ± 42.4 s in minutes
    assert bc.stage_table(agg).splitlines()[2] == "| `ce` | 90 ± 42 |"


def test_replace_block_inserts_then_replaces():
    text = "# Title\n\nintro\n"
    once = bc.replace_block(text, "quality-web", "| a |")
    assert once == "# Title\n\nintro\n\n<!-- quality-web:begin -->\n| a |\n<!-- quality-web:end -->\n"
    twice = bc.replace_block(once + "tail\n", "quality-web", "| b |")
    assert twice == once.replace("| a |", "| b |") + "tail\n"


def test_row_metrics_from_engine_metrics():
    metrics = {"eval": {"test": {"top1": 0.9, "top5": 1.0, "n": 10}},
               "stages": {"stage1": {"seconds": 5.0, "eval": {"test": {"top1": 0.8}}},
                          "stage2": {"seconds": 7.5}},
               "train_truth": {"anchor_precision": 0.96, "relabel_accuracy": None,
                               "noise_detection": {"precision": 0.5, "recall": 0.25, "f1": 1 / 3},
                               "memorisation": {"noisy_fit": 0.4}}}
    m = bc.row_metrics(metrics)
    assert m == {"top1": 0.9, "top5": 1.0, "anchor_precision": 0.96, "noise_precision": 0.5,
                 "noise_recall": 0.25, "noise_f1": 1 / 3, "relabel_accuracy": None, "seconds": 12.5,
                 "noisy_fit": 0.4, "stage1_top1": 0.8, "stage2_top1": None}
    assert bc.row_metrics({"eval": {}})["top1"] is None


def test_size_dict_survives_json_and_size_tag_tracks_the_spec():
    import json

    size = bc.SIZES["quick"]
    assert json.loads(json.dumps(bc.size_dict(size))) == bc.size_dict(size)
    assert bc.size_tag(size).startswith("quick-")
    assert bc.size_tag(dataclasses.replace(size, e1=size.e1 + 1)) != bc.size_tag(size)


def test_long_size_keeps_last_epochs_scores_test_curves_and_uses_the_preset_w_inst():
    cfg = bc.row_config("capro-ft", bc.SIZES["long"], seed=0)
    assert cfg.train.keep == "last" and cfg.train.curve_splits == ["test"]
    assert (cfg.stage1.w_inst, cfg.stage2.w_inst) == (0.1, 0.1)
    assert cfg.stage1.epochs + cfg.stage2.epochs == bc.row_config("ce", bc.SIZES["long"], 0).stage1.epochs


def test_best_validation_reads_test_at_the_first_best_val_epoch():
    curves = {"stage": ["stage1"] * 5, "val_top1": [0.5, 0.7, None, 0.7, 0.6],
              "test_top1": [0.4, 0.66, 0.9, 0.68, 0.61]}
    assert bc.best_validation(curves) == {"top1_best": 0.66, "best_epoch": 1, "val_best": 0.7}
    assert bc.best_validation({"val_top1": [None], "test_top1": [0.3]})["top1_best"] is None


def test_best_validation_without_val_takes_the_held_out_rows_trailing_mean(monkeypatch):
    import capro.config

    monkeypatch.setattr(capro.config, "HOLDOUT_WINDOW", 2)
    # trailing means over 2 scored epochs: 0.5, 0.75, 0.6, 0.5, 0.7 -> epoch 1
    curves = {"stage": ["stage1"] * 5, "val_top1": [None] * 5, "holdout_top1": [0.5, 1.0, 0.2, 0.8, 0.6],
              "test_top1": [0.1, 0.2, 0.3, 0.4, 0.5]}
    assert bc.best_validation(curves) == {"top1_best": 0.2, "best_epoch": 1, "val_best": 0.75}


def test_pretrained_size_fine_tunes_the_shipped_weights_gently():
    size = bc.SIZES["pretrained"]
    cfg = bc.row_config("capro-ft", size, seed=0)
    assert cfg.model.pretrained == "package:efficientnet-lite0" and cfg.model.backbone == "tf_efficientnet_lite0"
    assert cfg.stage1.lr == cfg.stage2.lr == 0.01 and cfg.stage1.warmup_epochs == cfg.stage2.warmup_epochs == 1
    assert cfg.data.channels is None  # from the data
    ce = bc.row_config("ce", size, seed=0)
    assert ce.stage1.epochs == cfg.stage1.epochs + cfg.stage2.epochs == size.e1 + size.e2
    # stage 1 skipped: stage 2 gets its epochs; "late" also moves prototypes and cleaning on by them
    s0, late = (bc.row_config(row, size, seed=0) for row in ("capro-ft-s0", "capro-ft-s0-late"))
    assert (s0.stage1.epochs, s0.stage2.epochs, s0.stage3.epochs) == (0, size.e1 + size.e2, size.e3)
    assert dataclasses.replace(s0.stage2, epochs=cfg.stage2.epochs) == cfg.stage2
    assert (late.stage2.init_proto_epoch, late.stage2.start_clean_epoch) == (
        cfg.stage2.init_proto_epoch + size.e1, cfg.stage2.start_clean_epoch + size.e1)
    assert dataclasses.replace(late.stage2, init_proto_epoch=1, start_clean_epoch=1) == s0.stage2


def test_ce_best_row_is_derived_from_ce_and_the_gap_share():
    def res(row, seed, top1, best):
        return {"row": row, "seed": seed, "stages": {"stage1": 1.0},
                "metrics": {"top1": top1, "top1_best": best, "noisy_fit": 0.5}}

    agg = bc.aggregate([res("ce", 0, 0.70, 0.76), res("ce", 1, 0.72, 0.78), res("oracle", 0, 0.80, 0.81),
                        res("capro-ft", 0, 0.77, 0.79)])
    assert list(agg) == ["ce", "ce-best", "capro-ft", "oracle"]
    assert agg["ce-best"]["metrics"]["top1"]["mean"] == pytest.approx(0.77)
    assert agg["ce-best"]["metrics"]["noisy_fit"]["mean"] is None
    # (0.77 - 0.71) / (0.80 - 0.71)
    assert bc.gap_closed(agg, "capro-ft") == pytest.approx(0.06 / 0.09)
    assert bc.gap_closed(agg, "cleanlab") is None


def test_recorded_sizes_keep_their_rows_and_the_recorded_cleaning_checkpoint():
    # the quick table was recorded with these rows, cleaning from what stage 2 handed on; the full
    # tables now run every row (the oracle too) on the current defaults
    assert bc.SIZES["full"].rows == bc.RECORDED_ROWS and bc.SIZES["quick"].rows == bc.RECORDED_ROWS
    for name in ("quick", "full"):
        for row in bc.RECORDED_ROWS:
            cfg = bc.row_config(row, bc.SIZES[name], 0)
            expected = "best" if row == "capro-ft-s2best" or name == "full" else "kept"
            assert (cfg.method.keep_th, cfg.method.keep_top, cfg.clean.stage2_checkpoint) == (None, 0, expected)
    last = bc.row_config("capro-ft-s2last", bc.SIZES["long"], 0)
    ft = bc.row_config("capro-ft", bc.SIZES["long"], 0)
    assert last.stage1 == ft.stage1 and last.stage2 == ft.stage2 and last.stage3 == ft.stage3
    assert "capro-ft-s2last" in bc.ROWS and "capro-ft-s2last" in bc.RUN_ORDER
