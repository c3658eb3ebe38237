"""Per-epoch learning-rate schedule: linear warm-up then cosine (docs/method.md).

``lr(e) = base * max(e, 1) / warmup`` for ``e <= warmup`` (so epochs 0 and 1 share a rate), else
``base * 0.5 * (1 + cos(pi * (e - warmup) / (epochs - warmup)))``. Without warm-up the cosine runs
from epoch 0. The rate is set once at the start of every epoch.

Examples:
    >>> epoch_lr(0, base_lr=0.1, warmup=10, epochs=120)
    0.01
"""

from __future__ import annotations

import math

from torch.optim import Optimizer


def epoch_lr(epoch: int, *, base_lr: float, warmup: int, epochs: int) -> float:
    """Learning rate of ``epoch`` (0-based)."""
    if warmup > 0 and epoch <= warmup:
        return base_lr * max(epoch, 1) / warmup
    span = max(epochs - warmup, 1)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / span))


def set_lr(optimizer: Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
