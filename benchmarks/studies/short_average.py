"""Stage 2's weight average (D22) in a short stage 2, on validation seeds only.

    python benchmarks/studies/short_average.py --profile web hard --seed 100 101 --ema 0 0.4 1 5

D22 chose a 5-epoch average on the ``long`` size (110 stage-2 epochs). The ``full`` size (and the
``cpu`` preset) trains stage 2 for 8 epochs, where the network is still improving fast and a
5-epoch average lags behind it. Each run is ``capro-ft`` of the ``full`` size plus
``stage2.ema_epochs=E`` on data simulated with a validation seed; the choice reads the final
model's validation top-1 (test recorded, never used); it chose D24's cap (``stage2.ema_max_share``,
0.05 of the stage: 0.4 of 8 epochs, 5 of 110), and E here is uncapped. One JSON per (profile, seed, E) in
``benchmarks/results/short_average/``; a finished one is skipped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suites' shared code

from common import RESULTS, SIZES, machine_info, pct, row_overrides  # noqa: E402
from quality import DEFAULT_WORK, ensure_data, run_once  # noqa: E402

from capro.utils.io import read_json  # noqa: E402

OUT = RESULTS / "short_average"


def run(profile: str, seed: int, ema: float, work: Path) -> dict:
    """Train ``capro-ft`` of the ``full`` size with ``stage2.ema_epochs=ema``; its scores."""
    from capro.config import load_config
    from capro.engine.predict import evaluate_run
    from capro.engine.runner import run_pipeline

    size = SIZES["full"]
    data = ensure_data(work, size, profile, seed)
    run_dir = data.parent / f"short-average-ema{ema:g}"
    # E as given: no D24 cap (the recorded runs predate it, which is the same)
    over = [*row_overrides("capro-ft", size, seed), f"stage2.ema_epochs={ema:g}", "stage2.ema_max_share=1"]
    t0 = time.perf_counter()
    m = run_pipeline(data, run_dir, load_config(preset="cpu", overrides=over), resume=True, progress=False)
    return {"profile": profile, "seed": seed, "ema_epochs": ema, "overrides": over,
            "val_top1": evaluate_run(run_dir, data=data, split="val")["top1"],
            "test_top1": m["eval"]["test"]["top1"],
            "stage2_kept_epoch": m["stages"]["stage2"].get("kept_epoch"),
            "online_rule": m.get("online_rule", {}).get("chosen"),
            "wall_seconds": time.perf_counter() - t0, "machine": machine_info()}


def table(profiles: list[str], seeds: list[int], emas: list[float]) -> str:
    """Markdown: per E, the final model's validation top-1 per run and its mean (test recorded)."""
    lines = ["| `stage2.ema_epochs` | " + " | ".join(f"`{p}` {s}" for p in profiles for s in seeds)
             + " | validation mean | test mean (recorded, not used) |",
             "|---|" + "---|" * (len(profiles) * len(seeds) + 2)]
    for ema in emas:
        rs = [read_json(f) if (f := OUT / f"{p}_seed{s}_ema{ema:g}.json").is_file() else None
              for p in profiles for s in seeds]
        if any(r is None for r in rs):
            continue
        cells = [f"{pct(r['val_top1'])} (stage 2 epoch {r['stage2_kept_epoch']})" for r in rs]
        lines.append(f"| {ema:g} | " + " | ".join(cells) + f" | **{pct(statistics.fmean(r['val_top1'] for r in rs))}** | "
                     f"{pct(statistics.fmean(r['test_top1'] for r in rs))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", nargs="+", default=["web", "hard"], choices=["web", "hard"])
    p.add_argument("--seed", type=int, nargs="+", default=[100, 101])
    p.add_argument("--ema", type=float, nargs="+", default=[0, 0.4, 1, 5])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args(argv)
    if any(s in (0, 1, 2) for s in args.seed):
        p.error("--seed: choose defaults on validation seeds, never the tables' seeds 0-2")
    OUT.mkdir(parents=True, exist_ok=True)
    for seed in [] if args.table_only else args.seed:
        for profile in args.profile:
            for ema in args.ema:
                run_once(OUT / f"{profile}_seed{seed}_ema{ema:g}.json", f"{profile} seed {seed} ema {ema:g}",
                         partial(run, profile, seed, ema, args.work),
                         lambda res: f"validation top-1 {res['val_top1']:.4f}")
    print(table(args.profile, args.seed, args.ema))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
