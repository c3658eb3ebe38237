"""Mixing D21's two stage-2 branches instead of choosing one: a check on the validation seeds.

    python benchmarks/studies/branch_mix.py            # after no_val.py --seed 100 101 --variants with_val

Without a clean validation split, D21's choice between the ``paper`` and ``top1`` branches is
made on 200 noisy held-out rows and is close to a coin flip. A run that needs no choice would
mix the branches instead. For each validation-seed run of ``no_val.py`` with ``val.jsonl`` this
scores, on its clean validation and test splits: each branch's best-validation weights, their
uniform weight average (parameters and batch-norm statistics; both branches start from the same
stage-1 weights) and the average of their softmax outputs (two networks at inference). Writes
``benchmarks/results/no_val_branch_mix.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suites' shared code
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import RESULTS, SIZES, git_commit, machine_info  # noqa: E402
from quality import DEFAULT_WORK, size_tag  # noqa: E402

from capro.utils.io import read_json, write_json  # noqa: E402

OUT = RESULTS / "no_val_branch_mix.json"
BRANCHES = ("paper", "top1")


def weight_average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform average of state dicts with the same keys: floating tensors averaged (in float32,
    cast back), others (batch counters) taken from the first."""
    out = {}
    for key, first in states[0].items():
        if torch.is_floating_point(first):
            out[key] = (sum(s[key].float() for s in states) / len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def softmax_mix(logits: list[np.ndarray]) -> np.ndarray:
    """[N, C] mean of the softmax outputs of each [N, C] logits array."""
    return np.mean([torch.softmax(torch.from_numpy(lo).float(), dim=1).numpy() for lo in logits], axis=0)


def mix_run(run_dir: Path, data: Path) -> dict:
    """Top-1 of each branch, their weight average and their softmax mix on ``val`` and ``test``."""
    from capro.data.batched import make_eval_dataset
    from capro.data.validate import load_split_for_run
    from capro.engine.checkpoint import load_checkpoint
    from capro.engine.evaluate import collect
    from capro.engine.runner import load_run_model
    from capro.engine.stages import load_weights

    model, classes, cfg, _ = load_run_model(run_dir, "cpu")
    states = {b: load_checkpoint(run_dir / "online_rules" / b / "stage2" / "best.pt")["model"] for b in BRANCHES}
    states["weight average"] = weight_average([states[b] for b in BRANCHES])
    out = {}
    for split in ("val", "test"):
        records = load_split_for_run(data, split, run_dir=None, skip_bad=False, check_images=False,
                                     classes=classes).records
        ds = make_eval_dataset(cfg, data, records, len(classes), multi_label=False, cache_dir=run_dir / "cache")
        logits, target = {}, None
        for name, state in states.items():
            load_weights(model, state)
            logits[name], target = collect(model.eval(), ds, device=torch.device("cpu"),
                                           batch_size=cfg.train.eval_batch_size)
        logits["softmax mix"] = softmax_mix([logits[b] for b in BRANCHES])
        out[split] = {name: float((lo.argmax(1) == target).mean()) for name, lo in logits.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--seed", type=int, nargs="+", default=[100, 101])
    args = p.parse_args(argv)
    if set(args.seed) & {0, 1, 2}:
        p.error("a check on validation seeds; seeds 0-2 are the tables'")
    out = read_json(OUT) if OUT.is_file() else {}
    for seed in args.seed:
        for profile in ("web", "hard"):
            key = f"{profile}/seed{seed}"
            base = args.work / size_tag(SIZES["long"]) / profile / f"seed{seed}"
            run_dir = base / "noval-with_val"
            if key in out:
                continue
            if not (run_dir / "model.pt").is_file():
                raise SystemExit(f"{run_dir}: no finished run; run python benchmarks/studies/no_val.py --profile "
                                 f"{profile} --seed {seed} --variants with_val first")
            out[key] = {**mix_run(run_dir, base / "data"), "commit": git_commit(), "machine": machine_info(),
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            write_json(OUT, out)
    names = [*BRANCHES, "weight average", "softmax mix"]
    print("| run | " + " | ".join(names) + " |\n|" + "---|" * (len(names) + 1))
    for key, res in sorted(out.items()):
        print(f"| {key} | " + " | ".join(f"{100 * res['val'][n]:.1f} / {100 * res['test'][n]:.1f}" for n in names) + " |")
    print("| **mean** | " + " | ".join(f"**{100 * np.mean([r['val'][n] for r in out.values()]):.2f}** / "
                                      f"{100 * np.mean([r['test'][n] for r in out.values()]):.2f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
