"""Speed-up of the passes over the data shared by the ranks (text encoding, features, offline
cleaning, evaluation) with 2 processes over 1, on this machine's CPU cores.

One reference run (short training: the passes cost the same whatever the weights) is copied,
its pass outputs removed, and finished by ``torchrun --nproc_per_node W`` for each W: stages
1, 2 and 3b are done and load, so only the passes (and rank 0's serial graph and matching) run.
Every process runs one thread (``OMP_NUM_THREADS=1``), so W processes use W cores. Each pass's
seconds come from the run's ``metrics.json``; the outputs of W = 2 are checked against W = 1.

    python benchmarks/studies/sharded_passes.py --train 4000            # -> results/sharded_passes.json
    python benchmarks/studies/sharded_passes.py table                   # BENCHMARKS.md block
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suites' shared code

from common import MARKDOWN, RESULTS, git_commit, machine_info, update_markdown

from capro.utils.io import write_json

PASSES = ("text", "features", "stage3a", "eval")
SERIAL = ("anchors",)
REMOVED = ["text", "features", "graph", "match", "anchors", "stage3a", "eval", "metrics.json", "model.pt"]
OUT = RESULTS / "sharded_passes.json"


def _run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - t0


def measure(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    data = work / "data"
    if not (data / "train.jsonl").is_file():
        from capro.data.simulate import simulate

        simulate(data, profile="web", seed=0, train_size=args.train, val_size=args.val,
                 test_size=args.test, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    sets = ["--preset", "cpu", "data.workers=0", "stage1.epochs=1", "stage2.epochs=1",
            "stage2.init_proto_epoch=0", "stage2.frozen_encoder_epoch=0", "stage3.epochs=1",
            "train.max_steps_per_epoch=2", "train.keep=last", "device=cpu"]
    ref = work / "ref"
    if not (ref / "metrics.json").is_file():
        _run([sys.executable, "-m", "capro", "run", str(data), "--out", str(ref), *sets], env, work / "ref.log")
    rows = {}
    for world in (1, 2):
        run = work / f"w{world}"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(ref, run)
        for name in REMOVED:
            path = run / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        wall = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                     "--master_addr", "127.0.0.1", "--master_port", str(29500 + world), "-m", "capro", "run",
                     str(data), "--out", str(run), *sets], env, work / f"w{world}.log")
        m = json.loads((run / "metrics.json").read_text())
        st = m["stages"]
        rows[world] = {"wall": round(wall, 1),
                       **{k: st[k]["seconds"] for k in (*PASSES, *SERIAL) if k in st},
                       "top1": m["eval"]["test"]["top1"]}
        print(world, rows[world], flush=True)
    a, b = work / "w1", work / "w2"
    same = {
        "texts_max_abs": float(np.abs(np.load(a / "text/texts.npy") - np.load(b / "text/texts.npy")).max()),
        "features_max_abs": float(np.abs(np.load(a / "features/stage1.npy") - np.load(b / "features/stage1.npy")).max()),
        "knn_ids_equal": bool(np.array_equal(np.load(a / "graph/knn_ids.npy"), np.load(b / "graph/knn_ids.npy"))),
        "anchors_equal": bool(np.array_equal(np.load(a / "anchors/anchors.npz")["domain"],
                                             np.load(b / "anchors/anchors.npz")["domain"])),
        "verdicts_equal": all(bool(np.array_equal(np.load(a / "stage3a/verdicts.npz")[k],
                                                  np.load(b / "stage3a/verdicts.npz")[k]))
                              for k in ("target", "clean", "relabeled")),
        "eval_equal": json.loads((a / "metrics.json").read_text())["eval"]
        == json.loads((b / "metrics.json").read_text())["eval"],
    }
    shared1 = sum(rows[1][k] for k in PASSES)
    shared2 = sum(rows[2][k] for k in PASSES)
    out = {"commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "machine": machine_info(),
           "n_train": args.train, "n_val": args.val, "n_test": args.test, "threads_per_process": 1,
           "rows": rows, "speedup": {k: round(rows[1][k] / rows[2][k], 2) for k in PASSES},
           "shared_seconds": {"1": round(shared1, 1), "2": round(shared2, 1)},
           "shared_speedup": round(shared1 / shared2, 2), "same": same}
    write_json(OUT, out)
    print(json.dumps(out["speedup"]), out["shared_speedup"], same, flush=True)
    return out


def table() -> str:
    r = json.loads(OUT.read_text())
    lines = [f"Measured {r['date']} at commit `{r['commit']}`: {r['n_train']:,} training images (32 px), "
             f"{r['n_val']:,} validation and {r['n_test']:,} test images, one thread per process.",
             "", "| pass | 1 process (s) | 2 processes (s) | speed-up |", "|---|---|---|---|"]
    for k in PASSES:
        lines.append(f"| {k} | {r['rows']['1'][k]:.1f} | {r['rows']['2'][k]:.1f} | {r['speedup'][k]:.2f}× |")
    lines.append(f"| **all shared passes** | {r['shared_seconds']['1']:.1f} | {r['shared_seconds']['2']:.1f} | "
                 f"**{r['shared_speedup']:.2f}×** |")
    for k in SERIAL:
        lines.append(f"| {k} (graph + matching, rank 0 only) | {r['rows']['1'][k]:.1f} | {r['rows']['2'][k]:.1f} | "
                     f"{r['rows']['1'][k] / r['rows']['2'][k]:.2f}× |")
    s = r["same"]
    lines += ["", f"Two processes against one: text embeddings within {s['texts_max_abs']:.1e}, features within "
              f"{s['features_max_abs']:.1e}; neighbour lists {'equal' if s['knn_ids_equal'] else 'DIFFERENT'}, "
              f"anchors {'equal' if s['anchors_equal'] else 'DIFFERENT'}, cleaning verdicts "
              f"{'equal' if s['verdicts_equal'] else 'DIFFERENT'}, evaluation "
              f"{'equal' if s['eval_equal'] else 'DIFFERENT'}."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="measure", choices=("measure", "table"))
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--work", default="/tmp/capro_sharded")
    ap.add_argument("--no-markdown", action="store_true")
    args = ap.parse_args()
    if args.what == "measure":
        Path(args.work).mkdir(parents=True, exist_ok=True)
        measure(args)
    if not args.no_markdown:
        update_markdown("sharded-passes", table(), MARKDOWN)


if __name__ == "__main__":
    main()
