"""Open-set recognition metrics: known classes plus one "unknown" class, swept over
confidence thresholds."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import auc, roc_auc_score

from capro.errors import DataError

__all__ = ["openset_metrics"]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def openset_metrics(
    max_prob: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    *,
    num_known: int,
    thresholds: np.ndarray | None = None,
) -> dict:
    """C-P / C-R / C-F1 over ``num_known + 1`` classes (the unknown class is index num_known).

    max_prob [N] the top softmax probability, pred [N] the predicted known class in
    [0, num_known), target [N] the true known class or -1 for an unseen class. At threshold th a
    sample is predicted ``pred`` when ``max_prob > th`` and "unknown" otherwise. Per class,
    precision = TP / (TP + FP) and recall = TP / (TP + FN), 0 when the denominator is 0 (the
    released script adds 1e-4 instead; the two differ by about 1e-4 relative). C-P and C-R are
    means over all ``num_known + 1`` classes and C-F1 = 2 CP CR / (CP + CR), all in %.

    Returns {"thresholds" [T], "cp" [T], "cr" [T], "cf1" [T] (%), "mean_cf1" (%, mean over the
    thresholds), "pr_auc" (area under the (C-R, C-P) curve with both as fractions in [0, 1]:
    ``sklearn.metrics.auc`` on the points sorted by recall, ties kept in threshold order),
    "auroc" (probability that a known-class sample has a higher ``max_prob`` than an unknown one,
    ties counting half; None unless both kinds are present)}. ``thresholds`` defaults to
    ``np.linspace(0.01, 0.99, 100)``.

    PR-AUC reads the curve only between the fixed thresholds, so it also measures calibration: a
    model whose top probability exceeds 0.99 on most samples, known or not, spans a narrow range
    of recall and scores near 0 however well it ranks them. AUROC depends on the ranking alone.
    """
    prob = np.asarray(max_prob, dtype=np.float64).reshape(-1)
    p = np.asarray(pred, dtype=np.int64).reshape(-1)
    t = np.asarray(target, dtype=np.int64).reshape(-1)
    if not prob.shape == p.shape == t.shape:
        raise DataError(
            f"open-set inputs differ in length: max_prob {prob.size}, pred {p.size}, "
            f"target {t.size}; pass one value per sample"
        )
    if p.size and (p.min() < 0 or p.max() >= num_known):
        raise DataError(f"open-set predictions must lie in [0, {num_known}); got {p.min()}..{p.max()}")
    if t.size and (t.min() < -1 or t.max() >= num_known):
        raise DataError(
            f"open-set targets must be -1 (unknown) or lie in [0, {num_known}); got {t.min()}..{t.max()}"
        )
    ths = np.linspace(0.01, 0.99, 100) if thresholds is None else np.asarray(thresholds, float)
    n_cls = num_known + 1
    truth = np.where(t < 0, num_known, t)
    gt_count = np.bincount(truth, minlength=n_cls).astype(np.float64)

    cp, cr = np.empty(len(ths)), np.empty(len(ths))
    for j, th in enumerate(ths):
        eff = np.where(prob > th, p, num_known)
        tp = np.bincount(eff[eff == truth], minlength=n_cls).astype(np.float64)
        pred_count = np.bincount(eff, minlength=n_cls).astype(np.float64)
        cp[j] = _safe_div(tp, pred_count).mean() * 100.0
        cr[j] = _safe_div(tp, gt_count).mean() * 100.0
    cf1 = _safe_div(2.0 * cp * cr, cp + cr)
    order = np.argsort(cr, kind="stable")
    pr_auc = float(auc(cr[order] / 100.0, cp[order] / 100.0)) if len(ths) > 1 else 0.0
    known = t >= 0
    auroc = float(roc_auc_score(known, prob)) if 0 < known.sum() < known.size else None
    return {
        "mean_cf1": float(cf1.mean()),
        "pr_auc": pr_auc,
        "auroc": auroc,
        "thresholds": ths,
        "cp": cp,
        "cr": cr,
        "cf1": cf1,
    }
