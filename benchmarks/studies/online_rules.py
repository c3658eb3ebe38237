"""The online keep rule chosen per run (D21, ``method.keep_rules``), on validation seeds only.

    python benchmarks/studies/online_rules.py --profile web hard --seed 100 101

Each run is ``capro-ft`` of the ``long`` size with today's defaults plus
``method.keep_rules=[paper,top1]``: stage 2 is trained once with the paper's keep rule and once
keeping a sample only when its label is the best-scored class, from the same stage 1 and anchors,
and the run goes on with the one that scores best on validation. Per rule the JSON keeps stage 2's
validation top-1 (best epoch and last) and, for the record, its test top-1 at those epochs; the
choice never reads test. One JSON per (profile, seed) in ``benchmarks/results/online_rules/``; a
finished one is skipped, an interrupted one resumes from its checkpoints.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suites' shared code

from common import (  # noqa: E402
    RESULTS,
    SIZES,
    best_validation,
    machine_info,
    pct,
    read_curves,
    row_metrics,
    row_overrides,
    update_markdown,
)
from quality import DEFAULT_WORK, ensure_data, run_once  # noqa: E402

from capro.config import load_config  # noqa: E402
from capro.utils.io import read_json  # noqa: E402

RULES = ("paper", "top1")
OUT = RESULTS / "online_rules"


def branch_curves(run: Path, rule: str) -> dict[str, Any]:
    """Stage 2 of one rule: validation and test top-1 at its best-validation epoch and its last."""
    curves = read_curves(run / "online_rules" / rule)
    best = best_validation(curves)
    return {"val_best": best["val_best"], "test_at_best": best["top1_best"], "best_epoch": best["best_epoch"],
            "val_last": curves["val_top1"][-1], "test_last": curves["test_top1"][-1]}


def run_one(profile: str, seed: int, work: Path, *, extra: tuple[str, ...] = (),
            name: str = "online-rules") -> dict[str, Any]:
    """``capro-ft`` of the long size with both rules (plus ``extra`` overrides) in ``<seed dir>/<name>``."""
    from capro.engine.runner import run_pipeline

    size = SIZES["long"]
    data = ensure_data(work, size, profile, seed)
    run = data.parent / name
    overrides = [*row_overrides("capro-ft", size, seed), f"method.keep_rules=[{','.join(RULES)}]", *extra]
    t0 = time.perf_counter()
    metrics = run_pipeline(data, run, load_config(preset="cpu", overrides=overrides), resume=True, progress=False)
    return {"profile": profile, "seed": seed, "rules": {r: branch_curves(run, r) for r in RULES},
            "online_rule": metrics.get("online_rule"), "guard": metrics.get("fine_tune_guard"),
            "val": row_metrics(metrics, split="val"), "test": row_metrics(metrics, split="test"),
            "wall_seconds": round(time.perf_counter() - t0, 1), "command_overrides": overrides,
            "machine": machine_info(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per run, stage 2's validation top-1 under each rule and what the run chose."""
    lines = ["| profile, seed | paper: val best / last | top1: val best / last | chosen | capro-ft val | "
             "test: paper best / top1 best / run (recorded, not used) |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["profile"], r["seed"])):
        p, t = r["rules"]["paper"], r["rules"]["top1"]
        lines.append(f"| {r['profile']} {r['seed']} | {pct(p['val_best'])} / {pct(p['val_last'])} | "
                     f"{pct(t['val_best'])} / {pct(t['val_last'])} | {r['online_rule']['chosen']} | "
                     f"{pct(r['val']['top1'])} | {pct(p['test_at_best'])} / {pct(t['test_at_best'])} / "
                     f"{pct(r['test']['top1'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", nargs="+", default=["web", "hard"], choices=["web", "hard", "uneven"])
    p.add_argument("--seed", nargs="+", type=int, default=[100, 101])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--markdown", action="store_true", help="write the table into BENCHMARKS.md (online-rules)")
    p.add_argument("--tag", default="", help="record into benchmarks/results/online_rules/TAG/ "
                   "(a re-measurement at a later commit keeps the earlier files)")
    args = p.parse_args(argv)
    out = OUT / args.tag if args.tag else OUT
    if set(args.seed) & {0, 1, 2}:
        p.error("seeds 0-2 are the table's; choose defaults on other seeds")
    for seed in args.seed:
        for profile in args.profile:
            run_once(out / f"{profile}_seed{seed}.json", f"{profile} seed {seed}",
                     partial(run_one, profile, seed, args.work,
                             name=f"online-rules-{args.tag}" if args.tag else "online-rules"),
                     lambda res: f"chose {res['online_rule']['chosen']}, val {res['val']['top1']}")
    rows = [read_json(f) for f in sorted(out.glob("*.json"))]
    if rows:
        print(table(rows))
        if args.markdown:
            update_markdown("online-rules", table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
