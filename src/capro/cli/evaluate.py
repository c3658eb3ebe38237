"""``capro evaluate RUN``: metrics of a run's final model on a split."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a run's final model (top-1/top-5, or multi-label metrics)",
        description="Evaluate RUN/model.pt deterministically (test transform) on a split of the "
                    "run's dataset or of --data. Single-label: top-1 and top-5; multi-label: "
                    "C-P/C-R/C-F1, O-P/O-R/O-F1 and micro/macro mAP. With --open-set: open-set "
                    "recognition on openset_test.jsonl (known classes plus unseen ones, max-softmax "
                    "rejection), mean C-F1 over 100 thresholds and the (C-R, C-P) area, also "
                    "written to RUN/metrics.json under \"openset\".")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--data", metavar="DIR", help="dataset directory (default: the run's)")
    p.add_argument("--split", default="test", help="manifest to evaluate on (default: test)")
    p.add_argument("--open-set", action="store_true",
                   help="evaluate open-set recognition on DATA/openset_test.jsonl instead of --split")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capro.engine.predict import evaluate_openset_run, evaluate_run

    if args.open_set:
        m = evaluate_openset_run(args.run, data=args.data, device=args.device)
    else:
        m = evaluate_run(args.run, data=args.data, split=args.split, device=args.device)
    if args.json:
        print(json.dumps(m, indent=2))
    elif args.open_set:
        auroc = "-" if m.get("auroc") is None else f"{m['auroc']:.4f}"
        print(f"open set: mean C-F1 {m['mean_cf1']:.2f}  PR-AUC {m['pr_auc']:.4f}  AUROC {auroc}  "
              f"(n={m['n']}, {m['n_unknown']} unknown)")
    elif "top1" in m:
        print(f"{m['split']}: top-1 {100 * m['top1']:.2f}%  top-5 {100 * m['top5']:.2f}%  (n={m['n']})")
    else:
        print(f"{m['split']}: " + "  ".join(f"{k} {v:.2f}" for k, v in m.items()
                                            if k not in ("split", "data", "n")) + f"  (n={m['n']})")
    return 0
