"""A process of a 2-process gloo ``capro run`` dies (SIGKILL) or hangs in the middle of stage 2:
the other one exits with one line naming its rank, what happened and ``--resume``, not with a
backend traceback and not by hanging.

The processes are started the way torchrun starts them (same environment variables) but without
torchrun's agent, which would itself kill the survivor as soon as one process fails: what is
tested is that capro's own processes end, as under launchers that do not do that. The
collective timeout is lowered to CAPRO_DIST_TIMEOUT=10 s for the hang; the other waits stay far
below it (the text embeddings are copied from the tiny_run fixture, the other rank-0-only steps
take well under a second on this data). A hang of the survivor fails the test through
``finish``'s deadline.
"""

import re
import shutil

from _launch import GN_OVERRIDES, finish, run, start

from capro.engine.distributed import PeerLost, peer_lost


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def _args(tiny_run, tiny_web_data, tmp_path):
    ref_run, _ = tiny_run
    out = tmp_path / "run"
    shutil.copytree(ref_run / "text", out / "text")
    return ["run", str(tiny_web_data), *GN_OVERRIDES, "--preset", "tiny", "--out", str(out)]


def test_survivor_of_a_killed_rank_exits_with_one_line(tiny_run, tiny_web_data, tmp_path):
    """Rank 0 (which also hosts the rendezvous store) dies; rank 1 must not wait for it."""
    args = _args(tiny_run, tiny_web_data, tmp_path)
    (rc_dead, _), (rc, err) = run(args, logs=tmp_path / "log", world=2, at="0:stage2:0:1:kill",
                                  gn=True, env={"CAPRO_DIST_TIMEOUT": "60"})
    assert rc_dead == -9
    assert rc == 1, err[-2000:]
    assert "Traceback" not in err
    assert re.fullmatch(
        r"capro run: error: rank 1 of 2: a collective failed because another process died "
        r"\(see its log for why\): .*Connection (closed|reset) by peer.*\. Rerun the same command "
        r"with --resume to continue from the last checkpoint", _last_line(err)), _last_line(err)


def test_survivor_of_a_hung_rank_exits_after_the_timeout(tiny_run, tiny_web_data, tmp_path):
    """Rank 1 stops answering (it sleeps inside a step); rank 0 gives up after the timeout."""
    args = _args(tiny_run, tiny_web_data, tmp_path)
    logs = tmp_path / "log"
    procs = start(args, logs=logs, world=2, at="1:stage2:0:1:wait", gn=True, env={"CAPRO_DIST_TIMEOUT": "10"})
    [(rc, err)] = finish(procs[:1], logs, timeout=120)
    finish(procs[1:], logs, timeout=0)  # the hung process is killed
    assert rc == 1, err[-2000:]
    assert "Traceback" not in err
    assert re.fullmatch(
        r"capro run: error: rank 0 of 2: a collective failed because another process did not answer "
        r"within CAPRO_DIST_TIMEOUT=10 s \(it hung, or was busy longer: then raise CAPRO_DIST_TIMEOUT\): "
        r"Timed out waiting 10000ms for .*\. Rerun the same command with --resume to continue from "
        r"the last checkpoint", _last_line(err)), _last_line(err)


GLOO_CLOSED = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection "
               "closed by peer [127.0.0.1]:45267. This is typically caused by a remote worker "
               "crashing. Check the logs of the remote worker before reporting an error. GLHF!")
"""What gloo raised (a plain RuntimeError) in the survivor of the test above, as of torch 2.14."""


def test_peer_lost_keeps_the_first_sentence_and_ignores_other_errors(monkeypatch):
    monkeypatch.setenv("CAPRO_DIST_TIMEOUT", "30")
    err = peer_lost(RuntimeError(GLOO_CLOSED), rank=3, world_size=4)
    assert isinstance(err, PeerLost) and err.exit_code == 1
    assert str(err) == ("rank 3 of 4: a collective failed because another process died (see its log "
                        "for why): Connection closed by peer [127.0.0.1]:45267. Rerun the same "
                        "command with --resume to continue from the last checkpoint")
    assert peer_lost(RuntimeError(GLOO_CLOSED), rank=0, world_size=1) is None
    shapes = RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 2x2)")
    assert peer_lost(shapes, rank=0, world_size=2) is None
    assert peer_lost(ValueError(GLOO_CLOSED), rank=0, world_size=2) is None
    joined = peer_lost(RuntimeError("Timed out after 31 seconds waiting for clients. 1/2 clients "
                                    "joined."), rank=0, world_size=2, joined=False)
    assert "could not join the process group" in str(joined)
    assert "within CAPRO_DIST_TIMEOUT=30 s" in str(joined)
