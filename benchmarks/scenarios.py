"""Multi-label and open-set scenarios on simulated data: CAPro vs its baselines.

    python benchmarks/scenarios.py --work /tmp/scenarios          # both, ~20 min each on 2 cores
    python benchmarks/scenarios.py --work /tmp/scenarios --only openset
    python benchmarks/scenarios.py --work /tmp/scenarios --only multilabel --long   # the long regime

Multi-label: 2x2 Fashion-MNIST mosaics (``simulate(multilabel=True)``); CAPro (preset ``cpu``,
stage 1 + stage 2 + stage 3b) against a plain BCE baseline with the same backbone budget (stage 1
only for E1 + E2 + E3 epochs, no bootstrapping, no instance or reconstruction loss). Reports the
multi-label metrics (§5.1) of CAPro's stage-1 model, CAPro's final model and the baseline.

Open set: trained on 5 of the 10 classes (``simulate(open_set=True)``), evaluated on
``openset_test.jsonl`` (all 10 classes) with max-softmax rejection: mean C-F1 over 100 thresholds
and the (C-R, C-P) area of the stage-1 (vanilla) model and of CAPro's final model.

``--long`` runs the multi-label scenario in the regime where plain BCE fits the noisy tags (the
quality benchmark's ``long`` size): CAPro 10 vanilla + 110 CAPro epochs (+ 2 frozen-encoder
epochs), BCE 122 epochs, every stage keeping its last epoch, with validation and test macro mAP
after every epoch; each model is read at its last epoch and at its best-validation epoch
(``benchmarks/results/multilabel_long.json``).

Every run goes through ``capro.engine.runner.run_pipeline`` (finished steps are skipped on rerun).
Results: ``benchmarks/results/multilabel.json`` and ``benchmarks/results/openset.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from common import git_commit

from capro.cli.demo import MULTILABEL_OVERRIDES
from capro.config import load_config
from capro.data.simulate import simulate
from capro.engine.runner import run_pipeline
from capro.utils.io import read_json, write_json

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {"train_size": 2000, "val_size": 200, "test_size": 500, "image_size": 32}
COMMON = ["model.backbone=simple_cnn", "data.workers=0", "data.image_size=32", "model.queue=256"]


def _budget(overrides: tuple[str, ...] = ()) -> int:
    cfg = load_config(preset="cpu", overrides=list(overrides))
    return cfg.stage1.epochs + cfg.stage2.epochs + cfg.stage3.epochs


def _baseline(overrides: tuple[str, ...] = ()) -> list[str]:
    """Plain BCE for every epoch CAPro trains with ``overrides`` (stage 3 included)."""
    return [f"stage1.epochs={_budget(overrides)}", "stage1.w_inst=0", "stage1.w_recn=0",
            "stage2.epochs=0", "method.bootstrap=none"]


BASELINE = _baseline()

LONG_TRAIN = ("train.keep=last", "train.curve_splits=[test]")
LONG = ("stage1.epochs=10", "stage2.epochs=110", "stage3.epochs=2", "stage2.frozen_encoder_epoch=1",
        "stage2.init_proto_epoch=1", "stage2.start_clean_epoch=1", *LONG_TRAIN)
"""The long regime (``benchmarks/common.py`` ``SIZES["long"]``) for the multi-label scenario."""


def _data(work: Path, name: str, **kind: bool) -> Path:
    root = work / f"{name}_data"
    if not (root / "simulation.json").is_file():
        simulate(root, profile="web", seed=0, progress=False, **kind, **SIZES)
    return root


def _run(data: Path, run: Path, overrides: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    m = run_pipeline(data, run, load_config(preset="cpu", overrides=[*COMMON, *overrides]), progress=False)
    return m, time.perf_counter() - t0


def _machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def _map_curves(run: Path) -> dict:
    """Per-epoch validation / test macro mAP of a run's training stages and the best-validation
    reading: {"stage", "val", "test", "best_epoch", "test_at_best_val", "val_best"}."""
    import csv

    out: dict = {"stage": [], "val": [], "test": []}
    for stage in ("stage1", "stage2", "stage3b"):
        path = run / stage / "log.csv"
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", newline="") as fh:
            for r in csv.DictReader(fh):
                out["stage"].append(stage)
                out["val"].append(float(r["val_mAP_macro"]) if r.get("val_mAP_macro") else None)
                out["test"].append(float(r["test_mAP_macro"]) if r.get("test_mAP_macro") else None)
    scored = [(v, -i) for i, v in enumerate(out["val"]) if v is not None]
    if scored:
        v, neg = max(scored)
        out.update(best_epoch=-neg, val_best=v, test_at_best_val=out["test"][-neg])
    return out


def _seconds(metrics: dict) -> float:
    """Training and evaluation seconds of a run, from its ``metrics.json`` (resumes included)."""
    return round(sum(float(s.get("seconds", 0.0)) for s in metrics.get("stages", {}).values()), 1)


def _recorded_bce(path: Path, bce_ov: list[str]) -> dict:
    """The BCE side of an earlier result file, when it ran exactly this baseline on this data."""
    rec = read_json(path)
    if rec.get("config", {}).get("bce") != bce_ov or rec.get("config", {}).get("common") != COMMON \
            or {k: v for k, v in rec.get("data", {}).items() if k in SIZES} != SIZES:
        raise SystemExit(f"{path}: its BCE run had another config or data; train it again (drop --bce-from)")
    return rec


def multilabel(work: Path, *, long: bool = False, part: str | None = None, bce_from: Path | None = None) -> dict:
    """CAPro vs BCE on the mosaics; ``part`` ``capro`` or ``bce`` trains only that model (two
    processes can share the work) and writes nothing; a call without ``part`` reuses both.
    ``bce_from``: take the BCE figures from that earlier result file instead of training BCE
    (checked to be the same baseline on the same data; the output names the file and its commit)."""
    data = _data(work, "ml", multilabel=True)
    regime = LONG if long else ()
    capro_ov = [*MULTILABEL_OVERRIDES, *regime]
    bce_ov = [*_baseline(regime), *(LONG_TRAIN if long else ())]
    tag = "ml_long" if long else "ml"
    if part is not None:
        _run(data, work / f"{tag}_{part}", capro_ov if part == "capro" else bce_ov)
        return {}
    capro, _ = _run(data, work / f"{tag}_capro", capro_ov)
    split = next(iter(capro["eval"]))
    if bce_from is not None:
        rec = _recorded_bce(bce_from, bce_ov)
        bce_eval, t_bce, bce_curves = rec["bce_baseline"], rec["seconds"]["bce"], rec.get("curves", {}).get("bce")
    else:
        bce, _ = _run(data, work / f"{tag}_bce", bce_ov)
        bce_eval, t_bce, bce_curves = bce["eval"][split], _seconds(bce), _map_curves(work / f"{tag}_bce")
    out = {
        "scenario": "multilabel_long" if long else "multilabel",
        "data": {**SIZES, "profile": "web", "seed": 0}, "split": split,
        "config": {"preset": "cpu", "common": COMMON, "capro": capro_ov, "bce": bce_ov},
        "capro_stage1": capro["stages"]["stage1"]["eval"][split],
        "capro_final": capro["eval"][split],
        "bce_baseline": bce_eval,
        "seconds": {"capro": round(_seconds(capro), 1), "bce": round(t_bce, 1)},
        "machine": _machine(),
    }
    if bce_from is not None:
        out["bce_from"] = {"file": bce_from.name, "commit": rec.get("commit")}
    out["capro_minus_bce_mAP_macro"] = out["capro_final"]["mAP_macro"] - out["bce_baseline"]["mAP_macro"]
    if long:
        out["curves"] = {"capro": _map_curves(work / f"{tag}_capro"), "bce": bce_curves}
    out["commit"] = git_commit()
    write_json(RESULTS / ("multilabel_long.json" if long else "multilabel.json"), out)
    return out


OPENSET = ["method.keep_rules=[]"]
"""One stage 2 under the paper's keep rule, as ``capro demo --open-set`` and README advise: the
stricter rule D21 may choose ranks unknown images worse (BENCHMARKS.md, "D21 and open-set
rejection")."""


def openset(work: Path) -> dict:
    data = _data(work, "os", open_set=True)
    capro, t_capro = _run(data, work / "os_capro", OPENSET)
    split = next(iter(capro["eval"]))
    out = {
        "scenario": "openset", "data": {**SIZES, "profile": "web", "seed": 0, "known_classes": 5},
        "config": {"preset": "cpu", "common": COMMON, "capro": OPENSET},
        "vanilla_stage1": {**capro["stages"]["stage1"]["openset"],
                           "closed_top1": capro["stages"]["stage1"]["eval"][split]["top1"]},
        "capro_final": {**capro["openset"], "closed_top1": capro["eval"][split]["top1"]},
        "seconds": round(t_capro, 1),
        "machine": _machine(),
        "commit": git_commit(),
    }
    write_json(RESULTS / "openset.json", out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="directory for the datasets and runs")
    ap.add_argument("--only", choices=("multilabel", "openset"))
    ap.add_argument("--long", action="store_true", help="multi-label in the long-training regime")
    ap.add_argument("--part", choices=("capro", "bce"),
                    help="multi-label: train only this model (run both parts, then once without)")
    ap.add_argument("--bce-from", type=Path,
                    help="multi-label: reuse the BCE side of this earlier result file (same baseline and data)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.only != "openset":
        print(multilabel(args.work, long=args.long, part=args.part, bce_from=args.bce_from))
    if args.only != "multilabel":
        print(openset(args.work))


if __name__ == "__main__":
    main()
