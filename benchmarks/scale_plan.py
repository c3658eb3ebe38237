"""The scale plan: projected hours of each stage for WebVision1k and a 100M-image crawl, on one
node of 8 GPUs and on 4 such nodes, from the per-item costs measured on this machine and the GPU
rates named as assumptions below.

    python benchmarks/scale_plan.py measure   # text matching per class size -> results/scale_costs.json
    python benchmarks/scale_plan.py table     # the "scale-plan" block of BENCHMARKS.md

``table`` reads what the other benchmarks measured: ``graph_pipeline_1000000_ivf.json`` (re-ranking
and enhancement per node, one core), ``graph_knn_sampled_10000000_ivf.json`` (IVF build and search
at 10M, one core), ``sharded_passes.json`` (the 2-process speed-up) and ``scale_costs.json``
(the text matching's per-class cost, which grows with the square of the class size).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from common import MARKDOWN, RESULTS, git_commit, machine_info, update_markdown

from capro.utils.io import write_json

COSTS = RESULTS / "scale_costs.json"

# ---- assumptions (not measured here: no GPU was available to this benchmark) ----
GPU_TRAIN_CE = 2500.0
"""ResNet-50 at 224 px, bf16, images/s per GPU for a cross-entropy training step: the order of
the mixed-precision figures NVIDIA publishes for A100-class GPUs. ``gpu_check.py`` measures it."""
GPU_FORWARD = 3 * GPU_TRAIN_CE
"""Forward-only images/s per GPU (features, cleaning scores, evaluation, the frozen-encoder
fine-tune): a training step costs about three forward passes."""
GPU_TEXT = 5000.0
"""MiniLM texts/s per GPU (128-token texts, batch 128)."""
CPU_THREADS, CPU_EFFICIENCY = 32, 0.7
"""The CPU work of rank 0 (kNN index, re-ranking, enhancement, text matching) on a node's cores:
threads used and the share of linear scaling they reach."""
CAPRO_STEP = 1.39
"""A CAPro stage-2 step costs 1.39x a cross-entropy step (measured, ``perf.py``, on CPU)."""
EPOCHS = {"stage1": 120, "stage2": 60, "stage3": 15}
"""The ``webvision1k`` preset; the 100M crawl is projected with the same schedule."""
VAL_IMAGES = 50_000
"""Images scored after every epoch (WebVision's validation split)."""

SETS = {"WebVision1k": {"n": 2_400_000, "classes": 1000}, "100M crawl": {"n": 100_000_000, "classes": 1000}}
MACHINES = {"1 node x 8 GPUs": 8, "4 nodes x 8 GPUs": 32}


def _match_seconds(n: int, *, dim: int = 384, seed: int = 0) -> float:
    """Seconds of capro's k-reciprocal text matching for one class of ``n`` texts (one thread)."""
    from capro.graph.match import text_distances

    rng = np.random.default_rng(seed)
    text = rng.standard_normal((n, dim), dtype=np.float32)
    protos = rng.standard_normal((1, dim), dtype=np.float32)
    t0 = time.perf_counter()
    text_distances(text, protos, np.zeros(n, np.int64), method="rerank")
    return time.perf_counter() - t0


def measure(sizes: list[int]) -> dict:
    import torch

    torch.set_num_threads(1)
    rows = []
    for n in sizes:
        sec = _match_seconds(n)
        rows.append({"class_size": n, "seconds": round(sec, 3), "seconds_per_n2": sec / n ** 2})
        print(rows[-1], flush=True)
    out = {"commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "machine": machine_info(),
           "threads": 1, "text_dim": 384, "match": rows}
    write_json(COSTS, out)
    return out


def _read(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def per_item() -> dict[str, float]:
    """Measured one-core seconds per node (graph steps) and the text matching's n² constant."""
    ivf1m = _read("graph_pipeline_1000000_ivf.json")
    sampled = _read("graph_knn_sampled_10000000_ivf.json")
    costs = _read("scale_costs.json")
    st = ivf1m["stages"]
    out = {"rerank_per_node": st["rerank"]["seconds"] / ivf1m["n"],
           "enhance_per_node": st["enhance"]["seconds"] / ivf1m["n"],
           "ivf_1m_seconds": st["knn_ivf"]["seconds"],
           "match_per_n2": costs["match"][-1]["seconds_per_n2"]}
    if sampled:
        out.update(ivf_10m_build=sampled["stages"]["build_ivf"]["seconds"],
                   ivf_10m_per_query=sampled["seconds_per_query"])
    return out


def _ivf_seconds(n: int, c: dict[str, float]) -> float:
    """One-core IVF build + search of n points: the 10M measurement scaled as n^1.5 (build and
    per-query cost both grow with sqrt(n) cells of n / sqrt(n) points), else the 1M one."""
    if "ivf_10m_build" in c:
        ref = c["ivf_10m_build"] + c["ivf_10m_per_query"] * 1e7
        return ref * (n / 1e7) ** 1.5
    return c["ivf_1m_seconds"] * (n / 1e6) ** 1.5


def plan() -> list[tuple[str, dict[str, float]]]:
    """[(stage, {"<set> / <machine>": hours})] for every set and machine."""
    c = per_item()
    cpu = CPU_THREADS * CPU_EFFICIENCY
    rows: dict[str, dict[str, float]] = {}
    for sname, s in SETS.items():
        n, classes = s["n"], s["classes"]
        for mname, gpus in MACHINES.items():
            col = f"{sname} / {mname}"
            secs = {
                "text encoding (all ranks)": n / (GPU_TEXT * gpus),
                "stage 1 training": EPOCHS["stage1"] * n / (GPU_TRAIN_CE * gpus),
                "features (all ranks)": n / (GPU_FORWARD * gpus),
                "kNN, IVF (rank 0, CPU)": _ivf_seconds(n, c) / cpu,
                "re-rank + enhance (rank 0, CPU)": n * (c["rerank_per_node"] + c["enhance_per_node"]) / cpu,
                "text matching (rank 0, CPU)": classes * (n / classes) ** 2 * c["match_per_n2"] / cpu,
                "stage 2 training": EPOCHS["stage2"] * n * CAPRO_STEP / (GPU_TRAIN_CE * gpus),
                "offline cleaning (all ranks)": n / (GPU_FORWARD * gpus),
                "stage 3 fine-tune": EPOCHS["stage3"] * n / (GPU_FORWARD * gpus),
                "validation every epoch + final evaluation (all ranks)":
                    (sum(EPOCHS.values()) + 1) * VAL_IMAGES / (GPU_FORWARD * gpus),
            }
            secs["total"] = sum(secs.values())
            for stage, sec in secs.items():
                rows.setdefault(stage, {})[col] = sec / 3600
    return list(rows.items())


def _hm(hours: float) -> str:
    """``h:mm``, or ``<0:01`` below a minute."""
    minutes = round(hours * 60)
    return "<0:01" if minutes < 1 else f"{minutes // 60:,}:{minutes % 60:02d}"


def table() -> str:
    c = per_item()
    costs = _read("scale_costs.json")
    cols = [f"{s} / {m}" for s in SETS for m in MACHINES]
    lines = ["| stage (h:mm) | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for stage, hours in plan():
        cells = [_hm(hours[col]) for col in cols]
        name = f"**{stage}**" if stage == "total" else stage
        lines.append(f"| {name} | " + " | ".join(f"**{x}**" if stage == "total" else x for x in cells) + " |")
    match = ", ".join(f"{r['class_size']:,}: {r['seconds']:.1f} s" for r in costs["match"])
    lines += ["", f"Measured inputs (one core of this machine, {costs['date']}, "
              f"commit `{costs['commit']}`): re-ranking {c['rerank_per_node'] * 1e6:.0f} s and enhancement "
              f"{c['enhance_per_node'] * 1e6:.0f} s per million nodes; IVF "
              + (f"at 10M {c['ivf_10m_build']:.0f} s to build and {c['ivf_10m_per_query'] * 1e3:.2f} ms per "
                 "query (scaled as N^1.5)" if "ivf_10m_build" in c else
                 f"{c['ivf_1m_seconds']:.0f} s at 1M (scaled as N^1.5)")
              + f"; text matching of one class ({match}; scaled as n²). Assumed (no GPU measured): "
              f"{GPU_TRAIN_CE:,.0f} training images/s per GPU for a CE step, CAPro's step {CAPRO_STEP}× that, "
              f"{GPU_FORWARD:,.0f} forward images/s, {GPU_TEXT:,.0f} texts/s per GPU, rank 0's CPU work on "
              f"{CPU_THREADS} threads at {CPU_EFFICIENCY:.0%} efficiency, data loading keeping up, "
              f"{SETS['100M crawl']['classes']:,} classes (class sizes equal)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("measure", "table"))
    ap.add_argument("--sizes", type=int, nargs="*", default=[2000, 8000, 32000])
    args = ap.parse_args()
    if args.what == "measure":
        measure(args.sizes)
    else:
        block = table()
        print(block)
        update_markdown("scale-plan", block, MARKDOWN)


if __name__ == "__main__":
    sys.exit(main())
