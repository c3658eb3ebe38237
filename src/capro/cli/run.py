"""``capro run DATA --out RUN``: every step of CAPro, skipping the finished ones."""

from __future__ import annotations

import argparse
import sys

from capro.cli._common import add_config_args
from capro.config import load_config


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run``, ``train`` and ``demo``-like commands."""
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted stage from its last checkpoint")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N (same as device=...)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip invalid rows (recorded in RUN/rejected.jsonl) instead of refusing the data")


def config_from_args(args: argparse.Namespace, extra: list[str] | tuple[str, ...] = ()):
    overrides = list(args.overrides) + list(extra)
    if getattr(args, "device", None):
        overrides.append(f"device={args.device}")
    if getattr(args, "skip_bad", False):
        overrides.append("data.skip_bad=true")
    return load_config(args.config, preset=args.preset, overrides=overrides)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="run the whole pipeline (text, stage 1, graph, stage 2, cleaning, fine-tune)",
        description="Run every step of CAPro on DATA into RUN: text encoding, stage-1 (vanilla) "
                    "training, feature dump, kNN graph + text enhancement + anchors, stage-2 CAPro "
                    "training, offline cleaning (RUN/stage3a/samples.jsonl) and the mix-up "
                    "fine-tune. Finished steps with an unchanged config are skipped; --resume "
                    "continues an interrupted stage. Results: RUN/metrics.json, RUN/model.pt. "
                    "Under torchrun, every process runs this same command.")
    p.add_argument("data", metavar="DATA", help="dataset directory (classes.json, train.jsonl, ...)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory to create or continue: checkpoints, verdicts, model, report")
    add_run_args(p)
    add_config_args(p)
    p.set_defaults(func=run)


def summary_lines(metrics: dict, run_dir: str) -> list[str]:
    """A short human-readable summary of ``metrics.json``."""
    lines = []
    for name, info in metrics.get("stages", {}).items():
        ev = next(iter(info.get("eval", {}).items()), None)
        score = ""
        if ev is not None:
            split, m = ev
            score = (f"  {split} top-1 {100 * m['top1']:.2f}%" if "top1" in m
                     else f"  {split} mAP {m.get('mAP_macro', float('nan')):.2f}")
        lines.append(f"  {name:<9} {info.get('seconds', 0):8.1f} s{score}")
    for split, m in metrics.get("eval", {}).items():
        if "top1" in m:
            lines.append(f"final {split}: top-1 {100 * m['top1']:.2f}%  top-5 {100 * m['top5']:.2f}%  (n={m['n']})")
        else:
            lines.append(f"final {split}: " + "  ".join(f"{k} {v:.2f}" for k, v in m.items() if k != "n"))
    c = metrics.get("cleaning")
    if c:
        lines.append(f"cleaning ({c.get('source')}): kept {c['kept']}, relabelled {c['relabeled']}, removed {c['removed']}")
    tt = metrics.get("train_truth") or {}
    if tt.get("anchor_precision") is not None:
        lines.append(f"anchor precision: {100 * tt['anchor_precision']:.1f}%")
    nd = tt.get("noise_detection")
    if nd:
        lines.append(f"noise detection: precision {100 * nd['precision']:.1f}%  recall {100 * nd['recall']:.1f}%  "
                     f"F1 {100 * nd['f1']:.1f}%")
    lines.append(f"outputs: {run_dir}/metrics.json, {run_dir}/model.pt")
    return lines


def run(args: argparse.Namespace) -> int:
    from capro.engine.distributed import shutdown
    from capro.engine.runner import run_pipeline

    cfg = config_from_args(args)
    try:
        metrics = run_pipeline(args.data, args.out, cfg, resume=args.resume)
    finally:
        shutdown()
    if metrics:
        print("\n".join(summary_lines(metrics, args.out)), file=sys.stdout)
    return 0
