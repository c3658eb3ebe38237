"""Run a function on N real gloo processes (torch.multiprocessing spawn) and collect results."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn: Callable, args: tuple, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        queue.put((rank, fn(rank, *args)))
    finally:
        dist.destroy_process_group()


def run_gloo(fn: Callable, world: int = 2, args: tuple = ()) -> list:
    """``[fn(rank, *args) for rank in range(world)]``, each call in its own gloo process.

    ``fn`` must be a module-level function (it is pickled) and return something picklable.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(world, _free_port(), fn, args, queue), nprocs=world,
                       join=True, start_method="spawn")
    results = dict(queue.get() for _ in range(world))
    return [results[r] for r in range(world)]
