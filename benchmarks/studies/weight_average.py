"""Stage 2's weight average (D22, ``stage2.ema_epochs``), on validation seeds only.

    python benchmarks/studies/weight_average.py --profile web hard --seed 100 101 --ema 5 15

Each run is ``benchmarks/studies/online_rules.py``'s run (``capro-ft`` of the ``long`` size, both keep
rules) plus ``stage2.ema_epochs=E``; ``E = 0`` is that benchmark's own result. Per run the JSON
keeps, per rule, stage 2's validation top-1 at its best epoch and its last and, for the record, the
test top-1 at those epochs, and the run's final validation and test top-1. The choice of a default
reads validation only: the last epoch's validation top-1 (no selection in it) and the final model's.
One JSON per (profile, seed, E) in ``benchmarks/results/weight_average/``; a finished one is
skipped, an interrupted one resumes from its checkpoints.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suites' shared code

from common import RESULTS, pct, update_markdown  # noqa: E402
from online_rules import OUT as BASELINE  # noqa: E402
from online_rules import run_one  # noqa: E402
from quality import DEFAULT_WORK, log  # noqa: E402

from capro.utils.io import read_json, write_json  # noqa: E402

OUT = RESULTS / "weight_average"


def result(profile: str, seed: int, ema: float) -> dict[str, Any] | None:
    """The stored run for (profile, seed, E); E = 0 reads ``online_rules``' result."""
    path = BASELINE / f"{profile}_seed{seed}.json" if ema == 0 else OUT / f"{profile}_seed{seed}_ema{ema:g}.json"
    return read_json(path) if path.is_file() else None


def _chosen(r: dict[str, Any]) -> dict[str, Any]:
    return r["rules"][r["online_rule"]["chosen"]]


def _cell(rs: list[dict[str, Any]], get) -> str:
    xs = [get(r) for r in rs]
    return " / ".join(pct(x) for x in xs) + f" (mean {pct(statistics.fmean(xs))})"


def table(profiles: list[str], seeds: list[int], emas: list[float]) -> str:
    """Markdown: per E, the chosen branch's stage-2 validation top-1 (last, best), the final model's
    validation and test top-1; per-run values then the mean."""
    lines = ["| `stage2.ema_epochs` | profile | runs | chosen rule | stage 2 val last | stage 2 val best | "
             "final val | final test (recorded, not used) | test at stage 2's last (recorded) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for ema in emas:
        for profile in profiles:
            rs = [r for s in seeds if (r := result(profile, s, ema)) is not None]
            if not rs:
                continue
            cells = [_cell(rs, get) for get in (lambda r: _chosen(r)["val_last"], lambda r: _chosen(r)["val_best"],
                                                lambda r: r["val"]["top1"], lambda r: r["test"]["top1"],
                                                lambda r: _chosen(r)["test_last"])]
            chosen = ", ".join(r["online_rule"]["chosen"] for r in rs)
            lines.append(f"| {ema:g} | {profile} | {len(rs)} | {chosen} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", nargs="+", default=["web", "hard"], choices=["web", "hard"])
    p.add_argument("--seed", nargs="+", type=int, default=[100, 101])
    p.add_argument("--ema", nargs="+", type=float, default=[5.0, 15.0], help="stage2.ema_epochs values (> 0)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--markdown", action="store_true", help="write the table into BENCHMARKS.md (weight-average)")
    args = p.parse_args(argv)
    if set(args.seed) & {0, 1, 2}:
        p.error("seeds 0-2 are the table's; choose defaults on other seeds")
    for ema in args.ema:
        for seed in args.seed:
            for profile in args.profile:
                if ema <= 0 or result(profile, seed, ema) is not None:
                    continue
                log(f"{profile} seed {seed} ema {ema:g}: running")
                res = run_one(profile, seed, args.work, extra=(f"stage2.ema_epochs={ema:g}",), name=f"ema{ema:g}")
                write_json(OUT / f"{profile}_seed{seed}_ema{ema:g}.json", {**res, "ema_epochs": ema})
                log(f"{profile} seed {seed} ema {ema:g}: val {res['val']['top1']}")
    md = table(args.profile, args.seed, [0.0, *args.ema])
    print(md)
    if args.markdown:
        update_markdown("weight-average", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
