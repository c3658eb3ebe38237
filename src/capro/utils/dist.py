"""Thin helpers over ``torch.distributed`` that are no-ops in a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


@torch.no_grad()
def concat_all_gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` [n, ...] from every rank along dim 0 -> [world * n, ...].

    All-gather carries no gradient: use only for keys, features and labels that are detached.
    Every rank must pass the same shape.
    """
    if not is_dist():
        return t
    out = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, dim=0)


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` as rank ``src`` has it, on every rank (itself when not distributed)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_range(n: int, *, align: int = 1, rank_: int | None = None, world: int | None = None) -> range:
    """This rank's contiguous slice of ``range(n)`` for a pass sharded over the ranks.

    Slices are cut at multiples of ``align`` (a batch size), so every rank's batches are the
    batches one process would form, and outputs match a one-process pass exactly. Rank ``r``
    of ``w`` gets blocks ``[r * B / w, (r + 1) * B / w)`` of the ``B = ceil(n / align)``
    blocks; a rank may get none.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    blocks = -(-n // max(align, 1))
    lo, hi = r * blocks // w, (r + 1) * blocks // w
    return range(min(lo * align, n), min(hi * align, n))


def gather_objects(obj: object, *, to_main: bool = False) -> list[object]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when not distributed);
    with ``to_main`` on rank 0 only (the other ranks get ``[]`` and hold nothing more)."""
    if not is_dist():
        return [obj]
    out: list[object] = [None] * world_size()
    if to_main:
        dist.gather_object(obj, out if is_main() else None, dst=0)
        return out if is_main() else []
    dist.all_gather_object(out, obj)
    return out
