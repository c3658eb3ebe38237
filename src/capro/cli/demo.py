"""``capro demo [--out DIR] [--quick] [--resume]``: simulate a web dataset and run CAPro on it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from capro.cli.run import summary_lines

# Simulated data and config of each demo size; the full demo fits 15 minutes on 2 CPU cores,
# --quick about 3.
DEMOS = {
    "full": {"data": {"train_size": 10000, "val_size": 500, "test_size": 2000, "image_size": 32},
             "preset": "cpu", "overrides": ["model.backbone=resnet18"]},
    "quick": {"data": {"train_size": 1000, "val_size": 200, "test_size": 500, "image_size": 16},
              "preset": "tiny", "overrides": ["model.backbone=simple_cnn"]},
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="simulate a web-crawled dataset and run the whole pipeline on it",
        description="Simulate a noisy web dataset from Fashion-MNIST (DIR/data), run every CAPro "
                    "step on it (DIR/run), evaluate, and print stage-1 vs final accuracy, the "
                    "cleaning counts and the anchor precision. About 15 minutes on 2 CPU cores; "
                    "--quick about 3.")
    p.add_argument("--out", default="capro-demo", metavar="DIR", help="output directory (default capro-demo)")
    p.add_argument("--quick", action="store_true", help="a smaller dataset and model (about 3 minutes)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def _simulated(data: Path, params: dict) -> bool:
    """The dataset at ``data`` was simulated with ``params`` (so it is reused)."""
    from capro.utils.io import read_json

    try:
        info = read_json(data / "simulation.json")
    except (OSError, ValueError):
        return False
    return (info.get("sizes") == {"train": params["train_size"], "val": params["val_size"],
                                  "test": params["test_size"]}
            and info.get("image_size") == params["image_size"] and info.get("profile") == "web"
            and info.get("seed") == 0 and (data / "train.jsonl").is_file())


def table(metrics: dict) -> list[str]:
    """Stage-1 vs final top-1, cleaning counts and anchor precision."""
    stages = metrics.get("stages", {})
    split = next(iter(metrics.get("eval", {})), "test")

    def top1(name: str) -> str:
        m = stages.get(name, {}).get("eval", {}).get(split)
        return f"{100 * m['top1']:.1f}%" if m else "-"

    final = metrics.get("eval", {}).get(split)
    c = metrics.get("cleaning", {})
    tt = metrics.get("train_truth", {})
    ap = tt.get("anchor_precision")
    nd = tt.get("noise_detection") or {}
    rows = [
        ("stage-1 (vanilla) top-1", top1("stage1")),
        ("stage-2 (CAPro) top-1", top1("stage2")),
        ("final top-1", f"{100 * final['top1']:.1f}%" if final else "-"),
        ("kept / relabelled / removed", f"{c.get('kept', 0)} / {c.get('relabeled', 0)} / {c.get('removed', 0)}"),
        ("anchor precision", f"{100 * ap:.1f}%" if ap is not None else "-"),
        ("noise detection P / R", f"{100 * nd['precision']:.1f}% / {100 * nd['recall']:.1f}%" if nd else "-"),
    ]
    width = max(len(k) for k, _ in rows)
    return [f"{k:<{width}}  {v}" for k, v in rows]


def run(args: argparse.Namespace) -> int:
    from capro.config import load_config
    from capro.data.simulate import simulate
    from capro.engine.distributed import shutdown
    from capro.engine.runner import run_pipeline

    demo = DEMOS["quick" if args.quick else "full"]
    out = Path(args.out)
    data, run_dir = out / "data", out / "run"
    t0 = time.perf_counter()
    if not _simulated(data, demo["data"]):
        print(f"capro demo: simulating a web-crawled dataset into {data}", file=sys.stderr)
        simulate(data, profile="web", seed=0, progress=sys.stderr.isatty(), **demo["data"])
    overrides = list(demo["overrides"]) + ([f"device={args.device}"] if args.device else [])
    cfg = load_config(preset=demo["preset"], overrides=overrides)
    try:
        metrics = run_pipeline(data, run_dir, cfg, resume=args.resume)
    finally:
        shutdown()
    if metrics:
        print("\n".join(table(metrics)))
        print("\n".join(summary_lines(metrics, str(run_dir))[-1:]))
        print(f"data: {data}   run: {run_dir}   ({time.perf_counter() - t0:.0f} s)")
    return 0
