"""``capro report RUN``: write the run's self-contained HTML report."""

from __future__ import annotations

import argparse

from capro.report.html import write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="write a run's HTML report (summary, curves, confusion, suspicious samples)",
        description="Build one self-contained HTML file (images embedded, no external resources) "
                    "from a run directory: run summary and config, per-class cleaning table, "
                    "training curves, confusion matrix, anchors and the most suspicious samples "
                    "per class, textual prototypes, and the kNN graph for cleanlab.")
    p.add_argument("run", metavar="RUN", help="run directory (the --out of `capro run`)")
    p.add_argument("--data", metavar="DIR", help="dataset directory (default: the one in RUN/run.json)")
    p.add_argument("--out", metavar="FILE", help="output HTML file (default: RUN/report.html)")
    p.add_argument("--per-class", type=int, default=8, metavar="N",
                   help="thumbnails per class for anchors and for suspicious samples (default 8)")
    p.add_argument("--max-classes", type=int, default=30, metavar="N",
                   help="classes shown in the samples section, most label issues first (default 30)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = write_report(args.run, args.out, data_root=args.data, per_class=max(args.per_class, 0),
                        max_classes=max(args.max_classes, 1))
    print(f"report: {path}")
    return 0
