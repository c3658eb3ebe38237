"""Killing a run with SIGKILL during stage 2 and resuming gives the uninterrupted run's result."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
from _launch import assert_resume_matches

TINY_RUN_OVERRIDES = ["model.backbone=simple_cnn"]  # as the tiny_run fixture


def _kill_once_written(cmd: list[str], ckpt) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``ckpt`` exists."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_during_stage2_then_resume_matches_uninterrupted(tiny_run, tiny_web_data, tmp_path):
    ref_run, ref = tiny_run
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "capro", "run", str(tiny_web_data), *TINY_RUN_OVERRIDES,
           "train.checkpoint_every_steps=4", "--preset", "tiny", "--out", str(run)]
    ckpt = run / "stage2" / "last.pt"
    _kill_once_written(cmd, ckpt)
    assert not (run / "stage2" / "done.json").exists()  # killed inside stage 2
    killed_at = torch.load(ckpt, weights_only=True)
    assert (killed_at["epoch"], killed_at["step_in_epoch"]) < (3, 0)

    assert_resume_matches(cmd, run, ref_run, ref)


def kill_in(data, tmp_path, extra: list[str], stage_dir: str):
    """Run the tiny preset with ``extra`` uninterrupted (the reference), then again in a process
    SIGKILLed once ``RUN/<stage_dir>/last.pt`` exists. Returns (cmd, run, ref_run, ref metrics)."""
    from capro.config import load_config
    from capro.engine.runner import run_pipeline

    ref_run = tmp_path / "ref"
    ref = run_pipeline(data, ref_run, load_config(preset="tiny", overrides=[*TINY_RUN_OVERRIDES, *extra]),
                       progress=False)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "capro", "run", str(data), *TINY_RUN_OVERRIDES, *extra,
           "train.checkpoint_every_steps=4", "--preset", "tiny", "--out", str(run)]
    _kill_once_written(cmd, run / stage_dir / "last.pt")
    assert not (run / stage_dir / "done.json").exists()
    return cmd, run, ref_run, ref


def test_sigkill_in_the_second_online_rule_then_resume_matches_uninterrupted(tiny_web_data, tmp_path):
    """D21: stage 2 trained once per rule; a kill inside the second rule's stage 2 resumes there."""
    cmd, run, ref_run, ref = kill_in(tiny_web_data, tmp_path, ["method.keep_rules=[paper,top1]", "stage3.epochs=0"],
                                     "online_rules/top1/stage2")
    assert (run / "online_rules" / "paper" / "stage2" / "done.json").exists()
    assert_resume_matches(cmd, run, ref_run, ref)
    def choice(o: dict) -> dict:  # what was chosen and why, not how long each branch took
        return {**o, "rules": {r: {k: v for k, v in x.items() if k != "seconds"} for r, x in o["rules"].items()}}

    assert choice(json.loads((run / "metrics.json").read_text())["online_rule"]) == choice(ref["online_rule"])
