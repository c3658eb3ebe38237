"""A stop signal sent to the whole process group of ``capro run`` with DataLoader workers, as
SLURM pre-emption, ``scancel`` and Ctrl-C in a terminal do: every worker receives it too.

The workers ignore SIGTERM / SIGINT (``capro.engine.signals.ignore_stop_signals``), so the main
process takes its graceful stop at the step where the signal arrived (exit 75, a mid-epoch
checkpoint), shuts its workers down, and ``--resume`` ends as the uninterrupted run did. The
augmentations are seeded per (seed, epoch, sample), so 2 workers compute what the reference run
with none computed.
"""

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from _launch import assert_resume_matches, finish, start
from test_engine_sigterm_resume import _wait_for_line

from capro.engine.signals import EXIT_PREEMPTED

TINY_RUN_OVERRIDES = ["model.backbone=simple_cnn"]  # as the tiny_run fixture


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_process_group_with_workers_stops_gracefully(sig, tiny_run, tiny_web_data, tmp_path):
    ref_run, ref = tiny_run
    run = tmp_path / "run"
    shutil.copytree(ref_run / "text", run / "text")  # a finished step: skips loading MiniLM again
    args = ["run", str(tiny_web_data), *TINY_RUN_OVERRIDES, "data.workers=2", "--preset", "tiny",
            "--out", str(run)]
    logs = tmp_path / "stopped"
    [proc] = start(args, logs=logs, at="0:stage2:2:3:wait", new_session=True)
    _wait_for_line(Path(f"{logs}.r0.out"), "ready", proc)
    os.killpg(proc.pid, sig)  # the main process and its DataLoader workers
    [(rc, err)] = finish([proc], logs)

    assert rc == EXIT_PREEMPTED, err[-2000:]
    assert "Traceback" not in err and "killed by signal" not in err
    last = run / "stage2" / "last.pt"
    assert err.strip().splitlines()[-1] == (
        f"capro run: error: stage2: stopped by {sig.name} at epoch 2 step 3; checkpoint written to "
        f"{last}; rerun with --resume")
    ck = torch.load(last, weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"]) == (2, 3)

    assert_resume_matches([sys.executable, "-m", "capro", *args], run, ref_run, ref)
