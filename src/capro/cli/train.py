"""``capro train DATA --out RUN --until STAGE``: the pipeline up to one training stage."""

from __future__ import annotations

import argparse

from capro.cli._common import add_config_args
from capro.cli.run import add_run_args, config_from_args, summary_lines

UNTIL = {"stage1": ["stage2.epochs=0", "stage3.epochs=0"], "stage2": ["stage3.epochs=0"], "stage3": []}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train up to a given stage (stage1, stage2 or stage3)",
        description="Run the pipeline up to --until (stage1: vanilla only; stage2: + graph, "
                    "anchors and CAPro training; stage3: + offline cleaning and fine-tune). "
                    "Finished stages are reused by a later `capro run` on the same RUN.")
    p.add_argument("data", metavar="DATA", help="dataset directory")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory to create or continue")
    p.add_argument("--until", choices=sorted(UNTIL), default="stage1", help="last stage to train (default stage1)")
    add_run_args(p)
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capro.engine.distributed import shutdown
    from capro.engine.runner import run_pipeline

    cfg = config_from_args(args, UNTIL[args.until])
    try:
        metrics = run_pipeline(args.data, args.out, cfg, resume=args.resume)
    finally:
        shutdown()
    if metrics:
        print("\n".join(summary_lines(metrics, args.out)))
    return 0
