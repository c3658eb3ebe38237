"""``capro validate DATA``: check a dataset directory and print one line per problem."""

from __future__ import annotations

import argparse
import json
import sys

from capro.data.validate import validate_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate", help="check a dataset directory (manifests, labels, images)",
        description="Check DATA/classes.json, every split manifest, every image and truth.jsonl. "
                    "Prints one line per problem (file:line: id=ID: reason). "
                    "Exit 0 when clean, 1 when problems were found, 2 for usage errors.")
    p.add_argument("data", metavar="DATA", help="dataset directory")
    p.add_argument("--no-images", action="store_true", help="do not open the image files")
    p.add_argument("--json", action="store_true", help="print the problems as a JSON list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = validate_dataset(args.data, check_images=not args.no_images, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps([p.to_dict() for p in report.problems], indent=2, ensure_ascii=False))
    else:
        for problem in report.problems:
            print(problem)
    rows = ", ".join(f"{name} {n}" for name, n in report.counts.items()) or "no rows"
    if report.ok:
        print(f"capro validate: {args.data}: OK ({rows})", file=sys.stderr)
        return 0
    print(f"capro validate: {args.data}: {len(report.problems)} problems ({rows})", file=sys.stderr)
    return 1
