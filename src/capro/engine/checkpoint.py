"""Full-state checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint is a plain dict of tensors and Python scalars/containers (model and optimiser state
dicts, AMP scaler state, epoch and step counters, RNG states, the online-cleaning state), so the
safe unpickler loads it. RNG states are stored as tensors and lists (:func:`rng_state`).

Examples:
    >>> save_checkpoint(path, {"model": model.state_dict(), "epoch": 3, "rng": rng_state()})
    >>> ckpt = load_checkpoint(path)
    >>> set_rng_state(ckpt["rng"])
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capro.errors import CaproError
from capro.utils.io import atomic_write


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save`` into a temporary file renamed over ``path`` (never a truncated file)."""
    with atomic_write(Path(path), "wb") as fh:
        torch.save(state, fh)


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
