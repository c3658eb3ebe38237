"""Which noisy rows survive CAPro's cleaning, and which anchors are wrong, by kind of noise.

    python benchmarks/studies/noise_survivors.py RUN [RUN ...]      # runs of `capro run` on simulated data

Reads ``RUN/stage3a/samples.jsonl`` (the offline verdicts) and the simulator's ``truth.jsonl`` of
the run's data. A row is noisy when its true class differs from its web label; it *survives* when
stage 3a keeps it with that wrong label. Prints and writes ``benchmarks/results/noise_survivors.json``.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the suites' shared code
from common import RESULTS  # noqa: E402

from capro.utils.io import read_json, read_jsonl, write_json  # noqa: E402


def survivors(run: Path) -> dict:
    """Per noise kind: "kinds" (rows), "survived" / "flagged" / "wrong_anchors" (noisy rows),
    "relabeled_right" / "relabeled_wrong" (noisy rows given their true class / another wrong one);
    and for the clean rows, per web label: "clean_removed" and "clean_relabeled" (a clean row
    relabelled is always relabelled wrongly)."""
    data = Path(read_json(run / "run.json")["data"])
    truth = {r["id"]: r for r in read_jsonl(data / "truth.jsonl")}
    keys = ("kinds", "survived", "flagged", "wrong_anchors", "relabeled_right", "relabeled_wrong",
            "clean_removed", "clean_relabeled")
    out: dict[str, collections.Counter] = {k: collections.Counter() for k in keys}
    for r in read_jsonl(run / "stage3a" / "samples.jsonl"):
        t = truth[r["id"]]
        noisy = t["true_label"] != r["web_label"]
        out["kinds"][t["noise"]] += 1
        if noisy:
            out["survived" if r["kept"] else "flagged"][t["noise"]] += 1
            if r["anchor"]:
                out["wrong_anchors"][t["noise"]] += 1
            if r["relabeled"]:
                out["relabeled_right" if r["label"] == t["true_label"] else "relabeled_wrong"][t["noise"]] += 1
        elif r["removed"]:
            out["clean_removed"][r["web_label"]] += 1
        elif r["relabeled"]:
            out["clean_relabeled"][r["web_label"]] += 1
    return {k: dict(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=RESULTS / "noise_survivors.json")
    args = p.parse_args(argv)
    res = {str(run): survivors(run) for run in args.runs}
    for run, r in res.items():
        print(run)
        for k, v in r.items():
            print(f"  {k:14} {v}")
    write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
