"""Threads per process: the affinity mask's cores over the node's processes, unless told."""

import os

import torch

from capro.engine.threads import available_cores, set_threads, thread_count


def test_thread_count_rules():
    assert thread_count(0, environ={}, cores=8) == (8, "8 cores in this process's CPU affinity mask")
    n, why = thread_count(0, environ={"LOCAL_WORLD_SIZE": "4"}, cores=8)
    assert n == 2 and "/ 4 processes on this node" in why
    assert thread_count(0, environ={"LOCAL_WORLD_SIZE": "4"}, cores=2)[0] == 1  # never 0
    assert thread_count(0, environ={"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "4"}, cores=8) == (3, "OMP_NUM_THREADS")
    assert thread_count(5, environ={"OMP_NUM_THREADS": "3"}, cores=8) == (5, "train.threads")
    assert thread_count(0, environ={"OMP_NUM_THREADS": "", "LOCAL_WORLD_SIZE": "x"}, cores=6)[0] == 6


def test_available_cores_is_the_affinity_mask():
    assert available_cores() == len(os.sched_getaffinity(0))


def test_set_threads_applies_to_torch():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == (1, "train.threads") and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
