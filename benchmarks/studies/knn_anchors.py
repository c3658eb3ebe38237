"""Approximate kNN against exact search on real stage-1 features: recall and the anchors it gives.

    python benchmarks/studies/knn_anchors.py [RUN ...]    # default: the 20k runs of anchor_rules.py (seed 100)

For each finished run (stage-1 features, texts and prototypes in RUN), builds the visual graph
and the anchors three ways with the run's config: exact search, ``graph.index=ivf`` and
``graph.index=hnsw`` (each into its own scratch directory), and scores them against the
simulator's ``truth.jsonl``: recall@k of the approximate lists against the exact ones on every
node, the anchors' precision, and how many anchors the two share. Writes
``benchmarks/results/knn_anchors.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suites' shared code
from anchor_rules import DEFAULT_WORK, run_dir  # noqa: E402
from common import RESULTS, machine_info  # noqa: E402

from capro.config import load_config  # noqa: E402
from capro.data.validate import load_split_for_run  # noqa: E402
from capro.graph.knn import normalize_rows, recall_at_k  # noqa: E402
from capro.graph.offline import build_anchors  # noqa: E402
from capro.utils.io import read_json, read_jsonl, write_json  # noqa: E402

OUT = RESULTS / "knn_anchors.json"


def score(run: Path) -> dict:
    cfg = load_config(run / "config.yaml")
    data = Path(read_json(run / "run.json")["data"])
    split = load_split_for_run(data, "train", run_dir=run, skip_bad=False, check_images=False)
    names = [c.name for c in split.classes]
    truth = {t["id"]: t["true_label"] for t in read_jsonl(data / "truth.jsonl")}
    web = np.array([r.label for r in split.records])
    true = np.array([names.index(truth[r.id]) if truth[r.id] in names else -1 for r in split.records])
    feats = np.load(run / "features" / "stage1.npy")
    texts, protos = np.load(run / "text" / "texts.npy"), np.load(run / "text" / "prototypes.npy")
    out: dict = {"n": len(web), "feature_dim": int(feats.shape[1])}
    domains = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index in ("exact", "ivf", "hnsw"):
            c = dataclasses.replace(cfg, graph=dataclasses.replace(cfg.graph, index=index, recall_queries=0))
            t0 = time.perf_counter()
            res = build_anchors(c, split, feats, texts, protos, Path(tmp) / index, seed=cfg.seed)
            seconds = time.perf_counter() - t0
            domains[index] = res.domain
            ids = np.load(Path(tmp) / index / "graph" / "knn_ids.npy")
            at = res.domain > 0
            row = {"seconds": round(seconds, 2), "anchors": int(at.sum()),
                   "precision": float(np.mean(true[at] == web[at]))}
            if index != "exact":
                row["recall"] = recall_at_k(normalize_rows(feats), ids, queries=len(web))[0]
                row["shared_anchors"] = int((at & (domains["exact"] > 0)).sum())
            out[index] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path)
    args = p.parse_args(argv)
    runs = args.runs or [run_dir(DEFAULT_WORK, prof, 100, "20k") for prof in ("web", "hard")]
    res = read_json(OUT) if OUT.is_file() else {}
    for run in runs:
        info = read_json(Path(read_json(run / "run.json")["data"]) / "simulation.json")
        scored = score(run)
        key = f"{info.get('profile')}_seed{info.get('seed')}_n{scored['n']}"
        res[key] = {**scored, "run": str(run), "machine": machine_info(), "date": time.strftime("%Y-%m-%d")}
        print(key, {k: v for k, v in res[key].items() if k in ("exact", "ivf", "hnsw")}, flush=True)
        write_json(OUT, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
