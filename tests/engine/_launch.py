"""``python _launch.py ARGS...`` = ``capro ARGS...`` with test hooks, for subprocess tests.

Hooks (environment variables, read at start):

- ``CAPRO_TEST_GN=1`` registers ``gn_cnn``, a GroupNorm CNN (per-sample normalisation, so one
  process and several processes with the same global batch compute the same function).
- ``CAPRO_TEST_AT="RANK:STAGE:EPOCH:STEP:ACTION"``: on process RANK, after optimiser step STEP
  (counted from 1 within the epoch) of epoch EPOCH (from 0) of training stage STAGE, before that
  step's checkpoint / stop check, do ACTION:

  - ``kill``: die at once with SIGKILL (a crashed or OOM-killed process);
  - ``term``: send itself SIGTERM (handled at once, so the stop is taken at this step's check);
  - ``wait``: print ``ready`` on stdout and wait (up to 120 s) until a signal has been handled
    by the run's stop handler, so that a test can deliver one at a known step.

The hooks delay or end the process; they change nothing in what the run computes.
:func:`start` launches one command on W processes the way torchrun does (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), but without torchrun's agent, which would kill the
surviving processes itself when one fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch.distributed as dist
from torch import nn


class GNNet(nn.Module):
    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_chans, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


def gn_backbone(*, in_chans: int) -> tuple[nn.Module, int]:
    """The ``gn_cnn`` backbone and its feature size."""
    return GNNet(in_chans), 32


def _register_gn() -> None:
    from capro.model import backbones

    backbones.BACKBONES["gn_cnn"] = gn_backbone


def _install_fault(spec: str) -> None:
    from capro.engine import signals, stages

    rank_s, stage, epoch_s, step_s, action = spec.split(":")
    where = (int(rank_s), stage, int(epoch_s), int(step_s))
    handled: list[int] = []
    real_request = signals.GracefulStop.request

    def request(self, signum: int = signal.SIGTERM) -> None:
        handled.append(int(signum))
        real_request(self, signum)

    signals.GracefulStop.request = request
    real_epoch = stages.train_epoch

    def train_epoch(**kw):
        inner = kw["after_step"]
        rank = dist.get_rank() if dist.is_initialized() else 0

        def after_step(step: int, stats) -> None:
            if (rank, kw["stage"], kw["epoch"], step) == where:
                if action == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                elif action == "term":
                    os.kill(os.getpid(), signal.SIGTERM)
                elif action == "wait":
                    print("ready", flush=True)
                    deadline = time.monotonic() + 120
                    while not handled and time.monotonic() < deadline:
                        time.sleep(0.01)
            inner(step, stats)

        kw["after_step"] = after_step
        return real_epoch(**kw)

    stages.train_epoch = train_epoch


GN_OVERRIDES = ["model.backbone=gn_cnn", "stage1.epochs=1", "stage2.epochs=2",
                "stage2.frozen_encoder_epoch=1", "stage2.init_proto_epoch=0",
                "stage2.start_clean_epoch=null", "stage3.epochs=0", "train.max_steps_per_epoch=2",
                "model.queue=96", "device=cpu", "train.keep=last"]
"""The DDP test's run (test_engine_ddp.py): 1 + 2 epochs of 2 steps, batch-independent backbone
(``gn=True``, or :func:`gn_backbone` in this process). ``train.keep=last``: the runs compare
training across process counts, and a validation tie broken by float-order noise must not pick
another epoch."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], *, logs: Path, world: int = 1, at: str = "", gn: bool = False,
          env: dict[str, str] | None = None, new_session: bool = False) -> list[subprocess.Popen]:
    """``capro ARGS`` on ``world`` processes with the hooks above; stdout and stderr of rank r go
    to ``logs.r<r>.out`` / ``logs.r<r>.err``. ``new_session``: each process leads its own process
    group (its pid is the group id), as a job step under a scheduler does."""
    base = {**os.environ, **(env or {}), "CAPRO_TEST_AT": at, "CAPRO_TEST_GN": "1" if gn else ""}
    if world > 1:
        base.update(WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    procs = []
    for r in range(world):
        rank_env = {**base, "RANK": str(r), "LOCAL_RANK": str(r)} if world > 1 else base
        with open(f"{logs}.r{r}.out", "w") as out, open(f"{logs}.r{r}.err", "w") as err:
            procs.append(subprocess.Popen([sys.executable, __file__, *args], env=rank_env,
                                          stdout=out, stderr=err, text=True,
                                          start_new_session=new_session))
    return procs


def finish(procs: list[subprocess.Popen], logs: Path, *, timeout: float = 300) -> list[tuple[int, str]]:
    """Wait for every process, killing (SIGKILL, exit code -9) those still running after
    ``timeout`` s in all; (exit code, stderr) of each."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return [(p.returncode, Path(f"{logs}.r{r}.err").read_text()) for r, p in enumerate(procs)]


def assert_resume_matches(cmd: list[str], run: Path, ref_run: Path, ref: dict, *, timeout: float = 900) -> None:
    """Rerun ``cmd`` with ``--resume``: it must finish with the reference run's evaluation and
    cleaning exactly and its weights within 1e-5 (the stopped run kept every state it needs)."""
    import json

    import torch

    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads((run / "metrics.json").read_text())
    assert got["eval"] == ref["eval"]
    assert got["cleaning"] == ref["cleaning"]
    a = torch.load(run / "model.pt", weights_only=True)["model"]
    b = torch.load(ref_run / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def run(args: list[str], *, logs: Path, **kw) -> list[tuple[int, str]]:
    """:func:`start` then :func:`finish`."""
    return finish(start(args, logs=logs, **kw), logs)


if __name__ == "__main__":
    if os.environ.get("CAPRO_TEST_GN"):
        _register_gn()
    if os.environ.get("CAPRO_TEST_AT"):
        _install_fault(os.environ["CAPRO_TEST_AT"])
    from capro.cli import main

    sys.exit(main(sys.argv[1:]))
