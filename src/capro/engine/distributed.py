"""Process group set-up from torchrun's environment, device choice and mixed precision.

``torchrun --nproc_per_node N [--nnodes M ...] -m capro run ...`` sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`init_distributed` then joins the group (NCCL on
GPU, gloo on CPU). Without those variables everything runs in one process and no group is made.

Every collective waits at most ``CAPRO_DIST_TIMEOUT`` seconds (default 1800: it must exceed the
longest step that rank 0 does alone, e.g. text encoding or the kNN graph, while the other ranks
wait in a barrier). When a peer process dies, its sockets close and the others fail at their next
collective within seconds; a peer that hangs is noticed after the timeout. :func:`peer_failures`
turns either into :class:`PeerLost`, a one-line error (exit code 1) that says which rank noticed
what and that ``--resume`` continues from the last checkpoint, instead of a backend traceback.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from capro.errors import CaproError, ConfigError, UsageError

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
        timeout = datetime.timedelta(seconds=timeout_s or collective_timeout_s())
        with peer_failures(rank, world, joined=False):
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank,
                                    world_size=world, timeout=timeout)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


class PeerLost(CaproError):
    """A collective failed because another process died, hung or never joined (exit code 1)."""


_BACKEND_FAILURE = re.compile(r"gloo|nccl|connection (closed|reset) by peer|broken pipe|timed out"
                              r"|timeout|ProcessGroup|TCPStore|socket", re.IGNORECASE)
"""Words of the errors gloo raises as a plain RuntimeError (NCCL and the store raise DistError)."""
_SOURCE_PREFIX = re.compile(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*")


def collective_timeout_s() -> int:
    """The collective timeout in seconds: ``CAPRO_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`."""
    return int(os.environ.get("CAPRO_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


def _detail(exc: BaseException) -> str:
    """The backend's message cut to its first sentence, without the C++ source location."""
    text = " ".join(str(exc).split())
    text = _SOURCE_PREFIX.sub("", text).split(". This is typically")[0]
    return text if len(text) <= 160 else text[:160] + "..."


def peer_lost(exc: BaseException, *, rank: int, world_size: int, joined: bool = True) -> PeerLost | None:
    """:class:`PeerLost` describing ``exc`` when it is a failed collective, else ``None``.

    Args:
        rank, world_size: this process in the group.
        joined: False while the process group was being set up (a peer never came).
    """
    if world_size <= 1 or not isinstance(exc, RuntimeError):
        return None
    if not (isinstance(exc, dist.DistError) or _BACKEND_FAILURE.search(str(exc))):
        return None
    detail, limit = _detail(exc), collective_timeout_s()
    where = f"rank {rank} of {world_size}"
    if not joined:
        address = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        return PeerLost(f"{where}: could not join the process group at {address} within "
                        f"CAPRO_DIST_TIMEOUT={limit} s ({detail}); check that all {world_size} "
                        "processes were started and can reach that address")
    if re.search(r"time[d ]?\s*out", detail, re.IGNORECASE):
        what = (f"another process did not answer within CAPRO_DIST_TIMEOUT={limit} s (it hung, or "
                "was busy longer: then raise CAPRO_DIST_TIMEOUT)")
    else:
        what = "another process died (see its log for why)"
    return PeerLost(f"{where}: a collective failed because {what}: {detail}. Rerun the same command "
                    "with --resume to continue from the last checkpoint")


@contextlib.contextmanager
def peer_failures(rank: int, world_size: int, *, joined: bool = True) -> Iterator[None]:
    """Re-raise a failed collective inside the block as :class:`PeerLost` (see :func:`peer_lost`)."""
    try:
        yield
    except RuntimeError as exc:
        err = peer_lost(exc, rank=rank, world_size=world_size, joined=joined)
        if err is None:
            raise
        raise err from exc


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
