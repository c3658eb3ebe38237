"""GracefulStop with real signals (to this process and to a child process) and the DDP stop vote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from _gloo import run_gloo

from capro.engine.signals import (
    EXIT_PREEMPTED,
    GracefulStop,
    Preempted,
    stop_requested_anywhere,
)
from capro.errors import CaproError


def test_exit_code_is_ex_tempfail_and_preempted_carries_it():
    assert EXIT_PREEMPTED == 75
    err = Preempted("stopped")
    assert isinstance(err, CaproError)
    assert err.exit_code == 75


def test_sigterm_sets_flag_and_handlers_are_restored(capsys):
    before_term = signal.getsignal(signal.SIGTERM)
    before_int = signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        assert not stop.should_stop
        assert stop.signal_name is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.should_stop
        assert stop.signal_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM changes nothing
        assert stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before_term
    assert signal.getsignal(signal.SIGINT) is before_int
    err = capsys.readouterr().err
    assert err.count("got SIGTERM") == 1
    assert len(err.strip().splitlines()) == 1


def test_first_sigint_sets_flag_second_raises_keyboard_interrupt():
    # Not always default_int_handler: a process started in the background (nohup, `&`) begins
    # with SIGINT ignored, and that is what must come back.
    before = signal.getsignal(signal.SIGINT)
    with GracefulStop(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.should_stop
        assert stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_sigint_after_sigterm_interrupts_at_once():
    with GracefulStop(announce=False) as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.should_stop
        os.kill(os.getpid(), signal.SIGINT)


def test_nested_contexts_restore_the_outer_handler():
    with GracefulStop(announce=False) as outer:
        outer_handler = signal.getsignal(signal.SIGTERM)
        with GracefulStop(announce=False) as inner:
            os.kill(os.getpid(), signal.SIGTERM)
        assert inner.should_stop and not outer.should_stop
        assert signal.getsignal(signal.SIGTERM) == outer_handler
        os.kill(os.getpid(), signal.SIGTERM)
        assert outer.should_stop


def test_request_and_off_main_thread_installs_nothing():
    before = signal.getsignal(signal.SIGTERM)
    seen = {}

    def body():
        with GracefulStop(announce=False) as stop:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["stop"] = stop.should_stop
            stop.request(signal.SIGINT)
            stop.request(signal.SIGTERM)  # the first request wins
            seen["name"] = stop.signal_name

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == {"handler": before, "stop": False, "name": "SIGINT"}


_CHILD = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from capro.engine.signals import EXIT_PREEMPTED, GracefulStop
    from capro.utils.io import write_json

    ckpt = Path(sys.argv[1])
    total = int(sys.argv[2])
    step = json.loads(ckpt.read_text())["step"] if "--resume" in sys.argv else 0
    with GracefulStop() as stop:
        while step < total:
            time.sleep(0.01)  # one "training step"
            step += 1
            if step == 3 and "--resume" not in sys.argv:
                print("ready", flush=True)
            if stop.should_stop:
                write_json(ckpt, {"step": step, "signal": stop.signal_name})
                sys.exit(EXIT_PREEMPTED)
    write_json(ckpt, {"step": step, "done": True})
""")


def _child(tmp_path: Path) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "ckpt.json"), "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_subprocess_stops_after_a_step_writes_checkpoint_and_exits_75(tmp_path, sig):
    proc = _child(tmp_path)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, err
    state = json.loads((tmp_path / "ckpt.json").read_text())
    assert state["signal"] == sig.name
    assert 3 <= state["step"] < 100000
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"capro: got {sig.name}; finishing the current step, then writing a checkpoint "
        "(press Ctrl-C again to stop at once)"]

    # --resume continues from the checkpointed step (a short run this time)
    script = tmp_path / "child.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt.json"),
                           str(state["step"] + 5), "--resume"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "ckpt.json").read_text()) == {"step": state["step"] + 5,
                                                                "done": True}


def test_stop_requested_anywhere_single_process_is_the_flag():
    assert stop_requested_anywhere(True) is True
    assert stop_requested_anywhere(False) is False


_VOTES = [(False, True), (True, False), (False, False), (True, True)]


def _vote(rank: int) -> list[bool]:
    return [stop_requested_anywhere(flags[rank]) for flags in _VOTES]


def test_stop_requested_anywhere_all_reduces_over_gloo_ranks():
    expected = [any(flags) for flags in _VOTES]
    assert expected == [True, True, False, True]
    assert run_gloo(_vote, world=2) == [expected, expected]
