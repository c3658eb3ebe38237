"""``capro demo [--out DIR] [--quick] [--multilabel | --open-set] [--baseline] [--resume]``:
simulate a web dataset (single-label, multi-label mosaics or an open-set split) and run CAPro on
it; with ``--baseline`` also plain cross-entropy on the same data and epochs, printed beside it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from capro.cli.run import summary_lines

LONG_SCHEDULE = ["stage1.epochs=10", "stage2.epochs=110", "stage3.epochs=2",
                 "stage2.frozen_encoder_epoch=1", "stage2.init_proto_epoch=1", "stage2.start_clean_epoch=1"]
"""The regime where label noise hurts (BENCHMARKS.md, "The long regime"): 120 backbone epochs, so
that plain CE has time to fit the wrong labels; prototypes from stage 2's second epoch, online
cleaning from its third."""

# Simulated data and config of each demo size. The full single-label demo is the quality
# benchmark's ``long`` size (2,000 images, 16 px, the small CNN, 10 + 110 + 2 epochs): with
# ``--baseline`` about 6 minutes of wall time on two CPU cores (measured on a fresh clone,
# 2026-12-05, README); CAPro alone about 4.5 (stage 2 trains under both keep rules, D21). The
# multi-label and open-set scenarios keep the cpu preset's short schedule on 10,000 images at
# 32 px (mosaics need the pixels) and one stage 2, about 12 minutes; --quick under 1.
DEMOS = {
    "full": {"data": {"train_size": 2000, "val_size": 500, "test_size": 1000, "image_size": 16},
             "preset": "cpu",
             "overrides": ["data.image_size=16", "model.backbone=simple_cnn", "model.queue=256",
                           "data.workers=0", "train.curve_splits=[test]", *LONG_SCHEDULE]},
    # one stage 2 under the paper's keep rule: the stricter rule D21 may choose ranked unknown
    # images worse in the open-set demo (BENCHMARKS.md, "Multi-label and open-set")
    "scenario": {"data": {"train_size": 10000, "val_size": 500, "test_size": 2000, "image_size": 32},
                 "preset": "cpu", "overrides": ["model.backbone=resnet18", "method.keep_rules=[]"]},
    "quick": {"data": {"train_size": 1000, "val_size": 200, "test_size": 500, "image_size": 16},
              "preset": "tiny", "overrides": ["model.backbone=simple_cnn"]},
}


MULTILABEL_OVERRIDES = ["stage3.mixup=false", "stage1.w_inst=0.1", "stage2.w_inst=0.1", "match.score=distance",
                        "match.min_margin=null", "graph.self_weight=0"]
"""Multi-label runs from scratch: mix-up is single-label only, and the instance loss at weight 1
swamps the per-entry BCE gradients of a small backbone trained from scratch (stage-1 macro mAP
54.6 vs 72.3 without it on the 2k-mosaic scenario; the paper starts NUS-WIDE from an
ImageNet-pretrained ResNet-50). 0.1 was chosen on validation mAP (BENCHMARKS.md). The paper's
anchor ranking: the margin-aware one (D13) is measured on single-label data only."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="simulate a web-crawled dataset and run the whole pipeline on it",
        description="Simulate a noisy web dataset from Fashion-MNIST (DIR/data), run every CAPro "
                    "step on it (DIR/run), evaluate, and print stage-1 vs final accuracy, the "
                    "cleaning counts and the anchor precision. It trains 120 epochs, long enough "
                    "for plain training to fit the wrong labels (--baseline shows it). About 4.5 "
                    "minutes on two CPU cores, 6 with --baseline; --quick under 1.")
    p.add_argument("--out", metavar="DIR",
                   help="output directory (default capro-demo, capro-demo-multilabel or capro-demo-open-set)")
    p.add_argument("--quick", action="store_true", help="a smaller dataset and a few epochs (under a minute)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--multilabel", action="store_true",
                      help="multi-label scenario (2x2 mosaics, NUS-WIDE-like): prints macro/micro "
                           "mAP, C-F1 and O-F1, stage 1 vs final")
    kind.add_argument("--open-set", action="store_true",
                      help="open-set scenario (train on 5 of 10 classes, test on all): prints mean "
                           "C-F1 and PR-AUC, stage 1 (vanilla) vs final")
    p.add_argument("--baseline", action="store_true",
                   help="also train plain cross-entropy on the same data for the same number of "
                        "backbone epochs (DIR/baseline) and print it beside CAPro (single-label)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def _simulated(data: Path, params: dict, *, multilabel: bool = False, open_set: bool = False) -> bool:
    """The dataset at ``data`` was simulated with ``params`` and scenario (so it is reused)."""
    from capro.utils.io import read_json

    try:
        info = read_json(data / "simulation.json")
    except (OSError, ValueError):
        return False
    return (info.get("sizes") == {"train": params["train_size"], "val": params["val_size"],
                                  "test": params["test_size"]}
            and info.get("image_size") == params["image_size"] and info.get("profile") == "web"
            and info.get("seed") == 0 and bool(info.get("multilabel")) == multilabel
            and bool(info.get("open_set")) == open_set and (data / "train.jsonl").is_file())


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


def _stage_metrics(metrics: dict, section: str) -> tuple[dict | None, dict | None]:
    """(stage-1, final) metrics of ``section`` ("eval" on the first split, or "openset")."""
    stage1 = metrics.get("stages", {}).get("stage1", {})
    if section == "openset":
        return stage1.get("openset"), metrics.get("openset")
    split = next(iter(metrics.get("eval", {})), "test")
    return stage1.get("eval", {}).get(split), metrics.get("eval", {}).get(split)


def scenario_table(metrics: dict, scenario: str) -> list[str]:
    """Stage-1 (vanilla) vs final metrics of the multi-label or open-set scenario."""
    if scenario == "multilabel":
        first, final = _stage_metrics(metrics, "eval")
        keys = [("macro mAP", "mAP_macro", "{:.2f}"), ("micro mAP", "mAP_micro", "{:.2f}"),
                ("C-F1", "CF1", "{:.2f}"), ("O-F1", "OF1", "{:.2f}")]
    else:
        first, final = _stage_metrics(metrics, "openset")
        keys = [("mean C-F1", "mean_cf1", "{:.2f}"), ("PR-AUC", "pr_auc", "{:.4f}"), ("AUROC", "auroc", "{:.4f}")]

    def cell(m: dict | None, key: str, fmt: str) -> str:
        return fmt.format(m[key]) if m and m.get(key) is not None else "-"

    rows = [("", "stage-1 (vanilla)", "final (CAPro)")]
    rows += [(label, cell(first, key, fmt), cell(final, key, fmt)) for label, key, fmt in keys]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return [f"{a:<{w0}}  {b:>{w1}}  {c:>13}" for a, b, c in rows]


def baseline_overrides(cfg) -> list[str]:
    """Plain cross-entropy with the backbone epochs of ``cfg``'s stages 1 and 2 (what the quality
    benchmark's ``ce`` row trains), as dotted overrides over the same preset. It keeps its last
    epoch, so the table shows what training to the end does to it; its best-validation epoch is
    read from its per-epoch log."""
    return [f"stage1.epochs={cfg.stage1.epochs + cfg.stage2.epochs}", "stage2.epochs=0",
            "stage3.epochs=0", "method.bootstrap=none", "stage1.w_inst=0", "stage1.w_recn=0",
            "train.keep=last"]


def best_val_reading(log: dict[str, list[float | None]] | None, split: str,
                     val: str = "val") -> tuple[int, float] | None:
    """(epoch, ``split`` top-1) at the best ``val`` top-1 of a per-epoch log (first of ties);
    None when the log has no such columns."""
    if not log or f"{val}_top1" not in log or f"{split}_top1" not in log:
        return None
    scored = [(v, -i) for i, v in enumerate(log[f"{val}_top1"]) if v is not None]
    if not scored:
        return None
    epoch = -max(scored)[1]
    score = log[f"{split}_top1"][epoch]
    return None if score is None else (epoch, score)


def baseline_table(capro: dict, ce: dict, ce_log: dict[str, list[float | None]] | None = None) -> list[str]:
    """Plain CE (at its last epoch, and at its best-validation epoch when ``ce_log``, its stage-1
    ``log.csv`` columns, scored the evaluation split) vs CAPro: test top-1 and the share of noisy
    training rows each final model fits."""
    split = next(iter(capro.get("eval", {})), "test")

    def top1(m: dict) -> str:
        e = m.get("eval", {}).get(split)
        return f"{100 * e['top1']:.1f}%" if e else "-"

    def fit(m: dict) -> str:
        f = (m.get("train_truth") or {}).get("memorisation") or {}
        return f"{100 * f['noisy_fit']:.1f}%" if f.get("noisy_fit") is not None else "-"

    rows = [("", f"{split} top-1", "noisy rows fitted"), ("plain CE, last epoch", top1(ce), fit(ce))]
    best = best_val_reading(ce_log, split)
    if best is not None:
        rows.append((f"plain CE, best-val epoch ({best[0] + 1})", f"{100 * best[1]:.1f}%", "-"))
    rows.append(("CAPro", top1(capro), fit(capro)))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}" for a, b, c in rows]


def run(args: argparse.Namespace) -> int:
    from capro.config import load_config
    from capro.data.simulate import simulate
    from capro.engine.distributed import shutdown
    from capro.engine.runner import run_pipeline
    from capro.utils.progress import progress, set_progress_stream

    scenario = "multilabel" if args.multilabel else "open-set" if args.open_set else None
    # stdout redirected (`capro demo > log`): the progress lines go there as they happen,
    # one per epoch and stage, instead of bars on the terminal
    quiet = False if not sys.stdout.isatty() else None
    if quiet is False:
        set_progress_stream(sys.stdout)
    demo = DEMOS["quick" if args.quick else "full" if scenario is None else "scenario"]
    out = Path(args.out or ("capro-demo" + (f"-{scenario}" if scenario else "")))
    data, run_dir = out / "data", out / "run"
    t0 = time.perf_counter()
    kind = {"multilabel": args.multilabel, "open_set": args.open_set}
    if not _simulated(data, demo["data"], **kind):
        progress(f"capro demo: simulating a web-crawled dataset into {data}")
        simulate(data, profile="web", seed=0, progress=sys.stderr.isatty(), **kind, **demo["data"])
    overrides = list(demo["overrides"]) + ([f"device={args.device}"] if args.device else [])
    if args.multilabel:
        overrides += MULTILABEL_OVERRIDES
    cfg = load_config(preset=demo["preset"], overrides=overrides)
    baseline = args.baseline and scenario is None
    if args.baseline and not baseline:
        print("capro demo: --baseline compares single-label runs only; ignored", file=sys.stderr)
    ce_metrics: dict = {}
    try:
        metrics = run_pipeline(data, run_dir, cfg, resume=args.resume, progress=quiet)
        if baseline:
            progress(f"capro demo: training the plain cross-entropy baseline into {out / 'baseline'}")
            ce_cfg = load_config(preset=demo["preset"], overrides=overrides + baseline_overrides(cfg))
            ce_metrics = run_pipeline(data, out / "baseline", ce_cfg, resume=args.resume, progress=quiet)
    finally:
        shutdown()
        set_progress_stream(None)
    if metrics:
        print("\n".join(table(metrics) if scenario is None else scenario_table(metrics, scenario)))
        if ce_metrics:
            from capro.report.rundir import read_log

            ce_log = read_log(out / "baseline" / "stage1" / "log.csv")
            print("\n".join(baseline_table(metrics, ce_metrics, ce_log)))
        print("\n".join(summary_lines(metrics, str(run_dir))[-1:]))
        print(f"data: {data}   run: {run_dir}   ({time.perf_counter() - t0:.0f} s)")
    return 0
