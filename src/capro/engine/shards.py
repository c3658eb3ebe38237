"""A row-wise pass over N samples shared by the ranks, through files: each rank writes its slice,
rank 0 assembles the slices into one ``.npy``.

Rank ``r`` of ``W`` takes :func:`~capro.utils.dist.shard_range` (contiguous, cut at batch
boundaries, so its batches are those one process would form) and writes
``<out>.shards/<tag>/<start>-<stop>.npz`` (its rows and the samples it could not read). A slice
already on disk under the same ``tag`` (a fingerprint of what computes it) is loaded instead of
recomputed, so an interrupted pass resumes slice by slice. Rank 0 then copies the slices, in
order and one at a time, into ``out`` (float32 [N, F]; memory holds one slice, never N x F) and
removes the slice files.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from capro.utils.dist import barrier, broadcast_object, is_main, shard_range, world_size
from capro.utils.io import atomic_write, open_npy, publish_npy

Slice = tuple[np.ndarray, list[tuple[int, str]]]
"""A slice's rows [len(rows), F] float32 (F may be 0 when none could be read) and its unreadable
(position, reason) pairs."""


def shard_dir(out: Path, tag: str) -> Path:
    return out.with_name(out.name + ".shards") / tag


def write_sharded(out: Path, n: int, *, align: int, tag: str,
                  compute: Callable[[range], Slice]) -> list[tuple[int, str]]:
    """Compute ``out`` ([N, F] float32 ``.npy``) slice by slice on every rank; every rank must call.

    ``compute(rows)`` returns the rows of positions ``rows``. Returns, on every rank, the
    unreadable (position, reason) pairs of all slices in position order. Rows of unreadable
    samples are whatever ``compute`` put there (zeros by convention). When no sample at all could
    be read nothing is written.
    """
    parts = shard_dir(out, tag)
    rows = shard_range(n, align=align)
    mine = parts / f"{rows.start}-{rows.stop}.npz"
    if len(rows) and not mine.is_file():
        values, bad = compute(rows)
        mine.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(mine, "wb", encoding=None) as fh:
            np.savez(fh, rows=np.asarray(values, np.float32), bad_pos=np.array([i for i, _ in bad], np.int64),
                     bad_reason=np.array([r for _, r in bad], dtype=str))
    barrier()
    skipped: list[tuple[int, str]] = []
    if is_main():
        slices = [shard_range(n, align=align, rank_=r, world=world_size()) for r in range(world_size())]
        skipped = _assemble(out, n, parts, [s for s in slices if len(s)])
    return broadcast_object(skipped)


def _assemble(out: Path, n: int, parts: Path, slices: list[range]) -> list[tuple[int, str]]:
    """Rank 0: the slice files into ``out`` in order, each read once; their unreadable samples.
    Rows of a slice with no readable sample stay zero; with none anywhere nothing is written."""
    skipped: list[tuple[int, str]] = []
    mm = None
    for s in slices:
        with np.load(parts / f"{s.start}-{s.stop}.npz") as z:
            block = z["rows"]
            skipped += list(zip(z["bad_pos"].tolist(), z["bad_reason"].tolist()))
        if block.shape[1] == 0:
            continue
        if mm is None:
            mm = open_npy(out, (n, block.shape[1]))  # zero-filled
        mm[s.start:s.stop] = block
    if mm is not None:
        publish_npy(mm, out)
        shutil.rmtree(parts.parent, ignore_errors=True)
    return skipped
