"""The passes over the data outside training are shared by the ranks and equal one process's.

A one-process run is the reference. Its copy, with the text, feature, graph, anchor and stage-3a
results removed, is finished by two gloo processes under torchrun: stage 1, stage 2 and stage 3b
are done (same fingerprints) and are loaded, so every pass runs on the same weights as in the
reference, each rank on its slice. Text embeddings, features, neighbour lists, anchors, cleaning
scores and verdicts, and the evaluation must equal the reference's (floats to 1e-5: one process
runs two threads, each of two processes one; discrete results exactly).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from _launch import GN_OVERRIDES, free_port

LAUNCHER = os.path.join(os.path.dirname(__file__), "_launch.py")
# stage 3 on (its 3a pass is under test); small batches and chunks so that both ranks get work
OVERRIDES = [*GN_OVERRIDES, "stage3.epochs=1", "train.eval_batch_size=32", "text.chunk_size=64",
             "text.batch_size=32"]
RECOMPUTED = ["text", "features", "graph", "match", "anchors", "stage3a", "eval", "metrics.json", "model.pt"]


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "CAPRO_TEST_GN": "1", "CAPRO_TEST_AT": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_share_the_passes_and_match_one(tiny_web_data, tmp_path):
    args = ["run", str(tiny_web_data), *OVERRIDES, "--preset", "tiny"]
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, LAUNCHER, *args, "--out", str(one)])
    shutil.copytree(one, two)
    for name in RECOMPUTED:
        path = two / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
          "--master_port", str(free_port()), LAUNCHER, *args, "--out", str(two)])

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
