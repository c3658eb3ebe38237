"""Users without a clean validation split: the long protocol with and without ``val.jsonl``.

    python benchmarks/no_val.py --profile web hard --seed 0
    python benchmarks/no_val.py --seed 100 101 --variants without_val_text without_val_any

For each profile, ``capro-ft`` of the ``long`` size with the defaults users get (``train.keep=best``,
D12, ``train.val_split=auto``) runs twice on the same simulated data: once with its clean
``val.jsonl``, once on a copy without it, where ``auto`` holds out a share of the training rows
and selects epochs on their web labels. The runs reuse the ``quality.py`` data directory. Writes
``benchmarks/results/no_val.json`` (resumable per profile and variant).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SIZES, machine_info, row_overrides  # noqa: E402
from quality import DEFAULT_WORK, ensure_data, log  # noqa: E402

from capro.utils.io import read_json, write_json  # noqa: E402

OUT = RESULTS / "no_val.json"


def _without_val(data: Path) -> Path:
    """A copy of ``data`` (images linked) without ``val.jsonl``."""
    dst = data.parent / "data-noval"
    if not (dst / "train.jsonl").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        for f in data.iterdir():
            if f.name in ("val.jsonl", "images"):
                continue
            if f.is_file():
                shutil.copy2(f, dst / f.name)
        if not (dst / "images").exists():
            (dst / "images").symlink_to(data / "images")
    return dst


VARIANTS = {"with_val": [], "without_val_text": ["train.holdout_from=text"],
            "without_val_any": ["train.holdout_from=any"],
            "without_val_any5": ["train.holdout_from=any", "train.holdout=0.05"]}
"""Run variants: with ``val.jsonl``; without it, the held-out rows drawn from text-verified rows
(D20, opt-in) or from any row (the default; the results recorded as ``without_val`` used it), 10 %
of the rows or 5 % (``without_val_any5``). A run without ``val.jsonl`` is also scored on it once
it has finished (``val_top1_after``: it never saw the split), so that validation seeds can choose."""


def run_variant(data: Path, run_dir: Path, seed: int, extra: list[str] | None = None) -> dict:
    from capro.config import load_config
    from capro.engine.runner import run_pipeline

    size = SIZES["long"]
    over = [o for o in row_overrides("capro-ft", size, seed) if o != "train.keep=last"] + list(extra or [])
    cfg = load_config(preset="cpu", overrides=over)
    t0 = time.perf_counter()
    m = run_pipeline(data, run_dir, cfg, resume=True, progress=False)
    return {"top1": m["eval"]["test"]["top1"], "validation": m.get("validation"),
            "stages": {s: {k: v for k, v in info.items() if k in ("best_epoch", "kept_epoch", "best_val")}
                       for s, info in m["stages"].items()},
            "overrides": over, "wall_seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", nargs="+", default=["web", "hard"], choices=["web", "hard"])
    p.add_argument("--seed", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = p.parse_args(argv)
    for seed in args.seed:
        for profile in args.profile:
            data = ensure_data(args.work, SIZES["long"], profile, seed)
            for variant in args.variants:
                key = f"{profile}/seed{seed}/{variant}"
                out = read_json(OUT) if OUT.is_file() else {}
                if key in out:
                    log(f"{key}: done already")
                    continue
                log(f"{key}: running")
                root = data if variant == "with_val" else _without_val(data)
                res = run_variant(root, data.parent / f"noval-{variant}", seed, VARIANTS[variant])
                if variant != "with_val":
                    from capro.engine.predict import evaluate_run

                    res["val_top1_after"] = evaluate_run(data.parent / f"noval-{variant}", data=data,
                                                         split="val")["top1"]
                out = read_json(OUT) if OUT.is_file() else {}  # another process may have added rows
                out[key] = {**res, "machine": machine_info(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                write_json(OUT, out)
                log(f"{key}: test top-1 {res['top1']:.4f}")
    out = read_json(OUT) if OUT.is_file() else {}
    for seed in args.seed:
        for profile in args.profile:
            a = out.get(f"{profile}/seed{seed}/with_val")
            for variant in [v for v in VARIANTS if v != "with_val"] + ["without_val"]:
                b = out.get(f"{profile}/seed{seed}/{variant}")
                if a and b:
                    print(f"{profile} seed {seed} {variant}: with val.jsonl {100 * a['top1']:.1f} %, without "
                          f"{100 * b['top1']:.1f} % ({100 * (b['top1'] - a['top1']):+.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
