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
from typing import Any

from torch import Tensor
from torch.optim import Optimizer


def epoch_lr(epoch: int, *, base_lr: float, warmup: int, epochs: int) -> float:
    """Learning rate of ``epoch`` (0-based)."""
    if warmup > 0 and epoch <= warmup:
        return base_lr * max(epoch, 1) / warmup
    span = max(epochs - warmup, 1)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / span))


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set every parameter group's rate to ``lr`` times its ``lr_scale`` (1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def param_groups(named: list[tuple[str, Tensor]], *, backbone_scale: float,
                 backbone_prefix: str = "encoder_q.") -> list[dict[str, Any]]:
    """Optimizer groups: the heads at the stage's rate, the backbone (``backbone_prefix``) at
    ``backbone_scale`` times it (a pretrained backbone fine-tuned more gently than new heads).

    One group when the scale is 1 (the optimizer state of runs before the option stays loadable);
    else heads first, so ``param_groups[0]`` carries the stage's own rate.
    """
    if backbone_scale == 1.0:
        return [{"params": [p for _, p in named], "lr_scale": 1.0}]
    heads = [p for k, p in named if not k.startswith(backbone_prefix)]
    backbone = [p for k, p in named if k.startswith(backbone_prefix)]
    return [{"params": heads, "lr_scale": 1.0}, {"params": backbone, "lr_scale": backbone_scale}]
