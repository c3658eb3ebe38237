"""``capro export RUN --format jsonl|imagefolder|csv|parquet --out DIR``: the cleaned dataset."""

from __future__ import annotations

import argparse
import sys

from capro.report.export import EXPORT_FORMATS, export_run


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a run's cleaned training set (or its per-sample verdicts)",
        description="jsonl: capro's layout (classes.json, train.jsonl with the final labels, "
                    "val/test as they are, images linked or copied); imagefolder: DIR/<class>/<file>; "
                    "both list every training row left out in DIR/removed.jsonl with its reason. "
                    "csv / parquet: the per-sample verdict table DIR/samples.<ext>. "
                    "The source dataset is never modified.")
    p.add_argument("run", metavar="RUN", help="run directory (the --out of `capro run`)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl", help="output format (default jsonl)")
    p.add_argument("--out", metavar="DIR", required=True, help="new directory for the cleaned dataset")
    p.add_argument("--data", metavar="DIR", help="dataset directory (default: the one in RUN/run.json)")
    p.add_argument("--copy", action="store_true", help="copy the images instead of symlinking them")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    s = export_run(args.run, args.out, format=args.format, data_root=args.data, copy=args.copy,
                   progress=sys.stderr.isatty())
    if s.format in ("csv", "parquet"):
        print(f"export: {s.exported} verdicts -> {s.out / f'samples.{s.format}'}")
        return 0
    splits = ", ".join(f"{k} {n}" for k, n in s.splits.items())
    print(f"export: {s.out} ({s.format}): {splits}; {s.relabeled} training rows relabelled, "
          f"{s.removed} left out (listed in {s.out / 'removed.jsonl'})")
    return 0
