"""SIGTERM to ``torchrun`` (as a scheduler sends it) with 2 gloo processes mid-epoch: torchrun
forwards it to both ranks, which stop after the same step with one checkpoint; ``torchrun ...
--resume`` then ends as an uninterrupted one-process run does (within the DDP test's 1e-4, with
its GroupNorm backbone; see test_engine_ddp.py for why)."""

import os
import signal
import subprocess
import sys
import time

import torch
from _launch import GN_OVERRIDES, free_port

LAUNCHER = os.path.join(os.path.dirname(__file__), "_launch.py")


def _torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), LAUNCHER, *args]


def test_sigterm_to_torchrun_stops_both_ranks_and_resumes(tiny_web_data, tmp_path):
    env = {**os.environ, "CAPRO_TEST_GN": "1", "CAPRO_TEST_AT": ""}
    args = ["run", str(tiny_web_data), *GN_OVERRIDES, "--preset", "tiny"]
    one = subprocess.run([sys.executable, LAUNCHER, *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-3000:]

    run = tmp_path / "two"
    out, err = tmp_path / "torchrun.out", tmp_path / "torchrun.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(_torchrun([*args, "--out", str(run)]), stdout=fo, stderr=fe, text=True,
                                env={**env, "CAPRO_TEST_AT": "0:stage2:1:1:wait"})
    deadline = time.monotonic() + 300
    while "ready" not in out.read_text().splitlines() and proc.poll() is None:
        assert time.monotonic() < deadline, "rank 0 never reached stage 2, epoch 1, step 1"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    text = err.read_text()
    assert proc.returncode != 0
    assert "stage2: stopped by SIGTERM at epoch 1 step 1" in text, text[-3000:]
    ck = torch.load(run / "stage2" / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"], ck["world_size"]) == (1, 1, 2)
    assert not (run / "metrics.json").exists()

    done = subprocess.run(_torchrun([*args, "--out", str(run), "--resume"]), capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["model"]
    b = torch.load(run / "model.pt", weights_only=True)["model"]
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), k
