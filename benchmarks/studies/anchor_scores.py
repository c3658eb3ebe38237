"""Anchor precision of the paper's ranking and the margin-aware one, re-scored on finished runs.

    python benchmarks/studies/anchor_scores.py RUN [RUN ...] [--out FILE]

For each single-label run of `capro run` on simulated data, reads the text-matching artefacts
(``RUN/match/text_distance.npy``, ``text_cosine.npy``) and the simulator's ``truth.jsonl`` of the
run's data, and scores the K best-ranked samples of each web label (the anchors at ``match.topk``
= K) by the paper's distance and by ``match.score=softmax`` at several temperatures: precision =
share whose true class is their web label, averaged over the classes. No training: the same
texts, graph and prototypes, ranked two ways. Writes ``benchmarks/results/anchor_scores.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suites' shared code
from anchors import precision_at_k  # noqa: E402
from common import RESULTS  # noqa: E402

from capro.graph.match import anchor_ranking  # noqa: E402
from capro.utils.io import read_json, read_jsonl, write_json  # noqa: E402

TOP_K = (50, 100)
TEMPERATURES = (0.02, 0.05, 0.1, 0.2)


def web_and_true(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """[N] web and true class ids of a run's training rows (true -1 = out of distribution)."""
    data = Path(read_json(run / "run.json")["data"])
    names = [c["name"] for c in read_json(data / "classes.json")]
    index = {n: i for i, n in enumerate(names)}
    truth = {t["id"]: t for t in read_jsonl(data / "truth.jsonl")}
    rows = read_jsonl(data / "train.jsonl")
    web = np.array([index[r["label"]] for r in rows])
    true = np.array([index.get(truth[r["id"]]["true_label"] or "", -1) for r in rows])
    return web, true


def scores(run: Path) -> dict[str, dict[str, float]]:
    """{"distance" | "softmax@T": {"p@K": precision}} of one run."""
    web, true = web_and_true(run)
    dist = np.load(run / "match" / "text_distance.npy")
    cos = np.load(run / "match" / "text_cosine.npy")
    keys = {"distance": dist}
    keys.update({f"softmax@{t}": anchor_ranking(dist, cos, web, score="softmax", temperature=t)
                 for t in TEMPERATURES})
    return {name: {f"p@{k}": precision_at_k(key, web, true, k) for k in TOP_K} for name, key in keys.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=RESULTS / "anchor_scores.json")
    args = p.parse_args(argv)
    res = {}
    for run in args.runs:
        data = read_json(run / "run.json")["data"]
        info = read_json(Path(data) / "simulation.json")
        key = f"{info.get('profile')}_seed{info.get('seed')}_{run.name}"
        res[key] = {"profile": info.get("profile"), "seed": info.get("seed"), "run": run.name,
                    "scores": scores(run)}
        line = ", ".join(f"{n} {100 * s['p@50']:.1f}/{100 * s['p@100']:.1f}" for n, s in res[key]["scores"].items())
        print(f"{info.get('profile')} seed {info.get('seed')} (p@50/p@100): {line}")
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
