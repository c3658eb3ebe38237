"""``capro clean RUN``: offline noise cleaning (stage 3a) with a run's stage-2 model."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "clean", help="offline cleaning: per-sample verdicts in RUN/stage3a/samples.jsonl",
        description="Score every training image with the run's stage-2 model and apply the "
                    "keep / relabel rules once (stage 3a). Writes RUN/stage3a/samples.jsonl "
                    "(one verdict per sample) and summary.json. The next `capro run` on RUN "
                    "recomputes stage 3a and the fine-tune from the run's config.")
    p.add_argument("run", metavar="RUN", help="run directory with a finished stage 2")
    p.add_argument("--data", metavar="DIR", help="dataset directory (default: the run's)")
    p.add_argument("--pseudo-th", type=float, help="relabel threshold tau (default: the run's); the same as "
                   "clean.pseudo_th=T")
    p.add_argument("--protect-anchors", action=argparse.BooleanOptionalAction, default=None,
                   help="never remove or relabel anchors")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="clean.* and method.* config keys for this cleaning, e.g. clean.pseudo_th=0.8 "
                        "method.alpha=0.3 (the rest of the run's config.yaml stays)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capro.engine.runner import clean_run

    counts = clean_run(args.run, data=args.data, pseudo_th=args.pseudo_th,
                       protect_anchors=args.protect_anchors, device=args.device, overrides=args.overrides)
    print(f"capro clean: kept {counts['kept']}, relabelled {counts['relabeled']}, removed "
          f"{counts['removed']} -> {args.run}/stage3a/samples.jsonl")
    return 0
