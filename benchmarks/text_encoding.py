"""Text-encoding throughput: capro's resumable ``encode_to_file`` vs. ``SentenceTransformer.encode``.

The texts are the first N WordNet noun glosses (short real English, offline). Both ways encode the
same texts with MiniLM and the same batch size; the runs are interleaved (alternating which goes
first) and the median wall time and process CPU time of each are reported (on a shared, busy
machine the CPU-time ratio is the fairer one). Prints JSON and writes
``benchmarks/results/text_encoding.json``.

    .venv/bin/python benchmarks/text_encoding.py --texts 5000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from capro.text.encode import create_encoder, encode_to_file
from capro.text.wordlist import wordnet
from capro.utils.io import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "text_encoding.json"


def glosses(n: int) -> list[str]:
    """The first ``n`` WordNet noun definitions, in WordNet order."""
    out = []
    for syn in wordnet().all_synsets("n"):
        out.append(syn.definition())
        if len(out) == n:
            break
    return out


def run_benchmark(*, n_texts: int = 5000, rounds: int = 3, batch_size: int = 128,
                  chunk_size: int = 4096) -> dict:
    """Median seconds and texts/s of both ways, and capro's throughput as a fraction of direct."""
    texts = glosses(n_texts)
    encoder = create_encoder("minilm")
    model = encoder.model
    model.encode(texts[:256], batch_size=batch_size)  # warm-up
    direct_s, capro_s, direct_cpu, capro_cpu = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:

        def direct() -> np.ndarray:
            t0, c0 = time.perf_counter(), time.process_time()
            out = model.encode(texts, batch_size=batch_size)
            direct_s.append(time.perf_counter() - t0)
            direct_cpu.append(time.process_time() - c0)
            return out

        def capro(i: int) -> np.ndarray:
            t0, c0 = time.perf_counter(), time.process_time()
            out = encode_to_file(encoder, texts, Path(tmp) / f"run{i}.npy", batch_size=batch_size,
                                 chunk_size=chunk_size, progress=False)
            capro_s.append(time.perf_counter() - t0)
            capro_cpu.append(time.process_time() - c0)
            return np.asarray(out)

        for i in range(rounds):
            if i % 2 == 0:
                ref, got = direct(), capro(i)
            else:
                got, ref = capro(i), direct()
        max_diff = float(np.abs(ref - got).max())
    direct_med, capro_med = statistics.median(direct_s), statistics.median(capro_s)
    return {
        "benchmark": "text_encoding",
        "encoder": "minilm",
        "texts": n_texts,
        "mean_chars": round(sum(map(len, texts)) / len(texts), 1),
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "rounds": rounds,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "direct_seconds": [round(s, 3) for s in direct_s],
        "capro_seconds": [round(s, 3) for s in capro_s],
        "direct_texts_per_s": round(n_texts / direct_med, 1),
        "capro_texts_per_s": round(n_texts / capro_med, 1),
        "throughput_ratio": round(direct_med / capro_med, 4),
        "direct_cpu_seconds": [round(s, 3) for s in direct_cpu],
        "capro_cpu_seconds": [round(s, 3) for s in capro_cpu],
        "cpu_throughput_ratio": round(statistics.median(direct_cpu) / statistics.median(capro_cpu), 4),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "max_abs_diff": max_diff,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    result = run_benchmark(n_texts=args.texts, rounds=args.rounds, batch_size=args.batch_size,
                           chunk_size=args.chunk_size)
    print(json.dumps(result, indent=2))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
