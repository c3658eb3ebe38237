"""How many CPU threads a training process takes, so that processes sharing a machine do not
slow each other down.

By default torch starts one thread per core in every process. Two processes on the same cores
then run twice as many busy threads as there are cores and both slow down many times over
(measured: 10-30x on 2 cores, BENCHMARKS.md "Threads that share the machine"). capro takes the
cores of the process's CPU affinity mask divided by the processes torchrun started on this node
(``LOCAL_WORLD_SIZE``), unless ``OMP_NUM_THREADS`` or ``train.threads`` says otherwise.

Independent runs on the same cores (a sweep, seeds side by side) each take every core of their
mask; what keeps them from collapsing is ``OMP_WAIT_POLICY=PASSIVE``, which ``import capro`` sets
unless the environment already does (it must be set before torch is first imported): idle
OpenMP threads then sleep instead of spinning. Measured on 2 cores: two plain-CE runs side by
side took 0.7 s per epoch each against 0.45 s alone, instead of 1.3-2.0 s with spinning threads.
Pinning each run to its own cores (``taskset -c 0 capro run ...``) or ``OMP_NUM_THREADS=1``
gives each run its share exactly.
"""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def thread_count(requested: int = 0, *, environ: dict[str, str] | None = None,
                 cores: int | None = None) -> tuple[int, str]:
    """(threads, why) for this process: ``requested`` (``train.threads``) when > 0, else
    ``OMP_NUM_THREADS`` when set, else the available cores divided by ``LOCAL_WORLD_SIZE``
    (at least 1)."""
    env = os.environ if environ is None else environ
    if requested > 0:
        return requested, "train.threads"
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    cores = available_cores() if cores is None else cores
    local = env.get("LOCAL_WORLD_SIZE", "").strip()
    local_ranks = int(local) if local.isdigit() and int(local) > 0 else 1
    why = f"{cores} cores in this process's CPU affinity mask"
    if local_ranks > 1:
        why += f" / {local_ranks} processes on this node"
    return max(1, cores // local_ranks), why


def set_threads(requested: int = 0) -> tuple[int, str]:
    """Apply :func:`thread_count` to torch's intra-op pool; returns (threads, why)."""
    n, why = thread_count(requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n, why
