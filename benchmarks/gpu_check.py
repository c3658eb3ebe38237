"""The checks that need a GPU, in one short script (under 8 minutes on one GPU).

    python benchmarks/gpu_check.py                 # on a GPU machine: the full check
    python benchmarks/gpu_check.py --tiny          # seconds, on CPU too (what the tests run)

1. Training-step throughput with bf16 autocast: a CAPro stage-2 step (prototypes, cleaning,
   collective bootstrapping, the momentum key encoder and queue) against a plain torchvision
   ResNet-50 cross-entropy loop, on the same synthetic batches already on the device (the data
   pipeline is left out; both loops see identical inputs). Images/s, their ratio, peak memory.
2. DDP with one process on NCCL (gloo on CPU): three CAPro steps through
   ``DistributedDataParallel``, the all-gathers of the queue included.
3. kNN on the GPU (capro's torch backend) against the CPU (faiss when installed, else torch),
   with the overlap of the neighbour lists; and the IVF index (``graph.index=ivf``), searched on
   the GPU when faiss has GPU support (faiss-gpu), with its recall against the exact lists.
4. The input path at the step's image size: uint8 batches from a decoded store in pinned memory,
   copied to the device and turned into the weak and strong views there
   (:mod:`capro.data.batch_views`), and, for data that does not fit a store, JPEG decoding with
   ``torchvision.io.decode_jpeg`` on the device. Images/s of each against the images/s of the
   CAPro step of check 1, and which one bounds training.

Prints one JSON line per check and writes them all to ``--out`` (default
``benchmarks/results/gpu_check.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info  # noqa: E402

SIZES = {
    "full": {"backbone": "resnet50", "image_size": 224, "batch": 128, "steps": 20, "warmup": 5,
             "queue": 8192, "classes": 1000, "knn_n": 1_000_000, "knn_dim": 128, "knn_k": 20,
             "store_side": 256, "store_n": 1024, "jpeg_n": 256, "jpeg_size": (375, 500)},
    "tiny": {"backbone": "resnet18_tiny", "image_size": 32, "batch": 8, "steps": 2, "warmup": 1,
             "queue": 64, "classes": 10, "knn_n": 3000, "knn_dim": 32, "knn_k": 10,
             "store_side": 40, "store_n": 32, "jpeg_n": 8, "jpeg_size": (48, 64)},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _capro_model(size: dict[str, Any], device: torch.device):
    """A CAPro model with initialised prototypes, its stage-2 flags and an optimiser."""
    from capro.config import load_config
    from capro.engine.stages import build_model, stage_flags

    cfg = load_config(preset="webvision1k", overrides=[f"model.backbone={size['backbone']}",
                                                       f"model.queue={size['queue']}",
                                                       f"data.image_size={size['image_size']}"])
    model = build_model(cfg, size["classes"], multi_label=False).to(device)
    z = F.normalize(torch.randn(size["classes"] * 2, cfg.model.low_dim, device=device), dim=1)
    model.initialise_prototypes(z, torch.arange(size["classes"], device=device).repeat(2))
    flags = stage_flags("stage2", cfg.stage2, cfg, cfg.stage2.epochs - 1, prototypes_ready=True)
    params = [p for k, p in model.named_parameters() if not k.startswith("encoder_k.")]
    return model, flags, torch.optim.SGD(params, lr=0.01, momentum=0.9)


def _batches(size: dict[str, Any], device: torch.device, n: int) -> list[dict[str, torch.Tensor]]:
    b, s, c = size["batch"], size["image_size"], size["classes"]
    g = torch.Generator().manual_seed(0)
    return [{"img": torch.randn(b, 3, s, s, generator=g).to(device),
             "img_aug": torch.randn(b, 3, s, s, generator=g).to(device),
             "target": torch.randint(0, c, (b,), generator=g).to(device),
             "anchor": (torch.rand(b, generator=g) < 0.1).to(device),
             "weight": torch.ones(b, device=device)} for _ in range(n)]


def _throughput(step, batches, size, device) -> dict[str, float]:
    for b in batches[:size["warmup"]]:
        step(b)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for b in batches[size["warmup"]:]:
        step(b)
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"images_per_s": size["steps"] * size["batch"] / seconds, "peak_gib": peak}


def _plain_throughput(size: dict[str, Any], device: torch.device, ctx, batches) -> dict[str, float]:
    """Images/s of a plain torchvision ResNet trained with cross-entropy (freed on return)."""
    import torchvision

    name = size["backbone"].removesuffix("_tiny")
    plain = getattr(torchvision.models, name)(weights=None, num_classes=size["classes"]).to(device)
    opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)

    def ce_step(b):
        with ctx():
            loss = F.cross_entropy(plain(b["img"]), b["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _throughput(ce_step, batches, size, device)


def check_steps(size: dict[str, Any], device: torch.device, amp: torch.dtype | None) -> dict[str, Any]:
    """Images/s of plain ResNet CE and of a CAPro stage-2 step, same batches, same autocast."""
    batches = _batches(size, device, size["warmup"] + size["steps"])
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp else torch.enable_grad
    ce = _plain_throughput(size, device, ctx, batches)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    model, flags, copt = _capro_model(size, device)
    model.train()

    def capro_step(b):
        with ctx():
            out = model(b, flags)
        copt.zero_grad(set_to_none=True)
        out.loss.float().backward()
        copt.step()

    capro = _throughput(capro_step, batches, size, device)
    return {"check": "train_step", "backbone": size["backbone"], "image_size": size["image_size"],
            "batch": size["batch"], "amp": str(amp).removeprefix("torch.") if amp else "off",
            "ce": ce, "capro_stage2": capro,
            "capro_over_ce_time": ce["images_per_s"] / capro["images_per_s"]}


def check_input(size: dict[str, Any], device: torch.device, step_images_per_s: float | None) -> dict[str, Any]:
    """Images/s of the batched input path on ``device``, from a uint8 store and from JPEG bytes."""
    from torchvision.io import decode_jpeg, encode_jpeg

    from capro.data.batch_views import strong_views, view_keys, weak_views

    b, side, crop = size["batch"], size["store_side"], size["image_size"]
    g = torch.Generator().manual_seed(0)
    store = torch.randint(0, 256, (size["store_n"], 3, side, side), dtype=torch.uint8, generator=g)
    if device.type == "cuda":
        store = store.pin_memory()
    rounds = size["warmup"] + size["steps"]

    def views(step: int) -> None:
        idx = torch.randint(0, len(store), (b,), generator=g)
        raw = store[idx].to(device, non_blocking=True)
        keys = view_keys(0, 0, idx + step * b)
        weak_views(raw, keys=keys, size=crop)
        strong_views(raw, keys=keys, size=crop)

    for step in range(size["warmup"]):
        views(step)
    _sync(device)
    t0 = time.perf_counter()
    for step in range(size["warmup"], rounds):
        views(step)
    _sync(device)
    store_rate = size["steps"] * b / (time.perf_counter() - t0)
    h, w = size["jpeg_size"]
    jpegs = [encode_jpeg(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), quality=90)
             for _ in range(size["jpeg_n"])]
    decode_jpeg(jpegs[:b], device=device)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(jpegs), b):
        decode_jpeg(jpegs[i:i + b], device=device)
    _sync(device)
    jpeg_rate = len(jpegs) / (time.perf_counter() - t0)
    out = {"check": "input_path", "image_size": crop, "store_side": side, "batch": b,
           "store_views_images_per_s": store_rate, "jpeg_decode_images_per_s": jpeg_rate,
           "jpeg_size": [h, w], "step_images_per_s": step_images_per_s}
    if step_images_per_s:
        out["bound_with_store"] = "input" if store_rate < step_images_per_s else "step"
        out["bound_with_jpeg_decode"] = ("input" if 1 / (1 / store_rate + 1 / jpeg_rate) < step_images_per_s
                                         else "step")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_ddp(size: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Three CAPro steps through DDP in a one-process group (NCCL on CUDA, gloo on CPU)."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        model, flags, opt = _capro_model(size, device)
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
        t0 = time.perf_counter()
        losses = []
        for b in _batches(size, device, 3):
            out = ddp(b, flags)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            losses.append(float(out.loss.detach()))
        _sync(device)
        return {"check": "ddp_one_process", "backend": backend, "steps": 3, "losses": losses,
                "finite": bool(np.isfinite(losses).all()), "seconds": time.perf_counter() - t0}
    finally:
        dist.destroy_process_group()


def check_knn(size: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Exact kNN on ``device`` with capro's torch backend vs the CPU backend, same points."""
    from capro.graph.knn import create_knn_backend, normalize_rows

    n, dim, k = size["knn_n"], size["knn_dim"], size["knn_k"]
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(n // 100, 2), dim), dtype=np.float32)
    x = normalize_rows(centres[rng.integers(0, len(centres), n)]
                       + 0.8 * rng.standard_normal((n, dim), dtype=np.float32))
    out: dict[str, Any] = {"check": "knn", "n": n, "dim": dim, "k": k, "device": str(device)}
    t0 = time.perf_counter()
    dev_ids, _ = create_knn_backend("torch", device=str(device)).search(x, k=k)
    out["device_seconds"] = time.perf_counter() - t0
    queries = np.arange(0, n, max(n // 10_000, 1))  # the CPU side: exact search for a sample
    t0 = time.perf_counter()
    cpu_ids, backend = _cpu_exact(x, x[queries], k)
    out.update(cpu_backend=backend, cpu_queries=int(len(queries)), cpu_seconds=time.perf_counter() - t0)
    out["cpu_seconds_all_queries_est"] = out["cpu_seconds"] * n / len(queries)
    out["device_speedup_est"] = out["cpu_seconds_all_queries_est"] / out["device_seconds"]
    out["neighbour_overlap"] = float(np.mean([len(np.intersect1d(a, b)) / k
                                              for a, b in zip(dev_ids[queries], cpu_ids)]))
    out["ivf"] = _ivf_on(x, k, device, dev_ids, queries)
    return out


def _ivf_on(x: np.ndarray, k: int, device: torch.device, exact: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """capro's IVF index (``graph.index=ivf``) on ``device``: where it searched (the GPU needs
    faiss-gpu), seconds, and recall@(k-1) against the exact lists on the sampled queries."""
    from capro.graph.knn import FaissIvf, faiss_available, gpu_id

    if not faiss_available():
        return {"skipped": "faiss is not installed"}
    import faiss

    t0 = time.perf_counter()
    ids, _ = FaissIvf(device=str(device)).search(x, k=k)
    hits = [len(np.intersect1d(a[1:], b[1:])) / (k - 1) for a, b in zip(ids[queries], exact[queries])]
    return {"on": "cpu" if gpu_id(str(device), faiss) is None else f"gpu {gpu_id(str(device), faiss)}",
            "seconds": time.perf_counter() - t0, "recall": float(np.mean(hits))}


def _cpu_exact(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, str]:
    """ids [len(q), k] of the exact inner-product neighbours of ``q`` among ``x`` on the CPU."""
    from capro.graph.knn import faiss_available

    if faiss_available():
        import faiss

        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        return index.search(q, k)[1], "faiss IndexFlatIP"
    sims = torch.from_numpy(q) @ torch.from_numpy(x).T
    return sims.topk(k, dim=1).indices.numpy(), "torch matmul"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="seconds-long sizes (CPU is fine)")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one) | cpu | cuda[:N]")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default results/gpu_check.json)")
    p.add_argument("--skip", nargs="*", default=[], choices=["steps", "ddp", "knn", "input"])
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    size = SIZES["tiny" if args.tiny else "full"]
    amp = torch.bfloat16 if device.type == "cuda" else None
    results: list[dict[str, Any]] = [{"check": "machine", **machine_info(), "device": str(device),
                                      "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}]
    def step_rate() -> float | None:
        steps = next((r for r in results if r.get("check") == "train_step" and "error" not in r), None)
        return steps["capro_stage2"]["images_per_s"] if steps else None

    checks = {"steps": lambda: check_steps(size, device, amp), "ddp": lambda: check_ddp(size, device),
              "knn": lambda: check_knn(size, device), "input": lambda: check_input(size, device, step_rate())}
    for name, fn in checks.items():
        if name in args.skip:
            continue
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as exc:  # noqa: BLE001 - report every check, even when one fails
            res = {"check": name, "error": f"{type(exc).__name__}: {exc}"}
        res["wall_seconds"] = time.perf_counter() - t0
        results.append(res)
        print(json.dumps(res), flush=True)
    out = args.out or RESULTS / ("gpu_check_tiny.json" if args.tiny else "gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, out)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
