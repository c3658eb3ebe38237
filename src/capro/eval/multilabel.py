"""Multi-label metrics for NUS-WIDE: C-P/C-R/C-F1, O-P/O-R/O-F1 (top-3) and mAP (D9)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

__all__ = ["multilabel_metrics"]

_EPS = 1e-4
_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1", "mAP_micro", "mAP_macro")


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray, *, top: int = 3) -> dict[str, float]:
    """Metrics in % for scores [N, C] and multi-hot ground truth targets [N, C] (> 0 = positive).

    As the released ``precision_recall_map`` computes them, reproduced to 1e-9:

    - predictions: the ``top`` highest-scoring classes per sample (ties by class index);
    - C-P / C-R: mean over all C classes of correct / (predicted + 1e-4) and
      correct / (GT + 1e-4); a class never predicted has precision 0 and a class with no
      positive has recall 0, and both still count in the mean;
    - O-P / O-R: mean over all N samples of correct / (top + 1e-4) and correct / (|GT| + 1e-4);
      a sample with no GT label has recall 0 and still counts;
    - CF1 / OF1: harmonic mean of the averaged precision and recall (0 when both are 0);
    - mAP_micro: sklearn ``average_precision_score(average="micro")``;
    - mAP_macro: mean of the per-class AP over the classes with at least one positive.

    No sample (N = 0) gives NaN for every metric.
    """
    s = np.asarray(scores, dtype=np.float64)
    gt = np.asarray(targets) > 0
    n, c = s.shape
    if n == 0:
        return dict.fromkeys(_KEYS, float("nan"))
    k = min(top, c)
    pred_idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    pred = np.zeros((n, c), dtype=bool)
    pred[np.arange(n)[:, None], pred_idx] = True
    correct = pred & gt

    c_p = float(np.mean(correct.sum(0) / (pred.sum(0) + _EPS))) * 100.0
    c_r = float(np.mean(correct.sum(0) / (gt.sum(0) + _EPS))) * 100.0
    o_p = float(np.mean(correct.sum(1) / (k + _EPS))) * 100.0
    o_r = float(np.mean(correct.sum(1) / (gt.sum(1) + _EPS))) * 100.0

    has_pos = gt.any(axis=0)
    per_class_ap = [average_precision_score(gt[:, j], s[:, j]) for j in np.flatnonzero(has_pos)]
    return {
        "CP": c_p,
        "CR": c_r,
        "CF1": _f1(c_p, c_r),
        "OP": o_p,
        "OR": o_r,
        "OF1": _f1(o_p, o_r),
        "mAP_micro": float(average_precision_score(gt, s, average="micro")) * 100.0,
        "mAP_macro": float(np.mean(per_class_ap)) * 100.0 if per_class_ap else float("nan"),
    }


def _f1(p: float, r: float) -> float:
    return 2.0 * p * r / (p + r) if p + r > 0 else 0.0
