"""Process group set-up from torchrun's environment, device choice and mixed precision.

``torchrun --nproc_per_node N [--nnodes M ...] -m capro run ...`` sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`init_distributed` then joins the group (NCCL on
GPU, gloo on CPU). Without those variables everything runs in one process and no group is made.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from capro.errors import ConfigError, UsageError

DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, *, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when a GPU is visible, else ``cpu``; explicit names are checked."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"config key 'device': {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"config key 'device': {name!r} requested but no CUDA GPU is visible; use device=cpu")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device: str = "auto", *, timeout_s: int | None = None) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank=local_rank)
    if world > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise UsageError("WORLD_SIZE > 1 but MASTER_ADDR is unset; launch with torchrun")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        timeout = datetime.timedelta(seconds=timeout_s or int(os.environ.get("CAPRO_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank,
                                world_size=world, timeout=timeout)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on GPU (fp16 when bf16 is unsupported), off on CPU; ``off`` -> None."""
    if mode == "off":
        return None
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def all_true(flag: bool, device: torch.device) -> bool:
    """Logical AND of ``flag`` over all processes (a no-op in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
