"""Multi-label and open-set scenarios on simulated data: CAPro vs its baselines.

    python benchmarks/scenarios.py --work /tmp/scenarios          # both, ~20 min each on 2 cores
    python benchmarks/scenarios.py --work /tmp/scenarios --only openset

Multi-label: 2x2 Fashion-MNIST mosaics (``simulate(multilabel=True)``); CAPro (preset ``cpu``,
stage 1 + stage 2 + stage 3b) against a plain BCE baseline with the same backbone budget (stage 1
only for E1 + E2 + E3 epochs, no bootstrapping, no instance or reconstruction loss). Reports the
multi-label metrics (§5.1) of CAPro's stage-1 model, CAPro's final model and the baseline.

Open set: trained on 5 of the 10 classes (``simulate(open_set=True)``), evaluated on
``openset_test.jsonl`` (all 10 classes) with max-softmax rejection: mean C-F1 over 100 thresholds
and the (C-R, C-P) area of the stage-1 (vanilla) model and of CAPro's final model.

Every run goes through ``capro.engine.runner.run_pipeline`` (finished steps are skipped on rerun).
Results: ``benchmarks/results/multilabel.json`` and ``benchmarks/results/openset.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from capro.cli.demo import MULTILABEL_OVERRIDES
from capro.config import load_config
from capro.data.simulate import simulate
from capro.engine.runner import run_pipeline
from capro.utils.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {"train_size": 2000, "val_size": 200, "test_size": 500, "image_size": 32}
COMMON = ["model.backbone=simple_cnn", "data.workers=0", "data.image_size=32", "model.queue=256"]


def _budget() -> int:
    cfg = load_config(preset="cpu")
    return cfg.stage1.epochs + cfg.stage2.epochs + cfg.stage3.epochs


BASELINE = [f"stage1.epochs={_budget()}", "stage1.w_inst=0", "stage1.w_recn=0", "stage2.epochs=0",
            "method.bootstrap=none"]


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


def multilabel(work: Path) -> dict:
    data = _data(work, "ml", multilabel=True)
    capro, t_capro = _run(data, work / "ml_capro", MULTILABEL_OVERRIDES)
    bce, t_bce = _run(data, work / "ml_bce", BASELINE)
    split = next(iter(capro["eval"]))
    out = {
        "scenario": "multilabel", "data": {**SIZES, "profile": "web", "seed": 0}, "split": split,
        "config": {"preset": "cpu", "common": COMMON, "capro": MULTILABEL_OVERRIDES, "bce": BASELINE},
        "capro_stage1": capro["stages"]["stage1"]["eval"][split],
        "capro_final": capro["eval"][split],
        "bce_baseline": bce["eval"][split],
        "seconds": {"capro": round(t_capro, 1), "bce": round(t_bce, 1)},
        "machine": _machine(),
    }
    out["capro_minus_bce_mAP_macro"] = out["capro_final"]["mAP_macro"] - out["bce_baseline"]["mAP_macro"]
    write_json(RESULTS / "multilabel.json", out)
    return out


def openset(work: Path) -> dict:
    data = _data(work, "os", open_set=True)
    capro, t_capro = _run(data, work / "os_capro", [])
    split = next(iter(capro["eval"]))
    out = {
        "scenario": "openset", "data": {**SIZES, "profile": "web", "seed": 0, "known_classes": 5},
        "config": {"preset": "cpu", "common": COMMON},
        "vanilla_stage1": {**capro["stages"]["stage1"]["openset"],
                           "closed_top1": capro["stages"]["stage1"]["eval"][split]["top1"]},
        "capro_final": {**capro["openset"], "closed_top1": capro["eval"][split]["top1"]},
        "seconds": round(t_capro, 1),
        "machine": _machine(),
    }
    write_json(RESULTS / "openset.json", out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="directory for the datasets and runs")
    ap.add_argument("--only", choices=("multilabel", "openset"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.only != "openset":
        print(multilabel(args.work))
    if args.only != "multilabel":
        print(openset(args.work))


if __name__ == "__main__":
    main()
