"""Single-label classification metrics: top-k accuracy and the confusion matrix.

Shapes: N samples, C classes. Inputs may be numpy arrays or torch tensors (any device).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["confusion_matrix", "topk_accuracy"]


def _to_numpy(x: object) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def topk_accuracy(
    logits: torch.Tensor | np.ndarray, target: object, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracies {"top1": .., "top5": ..} in [0, 1] for logits [N, C], target [N].

    k is clipped to C (the key keeps the requested k). Ties are broken by class index, as a
    stable sort of the scores would: a sample is correct at k when fewer than k classes score
    higher than its target or score equal with a lower index. N = 0 gives NaN.
    """
    scores = _to_numpy(logits).astype(np.float64, copy=False)
    y = _to_numpy(target).astype(np.int64).reshape(-1)
    n, c = scores.shape
    if n == 0:
        return {f"top{k}": float("nan") for k in ks}
    own = scores[np.arange(n), y][:, None]
    lower_index = np.arange(c)[None, :] < y[:, None]
    rank = (scores > own).sum(axis=1) + ((scores == own) & lower_index).sum(axis=1)
    return {f"top{k}": float(np.mean(rank < min(k, c))) for k in ks}


def confusion_matrix(pred: object, target: object, num_classes: int) -> np.ndarray:
    """Counts [C, C] int64: row = true class, column = predicted class."""
    p = _to_numpy(pred).astype(np.int64).reshape(-1)
    t = _to_numpy(target).astype(np.int64).reshape(-1)
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)
