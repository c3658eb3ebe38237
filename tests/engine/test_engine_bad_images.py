"""Images that break after validation: skipped with a record, left out of training, ranks in step.

The run tests validate a copy of the tiny dataset with ``capro validate``'s checks, then break
image files on disk and run with ``data.check_images=false``: the run's own start-up check is
that validation, so this is a file changed on disk after it.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _gloo import run_gloo
from PIL import Image

from capro.cli import main
from capro.config import load_config
from capro.data.datasets import BadImageError, EvalDataset, TrainDataset
from capro.data.layout import Record, read_classes, read_split
from capro.data.validate import check_image, validate_dataset
from capro.engine.bad_images import BadImageLog
from capro.engine.loop import EpochSampler
from capro.engine.stages import STAGE_SEED
from capro.errors import DataError
from capro.model.capro import CAPro, StepFlags
from capro.utils.io import read_jsonl

C, D, B = 4, 16, 10


def _break(path: Path, how: str) -> None:
    """Overwrite an image file in place: ``truncate`` (first half of its bytes) or ``garbage``."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else b"\x89PNG\r\n\x1a\n" + os.urandom(40))


def _copy_valid(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    assert validate_dataset(dst).ok
    return dst


def _log_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- datasets
def test_unreadable_images_become_placeholders_with_the_validate_reason(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    for i in range(6):
        Image.fromarray(np.full((20, 20), 40 * i, np.uint8), mode="L").save(img / f"{i}.png")
    _break(img / "1.png", "truncate")
    (img / "2.png").write_bytes(b"not an image at all")
    (img / "3.png").unlink()
    (img / "4.png").unlink()
    os.mkfifo(img / "4.png")  # a reader that opened it plainly would block forever
    (img / "5.png").unlink()
    (img / "5.png").mkdir()
    recs = [Record(id=f"s{i}", image=f"img/{i}.png", labels=(i % C,), line=i + 1) for i in range(6)]
    expected = [check_image(img / f"{i}.png") for i in range(6)]
    assert expected[0] is None and all(expected[1:])
    assert expected[2] == "not an image (PIL cannot identify the file format)"
    assert expected[3] == "missing image file" and expected[4] == "not an image (not a regular file)"

    train = TrainDataset(tmp_path, recs, C, size=16, channels=1)
    evals = EvalDataset(tmp_path, recs, C, size=16, channels=1)
    for ds in (train, evals):
        items = [ds[i] for i in range(6)]
        assert [bool(it["valid"]) for it in items] == [True] + [False] * 5
        assert [it["error"] for it in items] == [""] + expected[1:]
        for it in items[1:]:
            assert it["img"].shape == (1, 16, 16) and not it["img"].any()
        assert items[0]["img"].any()
    assert not train[2]["img_aug"].any() and train[2]["target"].item() == 2

    stop = TrainDataset(tmp_path, recs, C, size=16, channels=1, on_bad_image="stop")
    with pytest.raises(BadImageError) as info:
        stop[1]
    msg = str(info.value)
    assert msg == (f"{img / '1.png'}: cannot read image of id=s1 ({expected[1]}); fix or remove the "
                   "row, validate with data.skip_bad=true, or set train.on_bad_image=skip")
    assert isinstance(info.value, DataError)


# ---------------------------------------------------------------- the step
def _model(multi_label: bool) -> CAPro:
    torch.manual_seed(0)
    m = CAPro(num_classes=C, backbone="simple_cnn", in_chans=1, low_dim=D, queue_size=64,
              multi_label=multi_label, proto_m=0.7)
    # BatchNorm on running statistics: each sample's forward is independent of the batch, so a
    # step without the placeholder is an exact reference for the step with it
    m.eval()
    with torch.no_grad():
        shape = (C, 2, D) if multi_label else (C, D)
        m.prototypes.copy_(F.normalize(torch.randn(shape), dim=-1))
        m.prototypes_ready.fill_(True)
    return m


def _batch(multi_label: bool, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    batch = {"img": torch.randn(n, 1, 16, 16, generator=g), "img_aug": torch.randn(n, 1, 16, 16, generator=g),
             "weight": torch.rand(n, generator=g) + 0.5}
    if multi_label:
        batch["target"] = (torch.rand(n, C, generator=g) > 0.6).float()
        batch["domain"] = torch.zeros(n, C, dtype=torch.int8)
        batch["domain"][0, 1] = 1
    else:
        batch["target"] = torch.randint(0, C, (n,), generator=g)
        batch["anchor"] = torch.zeros(n, dtype=torch.bool)
        batch["anchor"][0] = True
    return batch


def _with_placeholder(batch: dict[str, torch.Tensor], at: int) -> dict[str, torch.Tensor]:
    """``batch`` with a placeholder sample (zero views, valid False) inserted at row ``at``."""
    out = {}
    for k, v in batch.items():
        filler = torch.zeros_like(v[:1]) if k in ("img", "img_aug") else v[:1].clone()
        out[k] = torch.cat([v[:at], filler, v[at:]])
    out["valid"] = torch.ones(len(out["img"]), dtype=torch.bool)
    out["valid"][at] = False
    return out


@pytest.mark.parametrize("multi_label, bootstrap, mixup", [
    (False, "collective", True), (False, "ncr", False), (True, "collective", False), (True, "ncr", False),
])
def test_step_with_an_invalid_placeholder_equals_the_step_without_it(multi_label, bootstrap, mixup):
    ref_model = _model(multi_label)
    got_model, all_valid_model = copy.deepcopy(ref_model), copy.deepcopy(ref_model)
    batch = _batch(multi_label, B)
    if not multi_label:  # web labels the cleaning removes (lowest score) or keeps (highest)
        scores = ref_model.analyse(batch["img"], alpha=0.5)["scores"]
        batch["target"] = torch.where(torch.arange(B) % 2 == 0, scores.argmin(1), scores.argmax(1))
    full = _with_placeholder(batch, at=3)
    keep = full["valid"]
    flags = StepFlags(use_prototypes=True, proto_loss=True, update_prototypes=True, clean=True,
                      bootstrap=bootstrap, pseudo_th=0.4, mixup=mixup)

    torch.manual_seed(5)
    ref = ref_model(batch, flags)
    ref.loss.backward()
    torch.manual_seed(5)
    got = got_model(full, flags)
    got.loss.backward()

    assert torch.allclose(got.loss, ref.loss, atol=1e-6)
    assert got.terms.keys() == ref.terms.keys() and ("mixup" in ref.terms) == mixup
    for name in ref.terms:
        assert torch.allclose(got.terms[name], ref.terms[name], atol=1e-6), name
    # cleaning: the placeholder is neither clean nor relabelled and keeps its label
    assert torch.equal(got.clean[keep], ref.clean) and torch.equal(got.relabeled[keep], ref.relabeled)
    assert torch.equal(got.target[keep], ref.target)
    assert not got.clean[3] and not got.relabeled[3] and torch.equal(got.target[3], full["target"][3])
    # the cleaning verdict is not trivial here
    assert ref.clean.any() and (ref.relabeled.any() or not ref.clean.all())
    # queue (only valid keys enqueued), prototypes and every gradient are the reference's
    assert int(got_model.queue_ptr) == int(ref_model.queue_ptr) == B
    assert torch.allclose(got_model.queue, ref_model.queue, atol=1e-6)
    assert torch.allclose(got_model.prototypes, ref_model.prototypes, atol=1e-6)
    grads = 0
    for (name, p), q in zip(got_model.named_parameters(), ref_model.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-6), name
            grads += 1
    assert grads > 10

    # not vacuous: the same batch with the placeholder counted as valid gives another step
    full["valid"][:] = True
    torch.manual_seed(5)
    other = all_valid_model(full, flags)
    assert not torch.allclose(other.loss, ref.loss, atol=1e-4)
    assert int(all_valid_model.queue_ptr) == B + 1


def test_enqueue_writes_only_valid_keys():
    m = _model(False)
    keys = F.normalize(torch.randn(6, D), dim=1)
    valid = torch.tensor([True, False, True, True, False, True])
    m._dequeue_and_enqueue(keys, valid)
    assert int(m.queue_ptr) == 4 and torch.equal(m.queue[:4], keys[valid])


# ---------------------------------------------------------------- the record
def test_record_restores_the_rows_before_the_resume_point(tmp_path):
    recs = [Record(id=f"s{i}", image=f"images/{i}.png", labels=(0,), line=i + 1) for i in range(5)]
    log = BadImageLog(tmp_path / "stage2", stage="stage2", root=tmp_path, records=recs)
    log.start()
    log.add([(1, "missing image file")], during="prototypes", epoch=0, step=0)
    log.add([(1, "missing image file"), (3, "truncated")], during="training", epoch=0, step=4)
    log.add([(2, "missing image file")], during="training", epoch=1, step=2)
    rows = read_jsonl(log.path)
    assert [(r["id"], r["during"], r["epoch"], r["step"]) for r in rows] == [
        ("s1", "prototypes", 0, 0), ("s1", "training", 0, 4), ("s3", "training", 0, 4),
        ("s2", "training", 1, 2)]
    assert rows[2] == {"id": "s3", "image": "images/3.png", "stage": "stage2", "during": "training",
                       "epoch": 0, "step": 4, "reason": "truncated"}

    resumed = BadImageLog(tmp_path / "stage2", stage="stage2", root=tmp_path, records=recs)
    resumed.start(resume_at=(1, 2))  # steps from epoch 1 step 2 on run again: their rows go
    assert read_jsonl(log.path) == rows[:3]
    BadImageLog(tmp_path / "stage2", stage="stage2", root=tmp_path, records=recs).start()
    assert not log.path.exists()  # a fresh start forgets the old record

    stop = BadImageLog(tmp_path / "s", stage="stage1", root=tmp_path, records=recs, policy="stop")
    with pytest.raises(DataError, match=r"^.*images/3.png: cannot read image of id=s3 \(truncated\) "
                                        r"and 1 more; .*train.on_bad_image=skip"):
        stop.add([(3, "truncated"), (1, "gone")], during="training", epoch=0, step=0)
    assert not stop.path.exists()


# ---------------------------------------------------------------- a real run
RUN_OVERRIDES = ["model.backbone=simple_cnn", "data.check_images=false", "stage1.epochs=1",
                 "stage2.epochs=2", "stage2.frozen_encoder_epoch=0", "stage2.init_proto_epoch=0",
                 "stage2.start_clean_epoch=0", "stage3.epochs=1", "train.keep=last",
                 "clean.stage2_checkpoint=kept"]
"""``train.keep=last`` and ``clean.stage2_checkpoint=kept``: the checks below read stage 2's
online-cleaning state of its last epoch, and offline cleaning starts from that epoch."""


def test_run_skips_images_broken_after_validation_and_records_them(tiny_web_data, tmp_path, capsys):
    from capro.engine.runner import run_pipeline

    root = _copy_valid(tiny_web_data, tmp_path / "data")
    train = read_split(root, "train").records
    test = read_split(root, "test").records
    broken = {train[5].id: train[5], train[17].id: train[17]}
    _break(root / train[5].image, "truncate")
    _break(root / train[17].image, "garbage")
    _break(root / test[0].image, "garbage")
    run = tmp_path / "run"
    metrics = run_pipeline(root, run, load_config(preset="tiny", overrides=RUN_OVERRIDES), progress=False)

    # evaluation: the broken test image is not scored, and said so
    assert metrics["eval"]["test"]["n"] == len(test) - 1 and metrics["eval"]["test"]["skipped"] == 1
    preds = read_jsonl(run / "eval" / "test_predictions.jsonl")
    assert len(preds) == len(test) - 1 and test[0].id not in {p["id"] for p in preds}
    # the single passes over the training split see every image once
    for step, during in (("features", "features"), ("stage3a", "cleaning")):
        rows = read_jsonl(run / step / "bad_images.jsonl")
        assert sorted(r["id"] for r in rows) == sorted(broken), step
        assert {(r["stage"], r["during"], r["epoch"], r["step"]) for r in rows} == {(step, during, None, None)}
        for r in rows:
            assert r["image"] == broken[r["id"]].image and r["reason"] == check_image(root / r["image"])
    # stage 3a removed them, so stage 3b never met them
    verdicts = {r["id"]: r for r in read_jsonl(run / "stage3a" / "samples.jsonl")}
    assert all(verdicts[i]["removed"] for i in broken)
    assert not (run / "stage3b" / "bad_images.jsonl").exists()
    assert {int(r["bad_images"]) for r in _log_rows(run / "stage3b" / "log.csv")} == {0}
    # training stages: one row per occurrence, as many as the epochs' log counts, only those ids
    met = set()
    for stage in ("stage1", "stage2"):
        rows = read_jsonl(run / stage / "bad_images.jsonl")
        training = [r for r in rows if r["during"] == "training"]
        log = _log_rows(run / stage / "log.csv")
        assert len(training) == sum(int(r["bad_images"]) for r in log) > 0, stage
        for e, r in enumerate(log):
            assert int(r["bad_images"]) == sum(t["epoch"] == e for t in training)
        assert {r["id"] for r in rows} <= set(broken)
        met |= {r["id"] for r in rows}
        assert len({(r["during"], r["epoch"], r["step"], r["id"]) for r in rows}) == len(rows)
    assert met == set(broken)
    # excluded from training: stage 2's online-cleaning verdict is "removed" for every broken
    # image met in a cleaning epoch (epoch > start_clean_epoch = 0)
    cleaning = torch.load(run / "stage2" / "checkpoint.pt", weights_only=True)["cleaning"]
    index = {r.id: i for i, r in enumerate(train)}
    seen = {r["id"] for r in read_jsonl(run / "stage2" / "bad_images.jsonl")
            if r["during"] == "training" and r["epoch"] >= 1}
    assert seen and all(not cleaning["clean"][index[i]] for i in seen)
    assert cleaning["clean"].sum() > len(train) // 2
    # one warning line per occurrence, naming the file and the record
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if "skipped unreadable image" in line]
    recorded = 0
    for step in ("stage1", "features", "stage2", "stage3a"):
        record = run / step / "bad_images.jsonl"
        for r in read_jsonl(record):
            assert any(f"{root / r['image']} (id={r['id']}: {r['reason']}); recorded in {record}" in line
                       for line in warned), r
            recorded += 1
    assert len(warned) == recorded
    evals = [metrics["eval"]["test"]] + [s["eval"]["test"] for s in metrics["stages"].values() if "eval" in s]
    assert len(evals) == 4 and all(e["n"] == len(test) - 1 and e["skipped"] == 1 for e in evals)
    assert [line for line in err if "eval test" in line] == len(evals) * [
        f"capro: warning: eval test: skipped 1 unreadable images, scored {len(test) - 1} "
        f"({root / test[0].image}: not an image (PIL cannot identify the file format))"]


def test_stop_policy_is_a_one_line_data_error_before_the_step(tiny_web_data, tmp_path, capsys):
    root = _copy_valid(tiny_web_data, tmp_path / "data")
    train = read_split(root, "train").records
    cfg = load_config(preset="tiny")
    sampler = EpochSampler(len(train), global_batch=32, steps=1, seed=cfg.seed + STAGE_SEED["stage1"])
    first = train[next(iter(sampler))]  # in the very first batch
    _break(root / first.image, "truncate")
    run = tmp_path / "run"
    code = main(["run", str(root), "model.backbone=simple_cnn", "data.check_images=false",
                 "train.on_bad_image=stop", "stage2.epochs=0", "train.max_steps_per_epoch=1",
                 "--preset", "tiny", "--device", "cpu", "--out", str(run)])
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()  # less the log lines
                    if not line.startswith("threads: ") and not line.startswith("capro run: warning: "))
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"capro run: error: {root / first.image}: cannot read image of id={first.id} "
                          "(truncated or corrupt image")
    assert err.endswith("train.on_bad_image=skip to skip it")
    assert not (run / "stage1" / "last.pt").exists() and not (run / "stage1" / "bad_images.jsonl").exists()


# ---------------------------------------------------------------- two gloo processes
DDP_OVERRIDES = ["model.backbone=simple_cnn", "stage2.epochs=2", "stage2.frozen_encoder_epoch=0",
                 "stage2.init_proto_epoch=0", "stage2.start_clean_epoch=0",
                 "train.max_steps_per_epoch=2", "data.workers=0"]


def _ddp_stage2(rank: int, root: str, run: str, anchors: list[int]) -> dict:
    """Stage 2 on rank ``rank`` of 2 (gloo) with the given anchors; what must agree across ranks."""
    from capro.engine.checkpoint import seed_everything
    from capro.engine.distributed import DistInfo
    from capro.engine.stages import RunContext, build_model, train_stage

    torch.set_num_threads(1)
    cfg = load_config(preset="tiny", overrides=DDP_OVERRIDES)
    classes = read_classes(root)
    train = read_split(root, "train", classes)
    ctx = RunContext(cfg=cfg, data_root=Path(root), run_dir=Path(run), classes=classes, train=train,
                     dist=DistInfo(rank, 2, rank, torch.device("cpu")), multi_label=False)
    seed_everything(cfg.seed)
    model = build_model(cfg, len(classes), multi_label=False)
    domain = np.zeros(len(train), np.int8)
    domain[anchors] = 1
    cleaning, _ = train_stage(ctx, "stage2", cfg.stage2, model=model, dataset=ctx.train_dataset(domain=domain),
                           fingerprint="test", domain=domain)
    state = {"queue": model.queue, "protos": model.prototypes, "weight": model.classifier.weight.detach(),
             "clean": cleaning.clean}  # digests: the result pipe is read only after both exit
    return {"ptr": int(model.queue_ptr),
            **{k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in state.items()}}


def test_two_gloo_ranks_stay_in_step_when_one_meets_a_bad_image(tiny_web_data, tmp_path):
    root = _copy_valid(tiny_web_data, tmp_path / "data")
    train = read_split(root, "train").records
    cfg = load_config(preset="tiny", overrides=DDP_OVERRIDES)
    sampler = EpochSampler(len(train), global_batch=32, steps=2, rank=1, world=2,
                           seed=cfg.seed + STAGE_SEED["stage2"])
    bad = next(iter(sampler))  # rank 1's first sample of epoch 0
    _break(root / train[bad].image, "garbage")
    labels = np.array([r.label for r in train])
    anchors = sorted({bad} | {int(np.flatnonzero(labels == c)[0]) for c in range(10)})
    run = tmp_path / "run"

    a, b = run_gloo(_ddp_stage2, world=2, args=(str(root), str(run), anchors))

    # both ranks ran the same steps and learnt the same thing
    assert a == b
    log = _log_rows(run / "stage2" / "log.csv")
    assert [int(r["steps"]) for r in log] == [2, 2]
    n_bad = sum(int(r["bad_images"]) for r in log)
    assert n_bad >= 1 and int(log[0]["bad_images"]) >= 1
    assert a["ptr"] == (2 * 2 * 32 - n_bad) % 256  # every valid key enqueued, the placeholder's not
    # written once, by rank 0: the anchor pass and each training occurrence
    rows = read_jsonl(run / "stage2" / "bad_images.jsonl")
    assert {r["id"] for r in rows} == {train[bad].id}
    assert [(r["during"], r["epoch"], r["step"]) for r in rows][:2] == [("prototypes", 0, 0), ("training", 0, 0)]
    assert len(rows) == 1 + n_bad
    assert len({(r["during"], r["epoch"], r["step"]) for r in rows}) == len(rows)


# ---------------------------------------------------------------- capro evaluate
def test_evaluate_honours_the_run_policy_for_unreadable_images(tiny_run, tiny_web_data, tmp_path, capsys):
    import json

    root = _copy_valid(tiny_web_data, tmp_path / "data")
    test = read_split(root, "test").records
    _break(root / test[3].image, "garbage")
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)

    def set_policy(policy: str) -> None:  # the run's config travels in RUN/model.pt
        state = torch.load(run / "model.pt", weights_only=True)
        state["config"]["data"]["check_images"] = False  # the file broke after validation
        state["config"]["train"]["on_bad_image"] = policy
        torch.save(state, run / "model.pt")

    set_policy("skip")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(root), "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == len(test) - 1 and out["skipped"] == 1

    set_policy("stop")
    assert main(["evaluate", str(run), "--data", str(root), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"capro evaluate: error: {root / test[3].image}: cannot read image of id={test[3].id}")
