"""Anchor precision at scale: text-matched vs random anchors, with and without text enhancement.

    python benchmarks/studies/anchors.py --profile web            # 20k images: ~15 min on 2 idle cores
    python benchmarks/studies/anchors.py --profile hard
    python benchmarks/studies/anchors.py --profile web --analyse-only   # re-score an existing work dir

Simulates ``--train-size`` images (default 20,000), trains capro's stage 1 briefly (simple CNN,
16 px, 5 epochs; its features build the visual graph), runs the text pipeline and picks anchors,
then re-matches the same texts and graph six ways: re-ranked distance over the *enhanced* texts
(the default), re-ranked distance over the raw texts (``graph.enhance=false``), plain cosine over
the raw texts, random anchors, and the margin-aware ranking (``match.score=softmax``) over the
enhanced and the raw texts. Scored against the simulator's ``truth.jsonl``: the precision
of the K = 50 anchors per class (true class == web label), the share of anchors whose own text is
missing, and precision@K of the per-sample text distance within each web label for larger K.
Writes ``benchmarks/results/anchors_<profile>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from capro.graph.match import anchor_ranking

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS: dict[str, list[str]] = {
    "enhanced": [],
    "plain": ["graph.enhance=false"],
    "cosine_plain": ["match.method=cosine", "graph.enhance=false"],
    "random": ["match.anchors=random"],
    "softmax": ["match.score=softmax"],
    "softmax_plain": ["match.score=softmax", "graph.enhance=false"],
}
"""Variant -> overrides of ``capro graph RUN match`` (the run itself is ``enhanced``)."""
TOP_K = (50, 100, 200, 400, 800)


def run_overrides(seed: int) -> list[str]:
    return [f"seed={seed}", "data.image_size=16", "model.backbone=simple_cnn", "data.workers=0",
            "stage1.epochs=5", "stage2.epochs=1", "stage3.epochs=0", "stage1.batch_size=128",
            "stage2.batch_size=128", "stage1.w_inst=1", "stage2.w_inst=1"]  # as recorded


def capro(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "capro", *args], check=True)


def prepare(work: Path, profile: str, seed: int, train_size: int) -> None:
    """Simulate, run stage 1 + the text pipeline, and keep each variant's match/ directory."""
    data, run = work / f"data_{profile}", work / f"run_{profile}"
    capro("simulate", "--out", str(data), "--profile", profile, "--seed", str(seed), "--train-size",
          str(train_size), "--val-size", "500", "--test-size", "1000", "--image-size", "16", "--quiet")
    capro("run", str(data), "--out", str(run), "--preset", "cpu", *run_overrides(seed))
    for name, extra in VARIANTS.items():
        if extra:
            capro("graph", str(run), "match", *run_overrides(seed), *extra)
        dst = work / f"match_{profile}_{name}"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(run / "match", dst)


def precision_at_k(distance: np.ndarray, web: np.ndarray, true: np.ndarray, k: int) -> float:
    """Mean over web labels c of the share of the k samples labelled c with the smallest text
    distance whose true class is c. distance, web, true: [N] (true -1 = outlier)."""
    precs = []
    for c in np.unique(web):
        members = np.flatnonzero(web == c)
        top = members[np.argsort(distance[members], kind="stable")[:k]]
        precs.append(float(np.mean(true[top] == c)))
    return float(np.mean(precs))


def analyse(work: Path, profile: str, seed: int) -> dict:
    data = work / f"data_{profile}"
    classes = json.loads((data / "classes.json").read_text())
    names = [c["name"] for c in (classes["classes"] if isinstance(classes, dict) else classes)]
    index = {n: i for i, n in enumerate(names)}
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines() if line]
    truth = {}
    for line in (data / "truth.jsonl").read_text().splitlines():
        if line:
            t = json.loads(line)
            truth[t["id"]] = t
    ids = [r["id"] for r in rows]
    pos = {i: k for k, i in enumerate(ids)}
    web = np.array([index[r["label"]] for r in rows])
    true = np.array([index.get(truth[i]["true_label"], -1) for i in ids])
    missing = np.array([truth[i]["text"] == "missing" for i in ids])
    stage1 = json.loads((work / f"run_{profile}" / "metrics.json").read_text())["stages"]["stage1"]
    out: dict = {"profile": profile, "n_train": len(ids), "noise_rate": float(np.mean(true != web)),
                 "missing_text_rate": float(missing.mean()),
                 "stage1_test_top1": stage1.get("eval", {}).get("test", {}).get("top1"),
                 "variants": {}, "overrides": dict(VARIANTS), "run_overrides": run_overrides(seed)}
    for name in VARIANTS:
        match = work / f"match_{profile}_{name}"
        anchors = [json.loads(line) for line in (match / "anchors.jsonl").read_text().splitlines() if line]
        at = [pos[a["id"]] for a in anchors]
        res = {"anchors": len(anchors),
               "precision": float(np.mean([true[i] == index[a["class"]] for i, a in zip(at, anchors)])),
               "missing_text_share": float(np.mean(missing[at]))}
        if name != "random":
            distance = np.load(match / "text_distance.npy")
            if "match.score=softmax" in VARIANTS[name]:  # ranked by the margin-aware key instead
                cos = np.load(match / "text_cosine.npy")
                distance = anchor_ranking(distance, cos, web, score="softmax")
            res.update({f"p@{k}": precision_at_k(distance, web, true, k) for k in TOP_K})
        out["variants"][name] = res
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="web", choices=["web", "hard"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-size", type=int, default=20_000)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("CAPRO_BENCH_WORK", "/tmp/capro-bench")) / "anchors")
    p.add_argument("--analyse-only", action="store_true", help="only score an existing work dir")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.analyse_only:
        prepare(args.work, args.profile, args.seed, args.train_size)
    result = analyse(args.work, args.profile, args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"anchors_{args.profile}.json").write_text(json.dumps(result, indent=1) + "\n")
    for name, res in result["variants"].items():
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
