"""End-to-end runs of the tiny pipeline: artefacts, metrics recomputed by hand, skip on rerun."""

import json
import os
import time

import numpy as np
import pytest
import torch

from capro.config import load_config
from capro.data.layout import read_classes, read_split
from capro.engine.distributed import DistInfo
from capro.engine.predict import evaluate_run
from capro.engine.runner import run_pipeline
from capro.engine.stages import RunContext, build_model, stage_flags, train_stage
from capro.eval.noise import noise_detection
from capro.utils.io import read_json, read_jsonl

TINY_RUN_OVERRIDES = ["model.backbone=simple_cnn"]  # as the tiny_run fixture


def _truth(data, split):
    names = {c.name: i for i, c in enumerate(read_classes(data))}
    truth = {r["id"]: r for r in read_jsonl(data / "truth.jsonl")}
    return np.array([names.get(truth[r.id]["true_label"], -1) if truth[r.id]["true_label"] else -1
                     for r in split.records])


def test_run_writes_every_artefact_and_consistent_metrics(tiny_run, tiny_web_data):
    run, m = tiny_run
    assert read_json(run / "metrics.json") == json.loads(json.dumps(m))
    assert set(m["stages"]) >= {"stage1", "features", "anchors", "stage2", "stage3a", "stage3b"}
    assert all(m["stages"][s]["seconds"] > 0 for s in ("stage1", "stage2", "stage3b"))
    test = m["eval"]["test"]
    assert test["n"] == 60 and 0 <= test["top1"] <= test["top5"] <= 1
    assert m["stages"]["stage1"]["eval"]["test"]["n"] == 60
    # evaluate is deterministic and agrees with the run
    again = evaluate_run(run, split="test", device="cpu")
    assert again["top1"] == test["top1"] and again["top5"] == test["top5"]

    for stage, epochs in (("stage1", 2), ("stage2", 3), ("stage3b", 1)):
        rows = (run / stage / "log.csv").read_text().splitlines()
        assert len(rows) == epochs + 1 and rows[0].startswith("epoch,lr")
        assert (run / stage / "tb").is_dir()
    assert np.load(run / "features" / "stage1.npy").shape == (200, 256)
    assert (run / "config.yaml").is_file() and (run / "model.pt").is_file()
    assert load_config(run / "config.yaml").model.backbone == "simple_cnn"

    # stage 3a verdicts: one row per sample, exactly one action, counts as in metrics.json
    rows = read_jsonl(run / "stage3a" / "samples.jsonl")
    split = read_split(tiny_web_data, "train")
    assert [r["id"] for r in rows] == [r.id for r in split.records]
    assert all(r["kept"] + r["relabeled"] + r["removed"] == 1 for r in rows)
    counts = {k: sum(r[k] for r in rows) for k in ("kept", "relabeled", "removed")}
    assert counts == {k: m["cleaning"][k] for k in counts}
    assert all((r["label"] is None) == r["removed"] for r in rows)

    # truth metrics recomputed from the artefacts
    true = _truth(tiny_web_data, split)
    web = np.array([r.label for r in split.records])
    with np.load(run / "anchors" / "anchors.npz") as z:
        anchors = z["domain"] > 0
    assert anchors.sum() == 10 * 10  # top-K=10 per class
    tt = m["train_truth"]
    assert tt["anchor_precision"] == pytest.approx(np.mean(web[anchors] == true[anchors]))
    assert [bool(r["anchor"]) for r in rows] == anchors.tolist()
    flagged = np.array([r["removed"] or r["relabeled"] for r in rows])
    assert tt["noise_detection"] == pytest.approx(noise_detection(web, true, flagged))


def test_rerun_skips_finished_stages_and_reruns_changed_ones(tiny_run, tiny_web_data, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    mtimes = {s: os.stat(run / s / "checkpoint.pt").st_mtime_ns for s in ("stage1", "stage2", "stage3b")}
    cfg = load_config(preset="tiny", overrides=TINY_RUN_OVERRIDES)
    t0 = time.perf_counter()
    again = run_pipeline(tiny_web_data, run, cfg, progress=False)
    assert again["eval"] == tiny_run[1]["eval"]
    assert {s: os.stat(run / s / "checkpoint.pt").st_mtime_ns for s in mtimes} == mtimes
    assert time.perf_counter() - t0 < 60
    cfg = load_config(preset="tiny", overrides=[*TINY_RUN_OVERRIDES, "stage3.lr=0.02"])
    run_pipeline(tiny_web_data, run, cfg, progress=False)
    new = {s: os.stat(run / s / "checkpoint.pt").st_mtime_ns for s in mtimes}
    assert new["stage1"] == mtimes["stage1"] and new["stage2"] == mtimes["stage2"]
    assert new["stage3b"] != mtimes["stage3b"]


def _ctx(data, run_dir, cfg):
    classes = read_classes(data)
    return RunContext(cfg=cfg, data_root=data, run_dir=run_dir, classes=classes,
                      dist=DistInfo(0, 1, 0, torch.device("cpu")),
                      train=read_split(data, "train", classes), multi_label=False)


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_backbone_does_not_move(tiny_web_data, tmp_path, frozen):
    cfg = load_config(preset="tiny", overrides=[*TINY_RUN_OVERRIDES, "train.max_steps_per_epoch=2"])
    st = cfg.stage2
    st.epochs, st.frozen_encoder_epoch, st.init_proto_epoch, st.start_clean_epoch = 1, int(frozen), None, None
    ctx = _ctx(tiny_web_data, tmp_path, cfg)
    model = build_model(cfg, 10, multi_label=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_stage(ctx, "stage2", st, model=model, dataset=ctx.train_dataset(), fingerprint="test")
    after = model.state_dict()
    enc = [k for k in before if k.startswith("encoder_q.") and before[k].is_floating_point()
           and "running" not in k]
    moved = [k for k in enc if not torch.equal(before[k], after[k])]
    assert (moved == []) if frozen else (len(moved) == len(enc))
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert all(p.requires_grad for p in model.encoder_q.parameters())  # unfrozen after the stage


def test_cleaning_log_prior_is_the_web_labels_shares(tiny_web_data, tmp_path):
    cfg = load_config(preset="tiny", overrides=["method.logit_adjust=0"])
    assert _ctx(tiny_web_data, tmp_path, cfg).cleaning_log_prior() is None  # off: the paper
    cfg = load_config(preset="tiny", overrides=["method.logit_adjust=0.5"])
    ctx = _ctx(tiny_web_data, tmp_path, cfg)
    counts = np.bincount([r.label for r in ctx.train.records], minlength=ctx.num_classes) + 1.0
    expected = 0.5 * np.log(counts / counts.sum())
    assert np.allclose(ctx.cleaning_log_prior().numpy(), expected, atol=1e-6)
    flags = stage_flags("stage2", cfg.stage2, cfg, 2, prototypes_ready=True, log_prior=ctx.cleaning_log_prior())
    assert torch.equal(flags.log_prior, ctx.cleaning_log_prior())


def test_stage_flags_follow_the_strict_epoch_gates():
    cfg = load_config(preset="webvision1k")
    st = cfg.stage2  # init 5, clean 10
    flags = [stage_flags("stage2", st, cfg, e, prototypes_ready=e >= 5) for e in range(12)]
    assert [f.use_prototypes for f in flags] == [e >= 5 for e in range(12)]
    assert [f.proto_loss for f in flags] == [e > 5 for e in range(12)]
    assert [f.update_prototypes for f in flags] == [e > 5 for e in range(12)]
    assert [f.clean for f in flags] == [e > 10 for e in range(12)]
    assert all(f.bootstrap == "collective" for f in flags)
    ft = stage_flags("stage3b", cfg.stage3, cfg, 0, prototypes_ready=True)
    assert ft.mixup and ft.w_inst == ft.w_recn == ft.w_proto == 0 and not ft.proto_loss and not ft.clean
    cfg = load_config(preset="webvision1k", overrides=["method.prototypes=all"])
    mopro = stage_flags("stage2", cfg.stage2, cfg, 0, prototypes_ready=False)
    assert mopro.prototypes_mode == "all" and mopro.proto_loss and mopro.update_prototypes
    cfg = load_config(preset="webvision1k", overrides=["method.keep_th=0.3", "method.keep_top=1"])
    f = stage_flags("stage2", cfg.stage2, cfg, 11, prototypes_ready=True)
    assert (f.keep_th, f.keep_top) == (0.3, 1)


def test_multilabel_run(tiny_multilabel_data, tmp_path):
    cfg = load_config(preset="tiny", overrides=[
        *TINY_RUN_OVERRIDES, "stage1.epochs=1", "stage2.epochs=2", "stage3.mixup=false",
        "train.max_steps_per_epoch=3"])
    m = run_pipeline(tiny_multilabel_data, tmp_path / "run", cfg, progress=False)
    assert m["multi_label"] is True
    test = m["eval"]["test"]
    assert test["n"] == 60 and {"mAP_macro", "mAP_micro", "CF1", "OF1"} <= set(test)
    rows = read_jsonl(tmp_path / "run" / "stage3a" / "samples.jsonl")
    assert len(rows) == 200 and all(isinstance(r["web_label"], list) for r in rows)
    assert sum(m["cleaning"][k] for k in ("kept", "relabeled", "removed")) == 200
    nd = m["train_truth"]["noise_detection"]
    assert nd["n"] == 200 * 10 and 0 <= nd["precision"] <= 1


def test_nonfinite_loss_stops_naming_the_step_or_is_skipped(tiny_web_data, tmp_path):
    from capro.errors import CaproError

    cfg = load_config(preset="tiny", overrides=[*TINY_RUN_OVERRIDES, "train.max_steps_per_epoch=2"])
    st = cfg.stage1
    st.epochs = 1
    ctx = _ctx(tiny_web_data, tmp_path, cfg)
    nan_weights = np.full(len(ctx.train), np.nan, np.float32)
    model = build_model(cfg, 10, multi_label=False)
    with pytest.raises(CaproError, match=r"stage1 epoch 0 step 0: loss terms 'cls' \(nan\)"):
        train_stage(ctx, "stage1", st, model=model, dataset=ctx.train_dataset(weights=nan_weights),
                    fingerprint="test")
    cfg.train.on_nonfinite = "skip"
    before = model.classifier.weight.clone()
    train_stage(ctx, "stage1", st, model=model, dataset=ctx.train_dataset(weights=nan_weights),
                fingerprint="test")
    assert torch.equal(model.classifier.weight, before)
    log = (tmp_path / "stage1" / "log.csv").read_text().splitlines()
    assert log[1].split(",")[log[0].split(",").index("skipped")] == "2"


def test_bf16_autocast_trains(tiny_web_data, tmp_path):
    cfg = load_config(preset="tiny", overrides=[*TINY_RUN_OVERRIDES, "train.max_steps_per_epoch=2"])
    cfg.stage1.epochs = 1
    ctx = _ctx(tiny_web_data, tmp_path, cfg)
    ctx.amp = torch.bfloat16
    model = build_model(cfg, 10, multi_label=False)
    before = model.classifier.weight.clone()
    train_stage(ctx, "stage1", cfg.stage1, model=model, dataset=ctx.train_dataset(), fingerprint="t")
    assert model.classifier.weight.dtype == torch.float32
    assert torch.isfinite(model.classifier.weight).all() and not torch.equal(model.classifier.weight, before)


def test_skipping_stage_1_warns_only_without_starting_weights(tiny_web_data, tmp_path):
    """``stage1.epochs=0`` builds the graph from the starting weights: a warning names the fix
    when those are random; from a weights file the run trains stage 2 without a word."""
    import warnings

    from capro.engine.stages import build_model

    skip = ["model.backbone=simple_cnn", "stage1.epochs=0", "stage2.epochs=2", "stage3.epochs=0",
            "train.max_steps_per_epoch=2"]
    with pytest.warns(UserWarning, match=r"stage1.epochs=0 without model.pretrained: .* set model.pretrained"):
        m = run_pipeline(tiny_web_data, tmp_path / "random", load_config(preset="tiny", overrides=skip),
                         progress=False)
    assert m["final_stage"] == "stage2"
    weights = tmp_path / "backbone.pt"
    start = build_model(load_config(preset="tiny", overrides=[*skip, "data.channels=1"]), 10, multi_label=False)
    torch.save(start.encoder_q.state_dict(), weights)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = run_pipeline(tiny_web_data, tmp_path / "pretrained", load_config(
            preset="tiny", overrides=[*skip, f"model.pretrained={weights}"]), progress=False)
    assert not [w for w in caught if "stage1.epochs=0" in str(w.message)]
    assert m["final_stage"] == "stage2"
