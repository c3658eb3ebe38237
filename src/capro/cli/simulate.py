"""``capro simulate``: write a simulated web dataset (Fashion-MNIST with web noise and text)."""

from __future__ import annotations

import argparse
from typing import Any

from capro.data.simulate import PROFILES, simulate
from capro.errors import UsageError


def parse_sets(items: list[str] | None) -> dict[str, float]:
    """``["semantic=0.2", ...]`` -> ``{"semantic": 0.2}``; a malformed item is a UsageError."""
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected NAME=VALUE, e.g. --set semantic=0.2")
        try:
            out[key.strip()] = float(value)
        except ValueError as exc:
            raise UsageError(f"--set {item!r}: {value!r} is not a number") from exc
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """A table of target vs realised rates, then the sizes."""
    rates, want = summary["rates"], summary["targets"]
    lines = [f"{'kind':<16}{'target':>9}{'realised':>10}"]
    for key, value in rates.items():
        target = f"{want[key]:.3f}" if key in want else "-"
        lines.append(f"{key:<16}{target:>9}{value:>10.3f}")
    sizes = ", ".join(f"{k} {v}" for k, v in summary["sizes"].items())
    lines.append(f"profile {summary['profile']}, seed {summary['seed']}; {sizes}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    summary = simulate(
        args.out, profile=args.profile, train_size=args.train_size, val_size=args.val_size,
        test_size=args.test_size, seed=args.seed, image_size=args.image_size,
        multilabel=args.multilabel, open_set=args.open_set, open_set_known=args.known,
        overrides=parse_sets(args.set), progress=not args.quiet, source=args.source,
    )
    print(format_summary(summary))
    print(f"wrote {args.out} (summary in {args.out}/simulation.json)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate", help="write a simulated web dataset from Fashion-MNIST (or your clean dataset)",
        description="Turn Fashion-MNIST (or a clean dataset in capro's layout) into a webly supervised "
                    "dataset: noisy web labels, web text, and the ground truth kept apart in truth.jsonl.")
    p.add_argument("--out", required=True, metavar="DIR", help="output dataset directory (new, empty, or a previous simulation)")
    p.add_argument("--source", metavar="DIR",
                   help="clean source dataset in capro's layout (default: Fashion-MNIST from the Debian package)")
    p.add_argument("--profile", default="web", choices=sorted(PROFILES), help="noise profile (default: web)")
    p.add_argument("--train-size", type=int, default=20000, metavar="N", help="training images (noisy web labels)")
    p.add_argument("--val-size", type=int, default=1000, metavar="N", help="validation images (clean labels)")
    p.add_argument("--test-size", type=int, default=2000, metavar="N", help="test images (clean labels)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the noise, the text and the draw")
    p.add_argument("--image-size", type=int, default=32, metavar="PX", help="side of the written images")
    p.add_argument("--multilabel", action="store_true", help="2x2 mosaics with noisy tag labels (NUS-WIDE-like)")
    p.add_argument("--open-set", action="store_true", help="train on the first --known classes; test on all")
    p.add_argument("--known", type=int, default=5, metavar="K", help="known classes with --open-set (default: 5)")
    p.add_argument("--set", action="append", metavar="NAME=RATE",
                   help="override a profile rate, e.g. --set semantic=0.2 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
