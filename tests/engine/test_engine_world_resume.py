"""A checkpoint resumes with another number of processes when the global batch is unchanged.

Semantics. The global batch of a stage is ``min(batch_size, N)`` rounded down to a multiple of
the number of processes W, and :class:`EpochSampler` cuts each epoch's seeded permutation into
global batches independently of W (rank r takes the r-th slice of each). So with the same global
batch a checkpoint taken after step s of an epoch resumes at step s under any W that divides it:
the remaining batches are the same samples, the weights, optimiser, queue, prototypes and
cleaning state are identical on every rank (only rank 0 writes them), and RNG states only drive
per-sample augmentation seeds. If the global batch would change, a mid-epoch checkpoint is
refused and an epoch-boundary one resumes with a warning (:func:`check_resume_batch`).

The run: the DDP test's configuration (GroupNorm backbone, 1 + 2 epochs of 2 steps, cleaning
off), stopped by SIGTERM in one process after stage-2 step (epoch 0, step 1), resumed in two
processes and stopped again after (epoch 1, step 1), resumed in one process to the end. It must
match the uninterrupted one-process run within the DDP test's tolerance (1e-4, float summation
order of the all-reduce; see test_engine_ddp.py).
"""

import shutil

import pytest
import torch
from _launch import GN_OVERRIDES, gn_backbone, run

from capro.config import load_config
from capro.engine.checkpoint import check_resume_batch
from capro.engine.loop import EpochSampler
from capro.engine.runner import run_pipeline
from capro.engine.signals import EXIT_PREEMPTED
from capro.errors import CaproError
from capro.model import backbones
from capro.utils.io import read_json


def _stop_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def test_resume_across_one_and_two_processes_matches_uninterrupted(tiny_run, tiny_web_data, tmp_path,
                                                                    monkeypatch):
    ref_run, _ = tiny_run
    ref, out = tmp_path / "ref", tmp_path / "run"
    for d in (ref, out):
        shutil.copytree(ref_run / "text", d / "text")  # a finished step: skips loading MiniLM again
    args = ["run", str(tiny_web_data), *GN_OVERRIDES, "--preset", "tiny"]
    last = out / "stage2" / "last.pt"

    monkeypatch.setitem(backbones.BACKBONES, "gn_cnn", gn_backbone)  # the reference, in this process
    want = run_pipeline(tiny_web_data, ref, load_config(preset="tiny", overrides=GN_OVERRIDES),
                        progress=False)

    [(rc, err)] = run([*args, "--out", str(out)], logs=tmp_path / "a", gn=True, at="0:stage2:0:1:term")
    assert rc == EXIT_PREEMPTED, err[-2000:]
    ck = torch.load(last, weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"], ck["world_size"], ck["global_batch"]) == (0, 1, 1, 32)

    two = run([*args, "--out", str(out), "--resume"], logs=tmp_path / "b", gn=True, world=2,
              at="0:stage2:1:1:term")
    assert [rc for rc, _ in two] == [EXIT_PREEMPTED, EXIT_PREEMPTED], two[0][1][-2000:]
    assert "stopped by SIGTERM at epoch 1 step 1" in _stop_line(two[0][1])
    assert "stopped by a signal to another process at epoch 1 step 1" in _stop_line(two[1][1])
    ck = torch.load(last, weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"], ck["world_size"], ck["global_batch"]) == (1, 1, 2, 32)
    with pytest.raises(CaproError, match=r"epoch 1 with a global batch of 32 \(2 processes\), but 3 "
                                         r"processes give a global batch of 30; resume with 2"):
        check_resume_batch(ck, last, global_batch=30, world_size=3)

    [(rc, err)] = run([*args, "--out", str(out), "--resume"], logs=tmp_path / "c", gn=True)
    assert rc == 0, err[-2000:]
    a = torch.load(ref / "model.pt", weights_only=True)["model"]
    b = torch.load(out / "model.pt", weights_only=True)["model"]
    s1 = torch.load(ref / "stage1" / "checkpoint.pt", weights_only=True)["model"]
    assert bool(b["prototypes_ready"])
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), k
    assert (a["classifier.weight"] - s1["classifier.weight"]).abs().max() > 1e-2  # stage 2 trained
    got = read_json(out / "metrics.json")
    for split, m in want["eval"].items():
        assert got["eval"][split]["top1"] == pytest.approx(m["top1"], abs=1 / m["n"])


def test_sampler_remainder_of_an_epoch_is_the_same_under_another_world_size():
    one = EpochSampler(100, global_batch=8, steps=12, seed=5)
    one.set_epoch(3, skip=7)
    rest = list(one)
    for world in (2, 4, 8):
        ranks = []
        for r in range(world):
            s = EpochSampler(100, global_batch=8, steps=12, rank=r, world=world, seed=5)
            s.set_epoch(3, skip=7)
            ranks.append(list(s))
        b = 8 // world
        merged = [i for step in range(5) for r in range(world) for i in ranks[r][step * b:(step + 1) * b]]
        assert merged == rest


def test_check_resume_batch_same_batch_boundary_and_mid_epoch(tmp_path):
    path = tmp_path / "last.pt"
    mid = {"epoch": 2, "step_in_epoch": 3, "global_batch": 32, "world_size": 2}
    check_resume_batch(mid, path, global_batch=32, world_size=1)  # same global batch: fine
    check_resume_batch(mid, path, global_batch=32, world_size=4)
    check_resume_batch({"epoch": 2, "step_in_epoch": 3}, path, global_batch=30, world_size=3)  # older
    with pytest.warns(UserWarning, match="global batch of 32 .2 processes.; this launch trains with 30"):
        check_resume_batch({**mid, "step_in_epoch": 0}, path, global_batch=30, world_size=3)
    with pytest.raises(CaproError, match="last.pt: written in the middle of epoch 2"):
        check_resume_batch(mid, path, global_batch=30, world_size=3)
