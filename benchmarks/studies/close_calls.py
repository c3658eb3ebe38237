"""How close were the choices the recorded runs made on validation? D21's rule and D18's guard.

    python benchmarks/studies/close_calls.py          # after no_val.py --profile web hard --seed 0 100 101

For each run of ``no_val.py`` (with ``val.jsonl``, and without it: 200 held-out rows scored
against web labels) this scores the candidates of two choices on the split that made them, row by
row: D21's two stage-2 branches (their ``best.pt``) and D18's fine-tune against the stage-2
weights it started from. :func:`capro.engine.selection.close_call` then tests each choice's lead
over the rows where the two candidates disagree (McNemar; runs made since record it in
``metrics.json`` themselves).
Writes ``benchmarks/results/close_calls.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suites' shared code
from common import RESULTS, SIZES, git_commit, machine_info  # noqa: E402
from quality import DEFAULT_WORK, size_tag  # noqa: E402

from capro.utils.io import read_json, write_json  # noqa: E402

OUT = RESULTS / "close_calls.json"
VARIANTS = ("with_val", "without_val_any")


def _selecting_records(run_dir: Path, data: Path, classes):
    """The records of the split that selected in ``run_dir``: ``val.jsonl``, or its held-out rows."""
    from capro.data.validate import load_split_for_run
    from capro.engine.validation import held_out_ids

    held = held_out_ids(run_dir)
    if not held:
        return load_split_for_run(data, "val", run_dir=None, skip_bad=False, check_images=False,
                                  classes=classes).records
    train = load_split_for_run(data, "train", run_dir=None, skip_bad=False, check_images=False, classes=classes)
    return [r for r in train.records if r.id in held]


def run_choices(run_dir: Path, data: Path) -> dict:
    """{"split", "online_rule": close_call, "fine_tune_guard": close_call} of one finished run (a
    choice it did not make is left out)."""
    from capro.data.batched import make_eval_dataset
    from capro.engine.checkpoint import load_checkpoint
    from capro.engine.runner import load_run_model, stage2_weights
    from capro.engine.selection import EpochScorer, close_call
    from capro.engine.stages import load_weights

    model, classes, cfg, _ = load_run_model(run_dir, "cpu")
    records = _selecting_records(run_dir, data, classes)
    ds = make_eval_dataset(cfg, data, records, len(classes), multi_label=False, cache_dir=run_dir / "cache")
    scorer = EpochScorer({"select": ds}, "select", multi_label=False, batch_size=cfg.train.eval_batch_size)

    def correct(path: Path):
        load_weights(model, load_checkpoint(path)["model"])
        return scorer.select_rows(model)[1]  # the engine's per-row answers

    metrics = read_json(run_dir / "metrics.json")
    out = {"split": (metrics.get("validation") or {}).get("split")}
    rule = metrics.get("online_rule")
    if rule and len(rule["rules"]) > 1:
        scores = {r: x["score"] for r, x in rule["rules"].items()}
        answers = {r: correct(run_dir / "online_rules" / r / "stage2" / "best.pt") for r in scores}
        out["online_rule"] = {"chosen": rule["chosen"], "scores": scores,
                              **close_call(scores, rule["chosen"], answers)}
    guard = metrics.get("fine_tune_guard")
    if guard:
        both = {"stage3b": correct(run_dir / "stage3b" / "checkpoint.pt"), "stage2": correct(stage2_weights(run_dir, cfg))}
        out["fine_tune_guard"] = {"kept": guard["kept"], **close_call(
            {"stage3b": guard["stage3b"], "stage2": guard["stage2"]}, guard["kept"], both)}
    return out


def _cell(c: dict, what: str) -> str:
    return (f"{c[what]} by {100 * c['margin']:.1f} (p = {c['p_value']:.2f}; "
            f"{c['disagree']} rows decide){' **close**' if c['close_call'] else ''}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--seed", type=int, nargs="+", default=[0, 100, 101])
    args = p.parse_args(argv)
    out = read_json(OUT) if OUT.is_file() else {}
    for seed in args.seed:
        for profile in ("web", "hard"):
            base = args.work / size_tag(SIZES["long"]) / profile / f"seed{seed}"
            for variant in VARIANTS:
                key = f"{profile}/seed{seed}/{variant}"
                run_dir = base / f"noval-{variant}"
                if key in out:
                    continue
                if not (run_dir / "model.pt").is_file():
                    raise SystemExit(f"{run_dir}: no finished run; run python benchmarks/studies/no_val.py --profile "
                                     f"{profile} --seed {seed} --variants {variant} first")
                out[key] = {**run_choices(run_dir, base / "data"), "commit": git_commit(),
                            "machine": machine_info(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                write_json(OUT, out)
    print("| run | split | D21: kept, lead (percentage points) | D18: kept, lead |\n|---|---|---|---|")
    for key, res in sorted(out.items()):
        print(f"| {key} | {res['split']} | {_cell(res['online_rule'], 'chosen')} | "
              f"{_cell(res['fine_tune_guard'], 'kept')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
