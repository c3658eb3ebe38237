"""Graph-stage benchmarks: vectorised vs loop re-ranking, and the kNN -> re-rank -> enhance pipeline
at scale (time and peak memory).

    python benchmarks/graph_scale.py rerank   [--n 20000 --k 20 --loop-nodes 2000]
    python benchmarks/graph_scale.py pipeline [--n 1000000 --dim 128 --text-dim 384 --knn exact]

Each writes ``benchmarks/results/graph_<name>.json`` (pipeline: ``graph_pipeline_<n>_<knn>.json``)
and prints it. The loop reference is the per-sample implementation kept in ``tests/graph``; it is
timed on ``--loop-nodes`` nodes and extrapolated linearly to N (each node is independent).

The synthetic features are points around 1000 well-separated centres (within-cluster distances
~12.8, between clusters ~20 in 128-d), so every point's nearest neighbours lie in its own cluster.
``--knn per-cluster`` exploits that: it runs the same exact backend inside each cluster, which
costs N**2 / 1000 instead of N**2 and gives the exact global kNN lists (``--verify`` checks this
against the global search). Use it to measure re-ranking and enhancement at 1M on a machine where
the exact 1M x 1M search (about 1.3e14 multiply-adds) does not fit the time available.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "graph"))

from capro.graph.enhance import enhance_text  # noqa: E402
from capro.graph.knn import (  # noqa: E402
    create_index,
    create_knn_backend,
    exact_neighbours,
    normalize_rows,
    recall_at_k,
)
from capro.graph.rerank import rerank_knn  # noqa: E402
from capro.utils.io import write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_now_gb() -> dict[str, float]:
    """This process's resident memory now, in GiB: anonymous (heap) and file-backed (memory-mapped
    files, which the kernel can drop and re-read) separately (Linux)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, kib = line.split()[:2]
                out[key[:-1]] = round(int(kib) / 2**20, 3)
    return out


def synthetic_features(n: int, dim: int, *, clusters: int = 1000, seed: int = 0,
                       chunk: int = 100_000, noise: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """[n, dim] float32 L2-normalised points around ``clusters`` random centres, and their [n]
    cluster ids (built in chunks)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    assign = rng.integers(0, clusters, n)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        out[s:e] = centres[assign[s:e]]
        out[s:e] += noise * rng.standard_normal((e - s, dim), dtype=np.float32)
        out[s:e] = normalize_rows(out[s:e])
    return out, assign


def per_cluster_knn(x: np.ndarray, assign: np.ndarray, *, k: int, backend: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN inside each cluster (global ids); equals the global search on well-separated data."""
    search = create_knn_backend(backend)
    ids = np.empty((len(x), k), dtype=np.int64)
    sims = np.empty((len(x), k), dtype=np.float32)
    for c in np.unique(assign):
        members = np.flatnonzero(assign == c)
        i, s = search.search(x[members], k=k)
        ids[members], sims[members] = members[i], s
    return ids, sims


def machine() -> dict:
    return {"platform": platform.platform(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def bench_rerank(args: argparse.Namespace) -> dict:
    from rerank_reference import rerank_knn_loop

    x, _ = synthetic_features(args.n, args.dim, clusters=max(args.n // 100, 2))
    ids, _ = create_knn_backend(args.backend).search(x, k=args.k)
    t0 = time.perf_counter()
    vec_ids, vec_dist = rerank_knn(x, ids)
    t_vec = time.perf_counter() - t0
    m = args.loop_nodes
    t0 = time.perf_counter()
    loop_ids, loop_dist = rerank_knn_loop(x, ids[:m])
    t_loop_m = time.perf_counter() - t0
    t_loop = t_loop_m * args.n / m
    return {
        "benchmark": "rerank_vectorised_vs_loop", "n": args.n, "k": args.k, "dim": args.dim,
        "k1": 20, "k2": 6, "lambda": 0.3,
        "vectorised_seconds": t_vec,
        "loop_nodes_timed": m, "loop_seconds_timed": t_loop_m,
        "loop_seconds_extrapolated": t_loop,
        "speedup": t_loop / t_vec,
        "max_abs_diff_on_timed_nodes": float(np.abs(vec_dist[:m] - loop_dist).max()),
        "ids_equal_fraction_on_timed_nodes": float((vec_ids[:m] == loop_ids).mean()),
        "machine": machine(),
    }


def bench_pipeline(args: argparse.Namespace) -> dict:
    stages: dict[str, dict] = {}

    def mark(name: str, t0: float) -> None:
        stages[name] = {"seconds": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb(), **rss_now_gb()}
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {stages[name]}", flush=True)

    t0 = time.perf_counter()
    x, assign = synthetic_features(args.n, args.dim, noise=args.noise, clusters=args.clusters)
    if args.search_sample:  # the kNN search alone: no texts
        mark("generate", t0)
        return _sampled_search(args, x, stages, mark)
    rng = np.random.default_rng(1)
    work = Path(args.work) if args.work else None
    if work is not None:  # the texts on disk, memory-mapped, as a run holds them
        work.mkdir(parents=True, exist_ok=True)
        text = np.lib.format.open_memmap(work / "text.npy", mode="w+", dtype=np.float32,
                                         shape=(args.n, args.text_dim))
    else:
        text = np.empty((args.n, args.text_dim), dtype=np.float32)
    for s in range(0, args.n, 100_000):
        e = min(s + 100_000, args.n)
        text[s:e] = normalize_rows(rng.standard_normal((e - s, args.text_dim), dtype=np.float32))
    mark("generate", t0)

    t0 = time.perf_counter()
    if args.knn == "exact":
        ids, sims = create_knn_backend(args.backend, chunk_size=args.chunk_size,
                                       progress=args.progress).search(x, k=args.k)
    elif args.knn in ("ivf", "hnsw"):
        ids, sims = create_index(args.knn, nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m,
                                 ef_search=args.ef_search, progress=args.progress).search(x, k=args.k)
    else:
        ids, sims = per_cluster_knn(x, assign, k=args.k, backend=args.backend)
    mark(f"knn_{args.knn}", t0)
    recall = None
    if args.knn in ("ivf", "hnsw") and args.recall_queries:
        t0 = time.perf_counter()
        value, used = recall_at_k(x, ids, queries=args.recall_queries)
        recall = {"recall_at_k": value, "queries": used, "k_without_self": args.k - 1}
        mark("recall", t0)
    verified = exact_seconds = None
    if args.verify:
        t0 = time.perf_counter()
        exact, _ = create_knn_backend(args.backend).search(x, k=args.k)
        exact_seconds = time.perf_counter() - t0
        verified = float((np.sort(exact, axis=1) == np.sort(ids, axis=1)).all(axis=1).mean())
        del exact
    isolated = enhanced = None
    if not args.knn_only:
        t0 = time.perf_counter()
        r_ids, r_dist = rerank_knn(x, ids, progress=args.progress)
        mark("rerank", t0)
        t0 = time.perf_counter()
        into = None if work is None else np.lib.format.open_memmap(
            work / "enhanced.npy", mode="w+", dtype=np.float32, shape=text.shape)
        enhanced, isolated = enhance_text(r_ids, r_dist, text, keep=args.keep, out=into)
        mark("enhance", t0)
    total = sum(s["seconds"] for name, s in stages.items() if name != "generate")
    return {
        "benchmark": "graph_pipeline", "n": args.n, "dim": args.dim, "text_dim": args.text_dim,
        "k": args.k, "keep": args.keep, "backend": args.backend, "knn": args.knn, "noise": args.noise,
        "clusters": args.clusters, "texts_memory_mapped": bool(args.work),
        "knn_only": args.knn_only,
        "knn_lists_equal_to_exact_global_fraction": verified, "recall": recall,
        **({"nlist": args.nlist, "nprobe": args.nprobe} if args.knn == "ivf" else {}),
        **({"hnsw_m": args.hnsw_m, "ef_search": args.ef_search} if args.knn == "hnsw" else {}),
        "exact_global_knn_seconds": exact_seconds,
        "stages": stages, "pipeline_seconds": total, "peak_rss_gb": peak_rss_gb(),
        "isolated_nodes": None if isolated is None else int(isolated.sum()),
        "enhanced_finite": None if enhanced is None else bool(np.isfinite(enhanced).all()),
        "machine": machine(),
    }


def _sampled_search(args: argparse.Namespace, x: np.ndarray, stages: dict, mark) -> dict:
    """Build the approximate index over all N points, query ``--search-sample`` of them, and
    project the full search from the time per query; recall@k on ``--recall-queries`` of them."""
    ix = create_index(args.knn, nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m, ef_search=args.ef_search)
    t0 = time.perf_counter()
    index = ix.build(x)
    mark(f"build_{args.knn}", t0)
    rng = np.random.default_rng(2)
    rows = np.sort(rng.choice(len(x), args.search_sample, replace=False))
    t0 = time.perf_counter()
    for s in range(0, len(rows), 65_536):
        index.search(x[rows[s:s + 65_536]], args.k)
    mark("search_sample", t0)
    per_query = stages["search_sample"]["seconds"] / len(rows)
    t0 = time.perf_counter()
    q = rows[:args.recall_queries]
    _, got = index.search(x[q], args.k)
    exact = exact_neighbours(x, q, k=args.k)
    hits = [len((set(a.tolist()) - {i}) & (set(b.tolist()) - {i})) for i, a, b in zip(q, got, exact)]
    recall = float(np.sum(hits) / (len(q) * (args.k - 1)))
    mark("recall", t0)
    return {
        "benchmark": "graph_knn_sampled", "n": args.n, "dim": args.dim, "k": args.k, "knn": args.knn,
        "noise": args.noise, "clusters": args.clusters, "queries_timed": len(rows), "seconds_per_query": per_query,
        "projected_search_seconds": per_query * args.n,
        "projected_knn_seconds": stages[f"build_{args.knn}"]["seconds"] + per_query * args.n,
        "recall": {"recall_at_k": recall, "queries": len(q), "k_without_self": args.k - 1},
        **({"nlist": ix.cells(args.n), "nprobe": args.nprobe} if args.knn == "ivf" else {}),
        "stages": stages, "peak_rss_gb": peak_rss_gb(), "machine": machine(),
    }


def scale_table() -> str:
    """Markdown: every global ``graph_pipeline`` result (exact, ivf, hnsw), N ascending."""
    rows = []
    for f in sorted(RESULTS.glob("graph_pipeline_*.json")):
        r = json.loads(f.read_text())
        if r.get("knn") not in ("exact", "ivf", "hnsw"):
            continue
        st = r["stages"]
        sec = {k: st.get(k, {}).get("seconds") for k in (f"knn_{r['knn']}", "recall", "rerank", "enhance")}
        recall = (r.get("recall") or {}).get("recall_at_k")
        rows.append((r["n"], r.get("noise", 0.8), r["knn"], sec, recall, r["peak_rss_gb"], r.get("knn_only")))
    fmt = lambda v: "–" if v is None else f"{v:.0f}"  # noqa: E731
    lines = ["| N | clusters | index | kNN s | recall@19 | recall check s | re-rank s | enhance s | peak RSS GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n, noise, knn, sec, recall, rss, only in sorted(rows, key=lambda r: (r[0], r[1], r[2])):
        lines.append(f"| {n:,} | {'separated' if noise == 0.8 else 'overlapping'} | {knn} | "
                     f"{fmt(sec[f'knn_{knn}'])} | {'exact' if knn == 'exact' else f'{recall:.4f}'} | "
                     f"{fmt(sec['recall'])} | {'–' if only else fmt(sec['rerank'])} | "
                     f"{'–' if only else fmt(sec['enhance'])} | {rss:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("rerank", help="vectorised vs loop re-ranking")
    r.add_argument("--n", type=int, default=20_000)
    r.add_argument("--k", type=int, default=20)
    r.add_argument("--dim", type=int, default=128)
    r.add_argument("--loop-nodes", type=int, default=2_000)
    r.add_argument("--backend", default="auto")
    sub.add_parser("table", help="write the kNN-at-scale table into BENCHMARKS.md")
    q = sub.add_parser("pipeline", help="kNN + re-rank + enhance at scale")
    q.add_argument("--n", type=int, default=1_000_000)
    q.add_argument("--dim", type=int, default=128)
    q.add_argument("--text-dim", type=int, default=384)
    q.add_argument("--k", type=int, default=20)
    q.add_argument("--keep", type=int, default=5)
    q.add_argument("--backend", default="auto")
    q.add_argument("--chunk-size", type=int, default=8192)
    q.add_argument("--knn", choices=("exact", "per-cluster", "ivf", "hnsw"), default="exact",
                   help="exact global search, exact per cluster, or an approximate faiss index")
    q.add_argument("--nlist", type=int, default=0, help="ivf cells (0 = 4 sqrt(N))")
    q.add_argument("--nprobe", type=int, default=32)
    q.add_argument("--hnsw-m", type=int, default=32)
    q.add_argument("--ef-search", type=int, default=128)
    q.add_argument("--noise", type=float, default=0.8,
                   help="spread of the points around their centres (0.8: well-separated clusters; "
                        "1.5: clusters that overlap, a harder search)")
    q.add_argument("--knn-only", action="store_true", help="stop after the kNN search (and its recall)")
    q.add_argument("--recall-queries", type=int, default=10_000,
                   help="approximate indexes: nodes whose lists are checked against exact search")
    q.add_argument("--verify", action="store_true",
                   help="also run the exact global search and report how many lists equal it")
    q.add_argument("--progress", action="store_true")
    q.add_argument("--clusters", type=int, default=1000, help="centres of the synthetic points")
    q.add_argument("--work", default="", help="keep the texts and the enhanced texts in memory-mapped files here")
    q.add_argument("--search-sample", type=int, default=0,
                   help="ivf/hnsw: build over all N, time this many queries and project the full search")
    args = p.parse_args(argv)
    if args.what == "table":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from common import update_markdown

        update_markdown("knn-scale", scale_table())
        return 0
    if args.what == "rerank":
        result, name = bench_rerank(args), "graph_rerank.json"
    else:
        tag = ("" if args.noise == 0.8 else f"_noise{args.noise:g}") + (
            "" if args.clusters == 1000 else f"_c{args.clusters}")
        result = bench_pipeline(args)
        kind = "knn_sampled" if args.search_sample else "pipeline"
        name = f"graph_{kind}_{args.n}_{args.knn}{tag}.json"
    write_json(RESULTS / name, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
