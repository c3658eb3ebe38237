"""Users without a clean validation split: the long protocol with and without ``val.jsonl``.

    python benchmarks/studies/no_val.py --profile web hard --seed 0
    python benchmarks/studies/no_val.py --seed 100 101 --variants without_val_text without_val_any
    python benchmarks/studies/no_val.py --seed 100 101 --variants without_val_any --val-curve   # D23's choice
    python benchmarks/studies/no_val.py --windows 1 3 5 7 9 11 15 21
    python benchmarks/studies/no_val.py --windows 15 --tolerance 0.005    # the earliest epoch within 0.005
    python benchmarks/studies/no_val.py --windows 15 --branches paper     # D21 kept to its first rule
    python benchmarks/studies/no_val.py --clean-windows 1 3 5 9 15 21   # the same with a clean val.jsonl
    python benchmarks/studies/no_val.py --refit    # replay: the held-out rows returned to training

For each profile, ``capro-ft`` of the ``long`` size with the defaults users get (``train.keep=best``,
D12, ``train.val_split=auto``) runs twice on the same simulated data: once with its clean
``val.jsonl``, once on a copy without it, where ``auto`` holds out a share of the training rows
and selects epochs on their web labels. The runs reuse the ``quality.py`` data directory. Writes
``benchmarks/results/no_val.json`` (resumable per profile and variant).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suites' shared code
import numpy as np  # noqa: E402
from common import RESULTS, SIZES, machine_info, row_overrides, without_val  # noqa: E402
from quality import DEFAULT_WORK, ensure_data, log, size_tag  # noqa: E402

from capro.utils.io import read_json, write_json  # noqa: E402

OUT = RESULTS / "no_val.json"
OUT_CURVES = RESULTS / "no_val_curves.json"
"""``--val-curve`` runs: per-epoch curves of runs without ``val.jsonl`` scored on it (validation seeds)."""


VARIANTS = {"with_val": [], "without_val_text": ["train.holdout_from=text"],
            "without_val_any": ["train.holdout_from=any"],
            "without_val_any5": ["train.holdout_from=any", "train.holdout=0.05"],
            "without_val_any20": ["train.holdout_from=any", "train.holdout=0.2"]}
"""Run variants: with ``val.jsonl``; without it, the held-out rows drawn from text-verified rows
(D20, opt-in) or from any row (the default; the results recorded as ``without_val`` used it), 10 %
of the rows, 5 % (``without_val_any5``) or 20 % (``without_val_any20``). A run without
``val.jsonl`` is also scored on it once it has finished (``val_top1_after``: it never saw the
split), so that validation seeds can choose."""


def _curves(run_dir: Path) -> dict:
    """Every stage-2 branch's per-epoch selecting and curve scores: {branch: {column: [...]}}
    (``stage2``: the published copy of the chosen branch)."""
    import csv

    out = {}
    for log_csv in sorted(run_dir.glob("online_rules/*/stage2/log.csv")) + [run_dir / "stage2" / "log.csv"]:
        if not log_csv.is_file():
            continue
        rows = list(csv.DictReader(log_csv.open()))
        cols = [c for c in rows[0] if c.endswith("_top1")]
        branch = "stage2" if log_csv.parent.parent == run_dir else log_csv.parent.parent.name
        out[branch] = {c: [float(r[c]) for r in rows] for c in cols}
    return out


def chosen_by_window(curves: dict, window: int | None, *, select: str = "holdout_top1",
                     read: str = "test_top1", tolerance: float = 0.0,
                     branches: list[str] | None = None) -> tuple[str, int, float]:
    """What stage 2 would have handed on under D21 and a selecting window (None: each branch's
    last epoch): (branch, epoch, the ``read`` score there). ``curves``: one run's per-branch
    curves (:func:`_curves`); epochs and branches are chosen on ``select`` (a ``--val-curve`` run:
    ``holdout_top1``, its ``test_top1`` being clean validation; a run with ``val.jsonl``:
    ``val_top1``, read on ``test_top1``). ``tolerance``: within a branch, the earliest epoch whose
    mean is within it of the branch's best (branches still compared on their best). ``branches``:
    only these compete (e.g. ``["paper"]``: D21 falling back to its first rule)."""
    best = None
    for branch, c in curves.items():
        if branch == "stage2" or (branches and branch not in branches):  # stage2: the published copy
            continue
        held = np.asarray(c[select], dtype=float)
        if window is None:
            epoch, score = len(held) - 1, held[-1]
        else:
            w = min(window, len(held))  # D23: only full windows compete
            means = np.array([held[i + 1 - w:i + 1].mean() if i + 1 >= w else -np.inf for i in range(len(held))])
            score = means.max()
            epoch = int(np.argmax(means >= score - tolerance))
        if best is None or score > best[0]:
            best = (score, branch, epoch, float(c[read][epoch]))
    return best[1], best[2], best[3]


def window_table(windows: list[int], runs: dict | None = None, *, select: str = "holdout_top1",
                 tolerance: float = 0.0, branches: list[str] | None = None) -> str:
    """Markdown: the ``test_top1`` curve's score at stage 2's pick per window (columns) and run
    (rows); ``runs`` {key: result with ``curves``}, default the ``--val-curve`` runs (whose
    ``test_top1`` is clean validation)."""
    runs = read_json(OUT_CURVES) if runs is None else runs
    cols = [*windows, None]
    head = ["run", *[f"w = {w}" if w else "last epoch" for w in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    picks = {w: [] for w in cols}
    for key, res in sorted(runs.items()):
        cells = []
        for w in cols:
            branch, epoch, val = chosen_by_window(res["curves"], w, select=select, tolerance=tolerance,
                                                  branches=branches)
            picks[w].append(val)
            cells.append(f"{100 * val:.1f} ({branch} {epoch})")
        lines.append(f"| {key.split('/without')[0].split('/with_val')[0]} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{100 * np.mean(picks[w]):.2f}**" for w in cols) + " |")
    return "\n".join(lines)


def _run_dir(work: Path, key: str) -> Path:
    profile, seed, variant = key.split("/")[:3]
    return work / size_tag(SIZES["long"]) / profile / seed / f"noval-{variant}"


def _filled(work: Path, keys: list[str]) -> dict:
    """``no_val.json``'s rows ``keys``, with what older rows did not record read from their run
    directories under ``work`` and written back: per-branch curves, and for a run without
    ``val.jsonl`` D21's and D18's choices (``online_rule``, ``fine_tune_guard``)."""
    out = read_json(OUT) if OUT.is_file() else {}
    for key in keys:
        res, run_dir = out[key], _run_dir(work, key)
        want = ("curves",) if key.endswith("/with_val") else ("curves", "online_rule", "fine_tune_guard")
        if all(f in res for f in want):
            continue
        if not (run_dir / "metrics.json").is_file():
            raise SystemExit(f"{key}: not recorded and no run in {run_dir}; run it again "
                             "(python benchmarks/studies/no_val.py --profile P --seed S --variants V)")
        metrics = read_json(run_dir / "metrics.json")
        for f in want:
            res[f] = _curves(run_dir) if f == "curves" else metrics.get(f)
        write_json(OUT, out)
    return {key: out[key] for key in keys}


def clean_window_runs(work: Path) -> dict:
    """The validation seeds' runs with ``val.jsonl`` (selecting on it, test scored every epoch),
    with their per-branch curves: {key: result}. A window for a clean split is read on their test
    split."""
    out = read_json(OUT) if OUT.is_file() else {}
    keys = [k for k in out if k.endswith("/with_val") and int(k.split("/")[1].removeprefix("seed")) not in (0, 1, 2)]
    return _filled(work, keys)


def refit_replay(work: Path, variant: str = "without_val_any") -> str:
    """Markdown: what returning the held-out rows would have given. A run without ``val.jsonl``
    chose D21's rule and stage 2's epoch on its held-out rows; trained again on every row with
    those choices, its stage 2 is the run with ``val.jsonl``'s branch of that rule (same rows,
    seed and config; ``val.jsonl`` only scores) read at that epoch. Test top-1 of stage 2 at
    the chosen epoch, of the final model (after the fine-tune and D18's guard) and of the run with
    ``val.jsonl``; for validation seeds also clean validation top-1 (the run without ``val.jsonl``:
    its final model, scored on it afterwards)."""
    out = read_json(OUT) if OUT.is_file() else {}
    pairs = sorted(k.removesuffix("/with_val") for k in out if k.endswith("/with_val")
                   and k.replace("/with_val", f"/{variant}") in out)
    lines = ["| run | rule, epoch chosen on held-out rows | test: without, stage 2 | test: refit, stage 2 | "
             "test: without, final | test: with, final | validation: without, final | validation: refit, "
             "stage 2 |", "|---|---|---|---|---|---|---|---|"]
    for run in pairs:
        rows = _filled(work, [f"{run}/with_val", f"{run}/{variant}"])
        with_val, held = rows[f"{run}/with_val"], rows[f"{run}/{variant}"]
        rule = held["online_rule"]["chosen"]
        epoch = held["online_rule"]["rules"][rule]["best_epoch"]
        curve = with_val["curves"][rule]
        validation = int(run.split("/")[1].removeprefix("seed")) not in (0, 1, 2)
        val = (f"{100 * held['val_top1_after']:.1f} | {100 * curve['val_top1'][epoch]:.1f}" if validation
               else "— | —")
        lines.append(f"| {run} | {rule} {epoch} | {100 * held['curves'][rule]['test_top1'][epoch]:.1f} | "
                     f"{100 * curve['test_top1'][epoch]:.1f} | {100 * held['top1']:.1f} | "
                     f"{100 * with_val['top1']:.1f} | {val} |")
    return "\n".join(lines)


def run_variant(data: Path, run_dir: Path, seed: int, extra: list[str] | None = None) -> dict:
    from capro.config import load_config
    from capro.engine.runner import run_pipeline

    size = SIZES["long"]
    over = [o for o in row_overrides("capro-ft", size, seed) if o != "train.keep=last"] + list(extra or [])
    cfg = load_config(preset="cpu", overrides=over)
    t0 = time.perf_counter()
    m = run_pipeline(data, run_dir, cfg, resume=True, progress=False)
    return {"top1": m["eval"]["test"]["top1"], "validation": m.get("validation"),
            "online_rule": m.get("online_rule"), "fine_tune_guard": m.get("fine_tune_guard"),
            "stages": {s: {k: v for k, v in info.items() if k in ("best_epoch", "kept_epoch", "best_val")}
                       for s, info in m["stages"].items()},
            "overrides": over, "wall_seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", nargs="+", default=["web", "hard"], choices=["web", "hard"])
    p.add_argument("--seed", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--val-curve", action="store_true",
                   help="runs without val.jsonl score the clean val.jsonl after every epoch in place of "
                        "test (validation seeds only; keys end in /valcurve, per-epoch curves recorded)")
    p.add_argument("--windows", type=int, nargs="*",
                   help="print the table choosing D23's window from the --val-curve runs and exit")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="with --windows: hand on the earliest epoch whose mean is within this of the best")
    p.add_argument("--branches", nargs="+",
                   help="with --windows: only these D21 branches compete (e.g. paper: the first rule only)")
    p.add_argument("--clean-windows", type=int, nargs="*",
                   help="print the same table for a clean val.jsonl (validation seeds' runs with it, "
                        "selecting on val, read on test) and exit")
    p.add_argument("--refit", action="store_true",
                   help="print what returning the held-out rows (training again on every row with the "
                        "held-out run's choices) would have given, replayed from the recorded runs, and exit")
    args = p.parse_args(argv)
    if args.refit:
        print(refit_replay(args.work))
        return 0
    if args.windows:
        print(window_table(args.windows, tolerance=args.tolerance, branches=args.branches))
        return 0
    if args.clean_windows:
        print(window_table(args.clean_windows, clean_window_runs(args.work), select="val_top1"))
        return 0
    if args.val_curve and set(args.seed) & {0, 1, 2}:
        p.error("--val-curve scores the validation split of validation seeds; seeds 0-2 are the tables'")
    out_path = OUT_CURVES if args.val_curve else OUT
    for seed in args.seed:
        for profile in args.profile:
            data = ensure_data(args.work, SIZES["long"], profile, seed)
            for variant in args.variants:
                key = f"{profile}/seed{seed}/{variant}" + ("/valcurve" if args.val_curve else "")
                if args.val_curve and variant == "with_val":
                    continue
                out = read_json(out_path) if out_path.is_file() else {}
                if key in out:
                    log(f"{key}: done already")
                    continue
                log(f"{key}: running")
                if args.val_curve:
                    run_dir = data.parent / f"noval-{variant}-valcurve"
                    res = run_variant(without_val(data, val_as_test=True), run_dir, seed, VARIANTS[variant])
                    res["val_top1_after"], res["curves"] = res.pop("top1"), _curves(run_dir)
                    res["note"] = "test split replaced by the clean val.jsonl: top-1 figures are validation"
                elif variant == "with_val":
                    res = run_variant(data, data.parent / f"noval-{variant}", seed, VARIANTS[variant])
                    res["curves"] = _curves(data.parent / f"noval-{variant}")
                else:
                    res = run_variant(without_val(data), data.parent / f"noval-{variant}", seed, VARIANTS[variant])
                    from capro.engine.predict import evaluate_run

                    res["val_top1_after"] = evaluate_run(data.parent / f"noval-{variant}", data=data,
                                                         split="val")["top1"]
                    res["curves"] = _curves(data.parent / f"noval-{variant}")
                out = read_json(out_path) if out_path.is_file() else {}  # another process may have added rows
                out[key] = {**res, "machine": machine_info(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                write_json(out_path, out)
                log(f"{key}: top-1 {res.get('top1', res.get('val_top1_after')):.4f}")
    out = read_json(OUT) if OUT.is_file() else {}
    for seed in args.seed:
        for profile in args.profile:
            a = out.get(f"{profile}/seed{seed}/with_val")
            for variant in [v for v in VARIANTS if v != "with_val"] + ["without_val"]:
                b = out.get(f"{profile}/seed{seed}/{variant}")
                if a and b:
                    print(f"{profile} seed {seed} {variant}: with val.jsonl {100 * a['top1']:.1f} %, without "
                          f"{100 * b['top1']:.1f} % ({100 * (b['top1'] - a['top1']):+.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
