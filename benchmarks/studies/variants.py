"""Choosing method defaults on validation data of a separate seed (never the table's seeds 0-2).

    python benchmarks/studies/variants.py --profile web hard --seed 100 --variants default s2best keep05

Each variant is ``capro-ft`` of the ``long`` size (``common.SIZES``) plus a few overrides, on data
simulated with ``--seed``; its result is read on the **validation** split only (last epoch, and
test never consulted for the choice; the test figures are stored for the record). Variants whose
overrides touch only offline cleaning reuse the ``default`` run's stages 1 and 2. One JSON per
(profile, seed, variant) in ``benchmarks/results/variants/``; a finished one is skipped on rerun,
and an interrupted run resumes from its checkpoints.
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
    PAPER_KEEP,
    PAPER_MATCH,
    RECORDED_CLEAN,
    RESULTS,
    SIZES,
    machine_info,
    pct,
    row_metrics,
    row_overrides,
    update_markdown,
)
from quality import DEFAULT_WORK, _link_tree, curve_fields, ensure_data, run_once  # noqa: E402

from capro.config import load_config  # noqa: E402
from capro.utils.io import read_json  # noqa: E402

VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "s2best": ("clean.stage2_checkpoint=best",),
    "keep05": ("method.keep_th=0.5",),
    "keep03": ("method.keep_th=0.3",),
    "top1": ("method.keep_top=1",),
    "norelabel": ("method.pseudo_th=1.0",),
    "softmax": ("match.score=softmax",),
    "softmax-s2best": ("match.score=softmax", "clean.stage2_checkpoint=best"),
    "alpha025": ("method.alpha=0.25",),
    "keep05-s2best": ("method.keep_th=0.5", "clean.stage2_checkpoint=best"),
}
"""Variant -> overrides over ``capro-ft`` (``long`` size) with the rules the variants were first
measured against (``BASE``), whatever the defaults are now: ``default`` stays that method."""

BASE = (*PAPER_KEEP, *RECORDED_CLEAN, *PAPER_MATCH)
"""The paper's keep rule and anchor ranking, and offline cleaning from what stage 2 hands on (its
last epoch here)."""

OFFLINE_ONLY = ("clean.",)
"""Override prefixes that leave stages 1 and 2 as they are: a variant reuses stages 1 and 2 of
the variant with the same overrides less these (``s2best`` those of ``default``)."""


def run_variant(name: str, profile: str, seed: int, work: Path) -> dict[str, Any]:
    from capro.engine.runner import run_pipeline

    size = SIZES["long"]
    data = ensure_data(work, size, profile, seed)
    run_dir = work / "variants" / profile / f"seed{seed}" / name
    overrides = [*row_overrides("capro-ft", size, seed), *BASE, *VARIANTS[name]]
    upstream = tuple(o for o in VARIANTS[name] if not o.startswith(OFFLINE_ONLY))
    donors = [v for v, o in VARIANTS.items() if o == upstream and v != name]
    donor = work / "variants" / profile / f"seed{seed}" / (donors[0] if donors else name)
    if donors:
        if not (donor / "metrics.json").is_file():
            raise RuntimeError(f"run the {donors[0]} variant of {profile} seed {seed} first")
        for step in ("text", "stage1", "features", "graph", "match", "anchors", "stage2"):
            if (donor / step).is_dir() and not (run_dir / step).exists():
                run_dir.mkdir(parents=True, exist_ok=True)
                _link_tree(donor / step, run_dir / step)
    cfg = load_config(preset="cpu", overrides=overrides)
    t0 = time.perf_counter()
    metrics = run_pipeline(data, run_dir, cfg, resume=True, progress=False)
    fields = curve_fields(run_dir)
    curves = fields["curves"]
    last_val = {st: [v for s, v in zip(curves["stage"], curves["val_top1"]) if s == st][-1:]
                for st in ("stage1", "stage2", "stage3b")}
    return {"val_stage_last": {st: (v[0] if v else None) for st, v in last_val.items()},"variant": name, "overrides": list(VARIANTS[name]), "profile": profile, "seed": seed,
            "val": row_metrics(metrics, split="val"), "test": row_metrics(metrics, split="test"),
            "val_best": fields["best"]["val_best"], "best_epoch": fields["best"]["best_epoch"],
            "curves": fields["curves"], "wall_seconds": time.perf_counter() - t0,
            "command_overrides": overrides, "machine": machine_info(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def variants_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: validation top-1 per variant (columns: profile and seed; noise P / R and noisy rows
    fitted per run), then per profile the mean change against ``default`` over the seeds where
    both ran."""
    cols = sorted({(r["profile"], r["seed"]) for r in rows})
    names = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    by = {(r["variant"], r["profile"], r["seed"]): r for r in rows}
    profiles = sorted({p for p, _ in cols})
    head = ("| variant | overrides | " + " | ".join(f"{p} {s}" for p, s in cols) + " | "
            + " | ".join(f"{p}: Δ vs default (seeds)" for p in profiles) + " |")
    lines = [head, "|" + "---|" * (2 + len(cols) + len(profiles))]
    for v in names:
        cells = []
        for p, s in cols:
            r = by.get((v, p, s))
            cells.append("–" if r is None else
                         f"{pct(r['val']['top1'])} (s2 {pct(r['val_stage_last']['stage2'])}; "
                         f"P {pct(r['val']['noise_precision'])} / R {pct(r['val']['noise_recall'])}; "
                         f"fit {pct(r['val'].get('noisy_fit'))})")
        for p in profiles:
            seeds = [s for q, s in cols if q == p]
            diffs = [by[(v, p, s)]["val"]["top1"] - by[("default", p, s)]["val"]["top1"]
                     for s in seeds if (v, p, s) in by and ("default", p, s) in by]
            cells.append(f"{100 * sum(diffs) / len(diffs):+.1f} ({len(diffs)})" if diffs else "–")
        over = " ".join(f"`{o}`" for o in VARIANTS[v]) or "(the paper's rules)"
        lines.append(f"| `{v}` | {over} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", nargs="+", default=["web", "hard"], choices=["web", "hard"])
    p.add_argument("--seed", type=int, default=100, help="the validation seed (not 0-2)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--threads", type=int)
    p.add_argument("--markdown", action="store_true",
                   help="write the table of every stored variant into BENCHMARKS.md (variants-long)")
    args = p.parse_args(argv)
    if args.seed in (0, 1, 2):
        p.error("seeds 0-2 are the table's; choose defaults on another seed")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for profile in args.profile:
        for name in args.variants:
            run_once(RESULTS / "variants" / f"{profile}_seed{args.seed}_{name}.json", f"{profile} {name}",
                     partial(run_variant, name, profile, args.seed, args.work),
                     lambda res: f"val top-1 {res['val']['top1']:.4f} (best-val epoch {res['best_epoch']}: "
                                 f"{res['val_best']}) noise F1 {res['val']['noise_f1']}")
    if args.markdown:
        update_markdown("variants-long", variants_table([read_json(f) for f in
                                                          sorted((RESULTS / "variants").glob("*.json"))]))
    rows = [read_json(f) for f in sorted((RESULTS / "variants").glob(f"*_seed{args.seed}_*.json"))]
    for r in rows:
        st = r["val_stage_last"]
        print(f"{r['profile']:5} {r['variant']:15} val top-1 {100 * r['val']['top1']:.1f}  stage 1 "
              f"{100 * (st['stage1'] or 0):.1f}  stage 2 {100 * (st['stage2'] or 0):.1f}  noise F1 "
              f"{100 * (r['val']['noise_f1'] or 0):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
