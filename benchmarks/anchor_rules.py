"""Anchor rules on validation seeds: which texts may become anchors, at 2k and 20k images.

    python benchmarks/anchor_rules.py prepare --profiles web hard uneven --seeds 100 101 --sizes 2k 20k
    python benchmarks/anchor_rules.py score   --profiles web hard uneven --seeds 100 101 --sizes 2k 20k

``prepare`` simulates each (profile, seed, size), trains capro's stage 1 and runs the offline
steps up to the anchors (text encoding, stage-1 features, kNN graph, re-ranking, enhancement,
text matching) with the defaults of the ``capro-ft`` row: at 2k images the ``long`` size (so a
later ``capro run`` of that row on the same directory reuses them), at 20k the 5-epoch stage 1 of
``benchmarks/anchors.py``. Resumable: finished steps are skipped.

``score`` re-ranks the same texts, graph and prototypes with every rule and text variant, no
training, and scores the anchors against the simulator's ``truth.jsonl``:

- rules: ``paper`` (the K closest texts by re-ranked distance), ``d13`` (the K best by the
  margin-aware softmax, D13), and ``d13+floor`` (D13's order, only texts whose margin clears
  ``match.min_margin``, at most K, at least ``match.min_anchors``);
- texts: ``raw`` (the samples' own texts), ``enhanced`` (smoothed over the visual neighbours, the
  paper) and ``mixed`` (``graph.self_weight`` of the own text plus the rest of the enhanced one);

precision = the share of anchors whose true class is their web label, pooled over classes, and
the anchor count. Writes ``benchmarks/results/anchor_rules.json`` (one entry per (profile, seed,
size), merged with what is there).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SIZES, Size, row_overrides  # noqa: E402
from quality import ensure_data, log  # noqa: E402

from capro.utils.io import read_json, read_jsonl, write_json  # noqa: E402

DEFAULT_WORK = Path(os.environ.get("CAPRO_BENCH_WORK", "/tmp/capro-bench")) / "anchor-rules"
OUT = RESULTS / "anchor_rules.json"
BIG = Size("anchors20k", train_size=20_000, val_size=500, test_size=1000, image_size=16,
           e1=5, e2=1, e3=0, batch_size=128, backbone="simple_cnn", rows=("capro",))
"""The 20k-image size: ``benchmarks/anchors.py``'s data and 5-epoch stage 1."""


def size_of(tag: str) -> Size:
    return SIZES["long"] if tag == "2k" else BIG


def run_overrides(tag: str, seed: int) -> list[str]:
    """The ``capro-ft`` row's overrides at 2k (``long``); ``anchors.py``'s run at 20k."""
    if tag == "2k":
        return row_overrides("capro-ft", SIZES["long"], seed)
    return [f"seed={seed}", "data.image_size=16", "model.backbone=simple_cnn", "data.workers=0",
            "stage1.epochs=5", "stage2.epochs=1", "stage3.epochs=0", "stage1.batch_size=128",
            "stage2.batch_size=128", "stage1.w_inst=1", "stage2.w_inst=1", "graph.backend=torch"]


def run_dir(work: Path, profile: str, seed: int, tag: str) -> Path:
    return work / tag / profile / f"seed{seed}" / "capro-ft"


def capro(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "capro", *args], check=True)


def prepare(work: Path, profile: str, seed: int, tag: str) -> Path:
    """Simulate (profile, seed, size), train stage 1 and run the offline steps to the anchors."""
    data = ensure_data(work / tag, size_of(tag), profile, seed)
    run = run_dir(work, profile, seed, tag)
    over = run_overrides(tag, seed)
    log(f"{profile} seed {seed} {tag}: stage 1 and the offline steps into {run}")
    capro("train", str(data), "--out", str(run), "--until", "stage1", "--preset", "cpu", *over)
    capro("graph", str(run), "match", "--preset", "cpu", *over)
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["prepare", "score"])
    p.add_argument("--profiles", nargs="+", default=["web", "hard", "uneven"])
    p.add_argument("--seeds", nargs="+", type=int, default=[100, 101])
    p.add_argument("--sizes", nargs="+", default=["2k", "20k"], choices=["2k", "20k"])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = p.parse_args(argv)
    for tag in args.sizes:
        for seed in args.seeds:
            for profile in args.profiles:
                if args.action == "prepare":
                    prepare(args.work, profile, seed, tag)
                else:
                    score_and_save(args.work, profile, seed, tag)
    return 0


def score_and_save(work: Path, profile: str, seed: int, tag: str) -> None:
    raise NotImplementedError  # filled in below once the rules exist


if __name__ == "__main__":
    raise SystemExit(main())
