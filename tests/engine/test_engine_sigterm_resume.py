"""SIGTERM in the middle of a stage-2 epoch of ``capro run``: exit code 75 with a checkpoint, then
``--resume`` finishes with the uninterrupted run's result.

The signal is a real SIGTERM sent by this test to the ``capro run`` process. To make the step it
lands at deterministic, the process waits (hook ``wait`` of ``_launch.py``) after step 3 of
stage-2 epoch 2 until the signal has been handled: the stop is then taken at that step's check,
in the middle of an epoch where the prototypes exist and online cleaning is on.

Tolerance: none on the metrics. The checkpoint holds every state the rest of the run reads
(weights, optimiser, queue, prototypes, cleaning state, RNG states, the position in the
epoch's sample order), so the resumed run performs the same float operations as the
uninterrupted one (as the SIGKILL test shows); the weights are compared to 1e-5 like there.
"""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from _launch import assert_resume_matches, finish, start

from capro.engine.signals import EXIT_PREEMPTED
from capro.utils.io import read_json

TINY_RUN_OVERRIDES = ["model.backbone=simple_cnn"]  # as the tiny_run fixture


def _wait_for_line(path: Path, line: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if line in path.read_text().splitlines():
            return
        time.sleep(0.05)
    raise AssertionError(f"no {line!r} from the run (exit code {proc.poll()})")


def test_sigterm_mid_epoch_exits_75_and_resume_matches_uninterrupted(tiny_run, tiny_web_data, tmp_path):
    ref_run, ref = tiny_run
    run = tmp_path / "run"
    shutil.copytree(ref_run / "text", run / "text")  # a finished step: skips loading MiniLM again
    args = ["run", str(tiny_web_data), *TINY_RUN_OVERRIDES, "--preset", "tiny", "--out", str(run)]
    logs = tmp_path / "stopped"
    [proc] = start(args, logs=logs, at="0:stage2:2:3:wait")
    _wait_for_line(Path(f"{logs}.r0.out"), "ready", proc)
    proc.send_signal(signal.SIGTERM)
    [(rc, err)] = finish([proc], logs)

    assert rc == EXIT_PREEMPTED, err[-2000:]
    last = run / "stage2" / "last.pt"
    assert "Traceback" not in err
    assert err.strip().splitlines()[-2:] == [
        "capro: got SIGTERM; finishing the current step, then writing a checkpoint (press Ctrl-C "
        "again to stop at once)",
        f"capro run: error: stage2: stopped by SIGTERM at epoch 2 step 3; checkpoint written to "
        f"{last}; rerun with --resume"]
    ck = torch.load(last, weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"]) == (2, 3)
    assert not (run / "stage2" / "done.json").exists()
    assert not (run / "metrics.json").exists()

    assert_resume_matches([sys.executable, "-m", "capro", *args], run, ref_run, ref, timeout=600)
    got = read_json(run / "metrics.json")
    assert got["stages"]["stage2"]["eval"] == ref["stages"]["stage2"]["eval"]
