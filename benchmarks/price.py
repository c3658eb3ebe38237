"""The price of a whole run: ``capro-ft`` against plain CE at the same backbone epochs, and two runs
sharing the machine.

    python benchmarks/price.py                              # the current code
    python benchmarks/price.py --before-src /path/to/old/src --before-label fa41bc8

Every run is a fresh ``capro run`` process of the ``long`` protocol (2,000 images, 16 px, the
small CNN, 120 backbone epochs; no per-epoch test curve, as a user's run) on ``web`` seed 100,
one thread, nothing else running. Rows:

- ``ce``: plain cross-entropy, 120 epochs in one stage;
- ``capro-ft``: the defaults (stage 1, graph, stage 2 with D21's probe, offline cleaning, fine-tune);
- ``capro-ft-full-d21``: the same with ``method.rule_probe_epochs=0`` (a full stage 2 per keep rule,
  the choice as first built);

each on the simulated data with ``val.jsonl`` and on the same data without it (held-out rows
select, the user default). ``--before-src`` runs ``ce`` and ``capro-ft`` again with another
checkout's sources (PYTHONPATH) for the before / after comparison. Then two ``ce`` runs side by
side, each with the default threads, against one alone: the per-epoch seconds of each.

Writes ``benchmarks/results/price.json`` (row by row: an interrupted run keeps what is done) and
the table of BENCHMARKS.md's "The price of a run".
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, SIZES, machine_info, row_overrides, update_markdown  # noqa: E402
from quality import DEFAULT_WORK, ensure_data  # noqa: E402

from capro.utils.io import read_json, write_json  # noqa: E402

OUT = RESULTS / "price.json"
SEED = 100
ROWS = {"ce": [], "capro-ft": [], "capro-ft-full-d21": ["method.rule_probe_epochs=0"]}
PAIR_EPOCHS = ("stage1.epochs=20",)
"""The side-by-side runs: per-epoch seconds are what is compared, 20 epochs show them."""
DROPPED_ENV = ("OMP_NUM_THREADS", "PYTHONPATH", "OMP_WAIT_POLICY")
"""Never handed to a measured run: each takes the thread settings its own code chooses
(``import capro`` in this process sets OMP_WAIT_POLICY, which an older checkout would not)."""


def overrides(row: str) -> list[str]:
    base = "capro-ft" if row.startswith("capro-ft") else row
    return [*row_overrides(base, SIZES["long"], SEED), "train.curve_splits=[]", *ROWS[row]]


def without_val(data: Path) -> Path:
    """A copy of ``data`` (hard links) without ``val.jsonl``: held-out rows select, as for a user."""
    out = data.parent / "data-no-val"
    if not out.is_dir():
        shutil.copytree(data, out, copy_function=os.link)
        (out / "val.jsonl").unlink()
    return out


def epoch_seconds(run: Path, stage: str) -> list[float]:
    path = run / stage / "log.csv"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [float(r["seconds"]) for r in csv.DictReader(fh)]


def capro_run(data: Path, run: Path, row: str, *, src: str | None = None, threads: str | None = "1",
              extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One fresh ``capro run`` process; wall seconds, stage seconds and per-epoch seconds."""
    shutil.rmtree(run, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    if src is not None:
        env["PYTHONPATH"] = src
    cmd = [sys.executable, "-m", "capro", "run", str(data), "--out", str(run), "--preset", "cpu",
           *overrides(row), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    metrics = read_json(run / "metrics.json")
    return {"wall_seconds": round(wall, 2), "stages": {k: v.get("seconds") for k, v in metrics["stages"].items()},
            "stage1_epoch_seconds": epoch_seconds(run, "stage1"), "stage2_epoch_seconds": epoch_seconds(run, "stage2"),
            "online_rule": metrics.get("online_rule"), "test_top1": metrics["eval"]["test"]["top1"]}


def side_by_side(data: Path, work: Path, *, src: str | None) -> dict[str, Any]:
    """Two ``ce`` runs at once with the default threads, and one alone: median epoch seconds."""
    solo = capro_run(data, work / "solo", "ce", src=src, threads=None, extra=PAIR_EPOCHS)
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    if src is not None:
        env["PYTHONPATH"] = src
    procs, t0 = [], time.perf_counter()
    for i in range(2):
        run = work / f"pair{i}"
        shutil.rmtree(run, ignore_errors=True)
        procs.append(subprocess.Popen([sys.executable, "-m", "capro", "run", str(data), "--out", str(run),
                                       "--preset", "cpu", *overrides("ce"), *PAIR_EPOCHS], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for proc in procs:
        proc.wait()
    wall = time.perf_counter() - t0
    pair = [statistics.median(epoch_seconds(work / f"pair{i}", "stage1")) for i in range(2)]
    alone = statistics.median(solo["stage1_epoch_seconds"])
    return {"solo_epoch_seconds": alone, "pair_epoch_seconds": pair, "pair_wall_seconds": round(wall, 2),
            "solo_wall_seconds": solo["wall_seconds"], "slowdown": [p / alone for p in pair]}


def ratio(res: dict[str, Any], row: str, base: str = "ce") -> float | None:
    if row in res and base in res:
        return res[row]["wall_seconds"] / res[base]["wall_seconds"]
    return None


def table(res: dict[str, Any]) -> str:
    lines = ["| code | validation | `ce` wall (s) | `capro-ft` wall (s) | ratio | `capro-ft-full-d21` wall (s) | "
             "ratio | stage-2 / CE epoch | D21 |", "|---|---|---|---|---|---|---|---|---|"]
    for code in ("after", "before"):
        for val in ("val", "no-val"):
            r = res.get(code, {}).get(val)
            if not r or "ce" not in r:
                continue
            ce_epoch = statistics.median(r["ce"]["stage1_epoch_seconds"])
            ft = r.get("capro-ft", {})
            s2 = statistics.median(ft["stage2_epoch_seconds"]) / ce_epoch if ft.get("stage2_epoch_seconds") else None
            full = r.get("capro-ft-full-d21")
            d21 = (ft.get("online_rule") or {})
            probe = d21.get("probe") or {}
            how = (f"{d21.get('chosen')}; probe {'decided' if probe.get('decided') else 'left it to full stages'}"
                   if probe else (d21.get("chosen") or "n/a"))
            def num(x: float | None, fmt: str, unit: str = "") -> str:
                return "n/a" if x is None else format(x, fmt) + unit

            lines.append(
                f"| {res.get(code, {}).get('label', code)} | {'`val.jsonl`' if val == 'val' else 'held-out rows'} | "
                f"{r['ce']['wall_seconds']:.0f} | {num(ft.get('wall_seconds'), '.0f')} | "
                f"{num(ratio(r, 'capro-ft'), '.2f', 'x')} | {num(full and full['wall_seconds'], '.0f')} | "
                f"{num(ratio(r, 'capro-ft-full-d21'), '.2f', 'x')} | {num(s2, '.2f', 'x')} | {how} |")
    for code in ("after", "before"):
        s = res.get(code, {}).get("side_by_side")
        if s:
            lines.append(f"\nTwo `ce` runs side by side ({res[code].get('label', code)} code, default threads): "
                         f"{s['pair_epoch_seconds'][0]:.2f} and {s['pair_epoch_seconds'][1]:.2f} s per epoch against "
                         f"{s['solo_epoch_seconds']:.2f} s alone ({max(s['slowdown']):.1f}x at most).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=DEFAULT_WORK / "price")
    p.add_argument("--before-src", help="another checkout's src/ directory, measured as 'before'")
    p.add_argument("--before-label", default="before", help="what to call it in the table (e.g. its commit)")
    p.add_argument("--label", default="after", help="what to call the current code in the table")
    p.add_argument("--skip", nargs="*", default=[], choices=["rows", "side-by-side"])
    p.add_argument("--markdown", action="store_true", help="write the table into BENCHMARKS.md (price)")
    args = p.parse_args(argv)
    res: dict[str, Any] = read_json(OUT) if OUT.is_file() else {}
    data = ensure_data(args.work, SIZES["long"], "web", SEED)
    datasets = {"val": data, "no-val": without_val(data)}
    here = str(Path(__file__).resolve().parents[1] / "src")  # this checkout's code, whatever is installed
    codes = [("after", here, args.label)] + ([("before", args.before_src, args.before_label)] if args.before_src else [])
    for code, src, label in codes:
        res.setdefault(code, {})["label"] = label
        if "rows" not in args.skip:
            for val, root in datasets.items():
                rows = ROWS if code == "after" else {"ce": [], "capro-ft": []}
                for row in rows:
                    if row in res[code].get(val, {}):
                        continue
                    print(f"[{time.strftime('%H:%M:%S')}] {code} {val} {row}", flush=True)
                    res[code].setdefault(val, {})[row] = capro_run(root, args.work / code / val / row, row, src=src)
                    res["machine"] = machine_info()
                    write_json(OUT, res)
        if "side-by-side" not in args.skip and "side_by_side" not in res[code]:
            print(f"[{time.strftime('%H:%M:%S')}] {code} side by side", flush=True)
            res[code]["side_by_side"] = side_by_side(data, args.work / code / "pair", src=src)
            write_json(OUT, res)
    print(table(res))
    if args.markdown:
        update_markdown("price", table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
