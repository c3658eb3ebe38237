"""Full-state checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint is a plain dict of tensors and Python scalars/containers (model and optimiser state
dicts, AMP scaler state, epoch and step counters, RNG states, the online-cleaning state), so the
safe unpickler loads it. RNG states are stored as tensors and lists (:func:`rng_state`).

A full disk (or quota) while saving is a one-line :class:`CaproError` naming the file; the
temporary file is removed and the previous checkpoint stays loadable, so ``--resume`` continues
from it once space is freed.

Examples:
    >>> save_checkpoint(path, {"model": model.state_dict(), "epoch": 3, "rng": rng_state()})
    >>> ckpt = load_checkpoint(path)
    >>> set_rng_state(ckpt["rng"])
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from capro.errors import CaproError
from capro.utils.io import atomic_write

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class _KeepWriteError:
    """A binary file that remembers the first ``OSError`` of a ``write``: ``torch.save`` reports a
    failed write as an unrelated ``RuntimeError`` ("unexpected pos"), which hides a full disk."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _disk_full(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        exc = exc.__cause__
    return False


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save`` into a temporary file renamed over ``path`` (never a truncated file).

    A full disk is a :class:`CaproError` naming ``path``; the previous file at ``path`` is kept.
    """
    path = Path(path)
    try:
        with atomic_write(path, "wb") as fh:
            sink = _KeepWriteError(fh)
            try:
                torch.save(state, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None
    except (CaproError, OSError) as exc:
        if not _disk_full(exc):
            raise
        raise CaproError(f"{path}: disk full while writing the checkpoint; the previous checkpoint "
                         "was kept. Free disk space (or point --out elsewhere), then rerun with "
                         "--resume") from exc


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load on CPU with ``weights_only=True``; a corrupt or foreign file is a :class:`CaproError`."""
    path = Path(path)
    if not path.is_file():
        raise CaproError(f"{path}: checkpoint not found; run the stage first (or drop --resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CaproError(f"{path}: not a loadable capro checkpoint ({str(exc).splitlines()[0]}); "
                         "delete it and rerun the stage") from exc


def check_resume_batch(ck: dict[str, Any], path: str | os.PathLike, *, global_batch: int,
                       world_size: int) -> None:
    """Check that a training checkpoint can resume with this launch's ``global_batch``.

    The epoch's sample order is cut into global batches independently of the number of
    processes (:class:`~capro.engine.loop.EpochSampler`), so a checkpoint written by W processes
    resumes exactly with W' processes whenever the global batch is the same (W and W' both divide
    it). When the global batch changed (W' does not divide it), an epoch boundary still resumes,
    with a warning (the remaining epochs see other batches than the uninterrupted run would);
    a checkpoint written mid-epoch is refused, because the rest of that epoch cannot be cut the
    same way. Checkpoints without ``global_batch`` (older capro) are not checked.
    """
    old = ck.get("global_batch")
    if old is None or int(old) == global_batch:
        return
    was = f"{old} ({ck.get('world_size', '?')} processes)"
    if int(ck.get("step_in_epoch", 0)) == 0:
        warnings.warn(f"{path}: written with a global batch of {was}; this launch trains with "
                      f"{global_batch} ({world_size} processes), so the result will differ from an "
                      "uninterrupted run", stacklevel=2)
        return
    raise CaproError(f"{path}: written in the middle of epoch {ck.get('epoch')} with a global batch "
                     f"of {was}, but {world_size} processes give a global batch of {global_batch}; "
                     f"resume with {ck.get('world_size', 'the same number of')} processes, or "
                     "rerun without --resume to restart the stage")


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) RNG states as tensors and plain lists."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
