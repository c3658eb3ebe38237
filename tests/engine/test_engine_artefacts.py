"""The artefacts a finished run leaves beside metrics.json: predictions, the cleanlab graph, probs, report."""

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from capro.utils.io import read_jsonl


def test_predictions_agree_with_metrics(tiny_run):
    run, metrics = tiny_run
    rows = read_jsonl(run / "eval" / "test_predictions.jsonl")
    assert len(rows) == metrics["eval"]["test"]["n"]
    top1 = np.mean([r["label"] == r["pred"] for r in rows])
    assert abs(top1 - metrics["eval"]["test"]["top1"]) < 1e-9
    data = json.loads((run / "run.json").read_text())["data"]
    names = {c["name"] for c in json.loads((Path(data) / "classes.json").read_text())}
    assert all(r["label"] in names and r["pred"] in names and 0.0 <= r["score"] <= 1.0 for r in rows)


def test_knn_graph_and_probs_have_the_run_shapes(tiny_run):
    run, metrics = tiny_run
    n = metrics["n_train"]
    ids = np.load(run / "graph" / "knn_ids.npy")
    graph = sp.load_npz(run / "graph" / "knn_graph.npz")
    assert graph.shape == (n, n)
    assert np.all(np.diff(graph.indptr) == ids.shape[1] - 1)  # self dropped, k - 1 neighbours per row
    probs = np.load(run / "stage3a" / "probs.npy")
    assert probs.shape[0] == n and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_run_writes_the_report(tiny_run):
    run, _ = tiny_run
    html = (run / "report.html").read_text(encoding="utf-8")
    assert 'id="summary"' in html and "data:image/png;base64," in html
