"""``capro predict RUN IMAGE...``: top-k classes with scores for image files."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="classify image files with a run's final model",
        description="Print the top-k classes and their scores (softmax; sigmoid for multi-label) "
                    "for each IMAGE. With --threshold T a single-label answer whose top score is "
                    "below T is 'unknown' (open set; --open-set takes T from the run's openset.threshold); "
                    "multi-label answers list classes >= T (0.5).")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--threshold", type=float, help="answer 'unknown' below this top score")
    p.add_argument("--open-set", action="store_true",
                   help="answer 'unknown' below the run's openset.threshold (unless --threshold is given)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print JSON lines, one per image")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capro.engine.predict import predict_images
    from capro.errors import UsageError

    if args.topk < 1:
        raise UsageError("--topk must be at least 1")
    for r in predict_images(args.run, args.images, topk=args.topk, threshold=args.threshold,
                            open_set=args.open_set, device=args.device):
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
            continue
        pred = r["prediction"] if isinstance(r["prediction"], str) else ", ".join(r["prediction"]) or "-"
        tops = "  ".join(f"{t['label']} {t['score']:.3f}" for t in r["top"])
        print(f"{r['image']}: {pred}   ({tops})")
    return 0
