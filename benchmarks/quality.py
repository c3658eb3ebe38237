"""Quality benchmark: every row of benchmark.md on simulated web data, over several seeds.

    python benchmarks/quality.py --quick                       # minutes: 1 seed, tiny data
    python benchmarks/quality.py --profile web --seeds 0 1 2   # the full table (hours on 2 cores)
    python benchmarks/quality.py --size long --profile hard    # the long-training regime
    python benchmarks/quality.py --table-only                  # re-aggregate and rewrite BENCHMARKS.md

For each seed s the simulator writes a dataset with seed s, and every row trains on it with seed s.
Rows are configs over preset ``cpu`` (see ``common.row_overrides``) run by
``capro.engine.runner.run_pipeline``. The ``cleanlab`` row follows cleanlab's documented recipe:
K-fold out-of-fold predicted probabilities from ``ce`` models (each fold trained by the engine on
a dataset directory holding the other folds' rows, its ``images`` a symlink to the original) ->
``cleanlab.filter.find_label_issues`` -> ``ce`` retrained on the kept rows. A sample counts as
flagged by cleanlab when it is a label issue. The ``oracle`` row trains ``ce`` on only the rows
whose true label (``truth.jsonl``) is their web label: the ceiling. Each result also carries the
per-epoch validation and test curves, the test top-1 at the best-validation epoch (``ce-best`` is
``ce`` read there) and the share of noisy training rows the final model fits (``noisy_fit``).

Results: one JSON per (profile, row, seed) in ``benchmarks/results/quality/<size>/<profile>/``
(a finished one is skipped on rerun, so an interrupted benchmark continues where it stopped), the
aggregate ``benchmarks/results/quality_<profile>.json`` (``quality_quick_<profile>.json`` for
``--quick``), tables between markers in ``BENCHMARKS.md`` and ``benchmarks/quality_<profile>.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    LONG_COLUMNS,
    NOVAL,
    RESULTS,
    ROWS,
    RUN_ORDER,
    SHARED_STEPS,
    SIZES,
    Size,
    aggregate,
    best_validation,
    commands_markdown,
    gap_closed,
    machine_info,
    profile_key,
    quality_table,
    read_curves,
    row_command,
    row_config,
    row_metrics,
    row_overrides,
    size_dict,
    size_tag,
    stage_epochs,
    stage_table,
    update_markdown,
    without_val,
)

from capro.data.simulate import PROFILES  # noqa: E402
from capro.engine.signals import EXIT_PREEMPTED, Preempted  # noqa: E402
from capro.utils.io import atomic_write, link_tree, read_json, read_jsonl, write_json  # noqa: E402

DEFAULT_WORK = Path(os.environ.get("CAPRO_BENCH_WORK", "/tmp/capro-bench"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_once(path: Path, label: str, run: Callable[[], dict[str, Any]],
             done: Callable[[dict[str, Any]], str]) -> dict[str, Any] | None:
    """One row of a resumable benchmark: skip it when ``path`` exists (None), else ``run()`` it,
    write its result to ``path`` atomically and log ``label: done(result)``."""
    if path.is_file():
        log(f"{label}: done already")
        return None
    log(f"{label}: running")
    res = run()
    write_json(path, res)
    log(f"{label}: {done(res)}")
    return res


def result_path(results: Path, size: Size, profile: str, row: str, seed: int) -> Path:
    return results / "quality" / size.name / profile / f"{row}_seed{seed}.json"


def aggregate_path(results: Path, size: Size, profile: str) -> Path:
    prefix = "quality" if size.name == "full" else f"quality_{size.name}"
    return results / f"{prefix}_{profile}.json"


def ensure_data(work: Path, size: Size, profile: str, seed: int) -> Path:
    """Simulate the dataset of (profile, seed) at ``size`` unless an identical one exists."""
    from capro.data.simulate import simulate

    data = work / size_tag(size) / profile / f"seed{seed}" / "data"
    params = {"profile": profile, "seed": seed, "train_size": size.train_size,
              "val_size": size.val_size, "test_size": size.test_size, "image_size": size.image_size}
    marker = data.parent / "data.json"
    if marker.is_file() and read_json(marker) == params and (data / "simulation.json").is_file():
        return data
    log(f"simulating {profile} seed {seed} into {data}")
    simulate(data, progress=False, **params)
    write_json(marker, params)
    return data


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a directory tree as hard links (files are replaced atomically, never edited in place)."""
    link_tree(src, dst)


def reuse_donor_steps(row: str, run_dir: Path) -> list[str]:
    """Copy the donor row's finished steps into ``run_dir`` (see ``common.SHARED_STEPS``)."""
    if row not in SHARED_STEPS:
        return []
    donor, steps = SHARED_STEPS[row]
    donor_dir = run_dir.parent / donor
    if not (donor_dir / "metrics.json").is_file():
        return []
    copied = []
    for step in steps:
        if (donor_dir / step).is_dir() and not (run_dir / step).exists():
            _link_tree(donor_dir / step, run_dir / step)
            copied.append(step)
    return copied


def stage_seconds(metrics: dict[str, Any]) -> dict[str, float]:
    """{stage: seconds} from a ``metrics.json``; the text encoding is its own stage."""
    out = {}
    for name, info in metrics.get("stages", {}).items():
        out[name] = float(info.get("seconds", 0.0))
        if "text_seconds" in info and "text" not in metrics.get("stages", {}):
            out["text"] = float(info["text_seconds"])
    return out


def curve_fields(run_dir: Path) -> dict[str, Any]:
    """{"curves": per-epoch val/test top-1, "best": the best-validation reading} of a run."""
    curves = read_curves(run_dir)
    return {"curves": curves, "best": best_validation(curves)}


def fit_to_web_labels(run_dir: Path, data: Path) -> dict[str, Any]:
    """:func:`capro.eval.noise.memorisation` of a run's final model on ALL of ``data``'s training
    rows (for runs trained on a subset, which carry no truth of their own)."""
    import torch

    from capro.data.datasets import EvalDataset
    from capro.data.layout import read_classes
    from capro.data.validate import load_split_for_run
    from capro.engine.evaluate import collect
    from capro.engine.runner import load_run_model
    from capro.eval.noise import memorisation

    model, _, cfg, _ = load_run_model(run_dir)
    classes = read_classes(data)
    records = load_split_for_run(data, "train", run_dir=None, skip_bad=False, check_images=False,
                                 classes=classes).records
    ds = EvalDataset(data, records, len(classes), size=cfg.data.image_size, channels=cfg.data.channels)
    logits, web = collect(model, ds, device=torch.device("cpu"), batch_size=cfg.train.eval_batch_size)
    true = _true_labels(data, [r.id for r in records], [c.name for c in classes])
    return memorisation(logits.argmax(axis=1), web, true)


def with_curves(out: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """``out["metrics"]`` gains the best-validation reading of ``run_dir``; ``out`` its curves."""
    fields = curve_fields(run_dir)
    out["metrics"].update(top1_best=fields["best"]["top1_best"], best_epoch=fields["best"]["best_epoch"])
    out.update(fields)
    return out


def run_oracle_row(size: Size, seed: int, data: Path, base: Path) -> dict[str, Any]:
    """``ce`` on only the truly clean training rows (the ceiling)."""
    from capro.engine.runner import run_pipeline

    rows = read_jsonl(data / "train.jsonl")
    from capro.data.validate import read_truth

    truth = read_truth(data)
    clean = [r for r in rows if truth[r["id"]]["true_label"] == r["label"]]
    sub = _subset_dataset(data, base / "data", clean, eval_splits=True)
    cfg = row_config("oracle", size, seed)
    metrics = run_pipeline(sub, base / "run", cfg, resume=True, progress=False)
    out = {"metrics": row_metrics(metrics), "stages": stage_seconds(metrics), "shared_steps": [],
           "oracle": {"clean_rows": len(clean), "of": len(rows)}, "epochs": stage_epochs(cfg),
           "engine_metrics": metrics}
    out["metrics"]["noisy_fit"] = fit_to_web_labels(base / "run", data)["noisy_fit"]
    return with_curves(out, base / "run")


def run_engine_row(row: str, size: Size, seed: int, data: Path, run_dir: Path) -> dict[str, Any]:
    from capro.engine.runner import run_pipeline

    run_dir.mkdir(parents=True, exist_ok=True)
    shared = reuse_donor_steps(row, run_dir)
    if shared:
        log(f"  reusing {', '.join(shared)} from {SHARED_STEPS[row][0]}")
    cfg = row_config(row, size, seed)
    t0 = time.perf_counter()
    metrics = run_pipeline(data, run_dir, cfg, resume=True, progress=False)
    wall = time.perf_counter() - t0
    stages = stage_seconds(metrics)
    if shared and "text" in shared:
        donor = read_json(run_dir.parent / SHARED_STEPS[row][0] / "metrics.json")
        if "text" in stage_seconds(donor):
            stages["text"] = stage_seconds(donor)["text"]
    return with_curves({"metrics": row_metrics(metrics), "stages": stages, "shared_steps": shared,
                        "wall_seconds_this_process": wall, "epochs": stage_epochs(cfg),
                        "engine_metrics": metrics}, run_dir)


def _subset_dataset(src: Path, dst: Path, rows: list[dict], *, eval_splits: bool) -> Path:
    """A dataset directory holding ``rows`` as its training split; images link to ``src``'s."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "classes.json", dst / "classes.json")
    if not (dst / "images").exists():
        (dst / "images").symlink_to((src / "images").resolve(), target_is_directory=True)
    # rewritten only when it changes: its mtime is part of the runs' fingerprints, so an
    # interrupted row resumes instead of restarting
    train = dst / "train.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not train.is_file() or train.read_text(encoding="utf-8") != text:
        with atomic_write(train) as fh:
            fh.write(text)
    for split in ("val", "test"):
        if eval_splits and (src / f"{split}.jsonl").is_file():
            shutil.copy2(src / f"{split}.jsonl", dst / f"{split}.jsonl")
    return dst


def _true_labels(data: Path, ids: list[str], names: list[str]) -> np.ndarray:
    """[N] true class ids of the training rows (-1 out of distribution)."""
    from capro.data.validate import read_truth

    truth = read_truth(data)
    index = {n: i for i, n in enumerate(names)}
    return np.array([index.get(truth[i]["true_label"], -1) if truth[i]["true_label"] else -1
                     for i in ids], dtype=np.int64)


def run_cleanlab_row(size: Size, seed: int, data: Path, base: Path) -> dict[str, Any]:
    """cleanlab's recipe with the engine's ``ce`` training; see the module docstring."""
    import torch
    from cleanlab.filter import find_label_issues
    from sklearn.model_selection import StratifiedKFold

    from capro.data.datasets import EvalDataset
    from capro.data.layout import read_classes
    from capro.data.validate import load_split_for_run
    from capro.engine.evaluate import collect
    from capro.engine.runner import load_run_model, run_pipeline
    from capro.eval.noise import noise_detection

    cfg = row_config("cleanlab", size, seed)
    classes = read_classes(data)
    names = [c.name for c in classes]
    rows = read_jsonl(data / "train.jsonl")
    records = load_split_for_run(data, "train", run_dir=None, skip_bad=False, check_images=False,
                                 classes=classes).records
    if [r["id"] for r in rows] != [r.id for r in records]:
        raise RuntimeError(f"{data}/train.jsonl: rows and parsed records differ; validate the data")
    labels = np.array([r.label for r in records], dtype=np.int64)
    stages: dict[str, float] = {}
    pred = np.zeros((len(rows), len(classes)), dtype=np.float64)
    folds = StratifiedKFold(n_splits=size.folds, shuffle=True, random_state=seed)
    for k, (train_idx, held_idx) in enumerate(folds.split(np.zeros(len(labels)), labels)):
        fold = base / f"fold{k}"
        fold_data = _subset_dataset(data, fold / "data", [rows[i] for i in train_idx], eval_splits=False)
        # a fold's data holds no evaluation split: nothing to score per epoch
        fold_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, curve_splits=[]))
        metrics = run_pipeline(fold_data, fold / "run", fold_cfg, resume=True, progress=False)
        t0 = time.perf_counter()
        model, _, run_cfg, _ = load_run_model(fold / "run")
        held = EvalDataset(data, [records[i] for i in held_idx], len(classes),
                           size=run_cfg.data.image_size, channels=run_cfg.data.channels)
        logits, _ = collect(model, held, device=torch.device("cpu"), batch_size=cfg.train.eval_batch_size,
                            workers=cfg.data.workers)
        pred[held_idx] = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
        stages[f"fold{k}"] = sum(stage_seconds(metrics).values()) + time.perf_counter() - t0
        log(f"  cleanlab fold {k}: {stages[f'fold{k}']:.0f} s")
    t0 = time.perf_counter()
    issues = find_label_issues(labels, pred, filter_by="prune_by_noise_rate")
    stages["find_label_issues"] = time.perf_counter() - t0
    keep = np.flatnonzero(~issues)
    kept = _subset_dataset(data, base / "kept" / "data", [rows[i] for i in keep], eval_splits=True)
    metrics = run_pipeline(kept, base / "kept" / "run", cfg, resume=True, progress=False)
    stages["retrain"] = sum(stage_seconds(metrics).values())
    true = _true_labels(data, [r.id for r in records], names)
    nd = noise_detection(labels, true, issues)
    out = row_metrics(metrics)
    out.update(noise_precision=nd["precision"], noise_recall=nd["recall"], noise_f1=nd["f1"],
               seconds=sum(stages.values()),
               noisy_fit=fit_to_web_labels(base / "kept" / "run", data)["noisy_fit"])
    return with_curves({"metrics": out, "stages": stages, "shared_steps": [],
            "cleanlab": {"folds": size.folds, "filter_by": "prune_by_noise_rate",
                         "label_issues": int(issues.sum()), "kept": int(keep.size),
                         "oof_accuracy_vs_web_labels": float((pred.argmax(1) == labels).mean()),
                         "noise_detection": nd},
            "epochs": {"per_fold_stage1": cfg.stage1.epochs, "retrain_stage1": cfg.stage1.epochs},
            "engine_metrics": metrics}, base / "kept" / "run")


def run_one(row: str, size: Size, key: str, seed: int, work: Path) -> dict[str, Any]:
    """One (row, seed) on the data of results key ``key`` (a profile, ``-noval``: without ``val.jsonl``)."""
    profile, noval = profile_key(key)
    data = ensure_data(work, size, profile, seed)
    if noval:
        data = without_val(data)
    run_dir = work / size_tag(size) / key / f"seed{seed}" / row
    t0 = time.perf_counter()
    if row == "cleanlab":
        res = run_cleanlab_row(size, seed, data, run_dir)
    elif row == "oracle":
        res = run_oracle_row(size, seed, data, run_dir)
    else:
        res = run_engine_row(row, size, seed, data, run_dir)
    return {"row": row, "profile": key, "seed": seed, "size": size_dict(size),
            "overrides": row_overrides(row, size, seed), "preset": "cpu",
            "command": row_command(row, size, seed, profile=key), "run_dir": str(run_dir),
            "wall_seconds": time.perf_counter() - t0, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(), **res}


def load_results(results: Path, size: Size, profile: str) -> list[dict[str, Any]]:
    """The finished (row, seed) results of ``size`` and ``profile`` whose size spec still matches."""
    folder = results / "quality" / size.name / profile
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        r = read_json(path)
        if r.get("size") == size_dict(size):
            out.append(r)
    return out


def gap_line(agg: dict[str, Any]) -> str:
    """One line: how much of the ``ce`` -> ``oracle`` gap each method row closes (means)."""
    parts = []
    for row in ("capro", "capro-ft", "cleanlab", "ce-best"):
        for key, when in (("top1", "last"), ("top1_best", "best-val")):
            g = gap_closed(agg, row, key=key)
            if g is not None and not (row == "ce-best" and key == "top1_best"):
                parts.append(f"`{row}` ({when}) {g * 100:.0f} %")
    seeds = sorted(set(agg.get("ce", {}).get("seeds", [])) & set(agg.get("oracle", {}).get("seeds", [])))
    return (f"Share of the gap from `ce` to `oracle` closed, on the seeds where both ran ({seeds}); each "
            "reading against `ce` and `oracle` read the same way: " + (", ".join(parts) or "–"))


def write_outputs(results: Path, size: Size, profile: str, *, markdown: bool) -> dict[str, Any]:
    """Aggregate, write ``quality_<profile>.json``, the plot and the BENCHMARKS.md tables."""
    rs = load_results(results, size, profile)
    agg = aggregate(rs)
    summary = {"profile": profile, "size": size_dict(size), "aggregate": agg,
               "commands": {r: row_command(r, size, 0, profile=profile) for r in size.rows},
               "finished": sorted([r["row"], r["seed"]] for r in rs), "machine": machine_info()}
    write_json(aggregate_path(results, size, profile), summary)
    if markdown and agg:
        from plots import plot_quality, plot_test_curves

        tag = f"quality-{size.name}-{profile}"
        png = Path(__file__).resolve().parent / f"{tag.replace('-', '_')}.png"
        plot_quality(agg, png, title=f"{profile} profile, {size.name} size ({size.train_size} train images)")
        if size.name in ("long", "pretrained"):
            plot_test_curves(rs, png.with_name(f"{png.stem}_curves.png"),
                             title=f"{profile} profile, {size.name} size: test top-1 over epochs")
            both = set.intersection(*[{r["seed"] for r in rs if r["row"] == row} for row in ("ce", "oracle")])
            matched = aggregate([r for r in rs if r["seed"] in both])
            update_markdown(tag, quality_table(agg, LONG_COLUMNS) + "\n\n" + gap_line(matched))
        else:
            update_markdown(tag, quality_table(agg))
        update_markdown(f"{tag}-stages", stage_table(agg))
        ran = tuple(dict.fromkeys([*size.rows, *(r for r in ROWS if r in agg)]))
        update_markdown(f"{tag}-commands", commands_markdown(size, profile, ran))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny data and epochs, seed 0 (minutes)")
    p.add_argument("--size", choices=list(SIZES), default="full",
                   help="quick | full (the short regime) | long (training until CE fits the noise)")
    p.add_argument("--profile", nargs="+", default=["web"], choices=sorted(PROFILES))
    p.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2 (quick: 0)")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), help="default: the size's rows")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK,
                   help=f"where data and runs go (default {DEFAULT_WORK}, or $CAPRO_BENCH_WORK)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--without-val", action="store_true",
                   help="train on copies without val.jsonl (a user's default: held-out training rows select); "
                        "results under <profile>-noval")
    p.add_argument("--table-only", action="store_true", help="only re-aggregate existing results")
    p.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md or plots")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice, the core count)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    size = SIZES["quick" if args.quick else args.size]
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    failures = 0
    if args.without_val:
        args.profile = [f"{p}{NOVAL}" for p in args.profile]
    if not args.table_only:
        rows = [r for r in RUN_ORDER if r in (args.rows or size.rows)]
        for profile in args.profile:
            for seed in seeds:
                for row in rows:
                    out = result_path(args.results, size, profile, row, seed)
                    if out.is_file() and read_json(out).get("size") == size_dict(size):
                        log(f"{profile} {row} seed {seed}: done already ({out})")
                        continue
                    log(f"{profile} {row} seed {seed}: running")
                    try:
                        res = run_one(row, size, profile, seed, args.work)
                    except Preempted as exc:  # SIGTERM / SIGINT: the run checkpointed; stop here
                        log(f"{profile} {row} seed {seed}: {exc}")
                        return EXIT_PREEMPTED
                    except Exception:  # one failed row must not stop the others
                        failures += 1
                        log(f"{profile} {row} seed {seed}: FAILED\n{traceback.format_exc()}")
                        continue
                    write_json(out, res)
                    m = res["metrics"]
                    log(f"{profile} {row} seed {seed}: top-1 {m['top1']:.4f} in {res['wall_seconds']:.0f} s")
                    write_outputs(args.results, size, profile, markdown=not args.no_markdown)
    for profile in args.profile:
        summary = write_outputs(args.results, size, profile, markdown=not args.no_markdown)
        print(json.dumps({r: {k: v["mean"] for k, v in a["metrics"].items()}
                          for r, a in summary["aggregate"].items()}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
