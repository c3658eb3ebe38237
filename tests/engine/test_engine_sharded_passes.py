"""The passes over the data outside training are shared by the ranks and equal one process's.

The session's one-process run (``tiny_run``) is the reference. Its copy, with the text, feature,
graph, anchor and stage-3a results removed, is finished by two gloo processes under torchrun:
stage 1, stage 2 and stage 3b are done (same fingerprints) and are loaded, so every pass runs on
the same weights as in the reference, each rank on its slice (200 texts make 4 chunks, 200
images 2 batches: both ranks get work). Text embeddings, features, neighbour lists, anchors,
cleaning scores and verdicts, and the evaluation must equal the reference's (floats to 1e-5:
one process runs two threads, each of two processes one; discrete results exactly).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from _launch import free_port

LAUNCHER = os.path.join(os.path.dirname(__file__), "_launch.py")
RECOMPUTED = ["text", "features", "graph", "match", "anchors", "stage3a", "eval", "metrics.json", "model.pt"]


def test_two_processes_share_the_passes_and_match_one(tiny_run, tiny_run_overrides, tiny_web_data, tmp_path):
    one, two = tiny_run[0], tmp_path / "two"
    shutil.copytree(one, two)
    for name in RECOMPUTED:
        path = two / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), LAUNCHER, "run", str(tiny_web_data), *tiny_run_overrides,
         "--preset", "tiny", "--device", "cpu", "--out", str(two)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "CAPRO_TEST_GN": "", "CAPRO_TEST_AT": ""})
    assert done.returncode == 0, done.stderr[-3000:]

    a, b = json.loads((one / "metrics.json").read_text()), json.loads((two / "metrics.json").read_text())
    assert b["world_size"] == 2 and b["stages"]["features"]["world_size"] == 2
    assert b["eval"] == a["eval"] and b["cleaning"] == a["cleaning"]
    assert b["train_truth"] == a["train_truth"]
    assert b.get("fine_tune_guard") == a.get("fine_tune_guard")

    def close(rel: str) -> None:
        np.testing.assert_allclose(np.load(two / rel), np.load(one / rel), atol=1e-5, rtol=1e-5, err_msg=rel)

    for rel in ("text/texts.npy", "features/stage1.npy", "graph/knn_sims.npy", "stage3a/probs.npy"):
        close(rel)
    assert not (two / "text" / "texts.npy.chunks").exists()  # the chunk files were assembled and removed
    np.testing.assert_array_equal(np.load(two / "graph/knn_ids.npy"), np.load(one / "graph/knn_ids.npy"))
    with np.load(one / "anchors/anchors.npz") as x, np.load(two / "anchors/anchors.npz") as y:
        np.testing.assert_array_equal(y["domain"], x["domain"])
        np.testing.assert_allclose(y["text_distance"], x["text_distance"], atol=1e-5)
    with np.load(one / "stage3a/verdicts.npz") as x, np.load(two / "stage3a/verdicts.npz") as y:
        for key in ("target", "clean", "relabeled"):
            np.testing.assert_array_equal(y[key], x[key], err_msg=key)
    for rel in ("stage3a/samples.jsonl", "eval/val_predictions.jsonl", "eval/test_predictions.jsonl"):
        _same_rows(two / rel, one / rel)


def _same_rows(got, want) -> None:
    """The JSON lines agree: the same rows and fields, numbers within 1e-5."""
    rows = [json.loads(line) for line in got.read_text().splitlines()]
    ref = [json.loads(line) for line in want.read_text().splitlines()]
    assert len(rows) == len(ref) > 0, got
    for r, e in zip(rows, ref):
        assert r.keys() == e.keys()
        for key, value in e.items():
            if isinstance(value, float):
                assert abs(r[key] - value) <= 1e-5, (got, key)
            else:
                assert r[key] == value, (got, key)
