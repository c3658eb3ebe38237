"""Noise metrics against a simulator's ground truth: detection, relabel accuracy, anchor purity.

Shapes: N samples. Labels are class ids; a true label of -1 marks an out-of-distribution
sample, which is always noisy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["anchor_precision", "memorisation", "noise_detection", "relabel_accuracy"]


def noise_detection(web_label: np.ndarray, true_label: np.ndarray, flagged: np.ndarray) -> dict:
    """How well ``flagged`` [N] bool (removed or relabelled) finds the noisy samples.

    noisy := true_label != web_label (true -1, out-of-distribution, is noisy). Returns
    {"precision", "recall", "f1"} of flagged vs. noisy (0 when undefined, as sklearn with
    ``zero_division=0``), plus "n", "n_noisy", "n_flagged" and "noise_rate".
    """
    web = np.asarray(web_label).reshape(-1)
    true = np.asarray(true_label).reshape(-1)
    flag = np.asarray(flagged, dtype=bool).reshape(-1)
    noisy = true != web
    tp = int((flag & noisy).sum())
    n_flag, n_noisy = int(flag.sum()), int(noisy.sum())
    precision = tp / n_flag if n_flag else 0.0
    recall = tp / n_noisy if n_noisy else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "n": int(web.size),
        "n_noisy": n_noisy,
        "n_flagged": n_flag,
        "noise_rate": n_noisy / web.size if web.size else 0.0,
    }


def relabel_accuracy(true_label: np.ndarray, new_label: np.ndarray, relabeled: np.ndarray) -> float | None:
    """Share of relabelled samples whose new label is their true class; None if none relabelled."""
    mask = np.asarray(relabeled, dtype=bool).reshape(-1)
    if not mask.any():
        return None
    true = np.asarray(true_label).reshape(-1)[mask]
    new = np.asarray(new_label).reshape(-1)[mask]
    return float(np.mean(true == new))


def anchor_precision(web_label: np.ndarray, true_label: np.ndarray, is_anchor: np.ndarray) -> float | None:
    """Share of anchors whose web label is their true class; None when there is no anchor."""
    mask = np.asarray(is_anchor, dtype=bool).reshape(-1)
    if not mask.any():
        return None
    web = np.asarray(web_label).reshape(-1)[mask]
    true = np.asarray(true_label).reshape(-1)[mask]
    return float(np.mean(web == true))


def memorisation(pred: np.ndarray, web_label: np.ndarray, true_label: np.ndarray) -> dict:
    """How far a model fits the wrong web labels of its own training rows.

    ``pred`` [N]: the model's top-1 class per training row. Returns {"noisy_fit": share of noisy
    rows (true != web, out-of-distribution included) predicted as their wrong web label,
    "noisy_true": share of in-distribution noisy rows predicted as their true class,
    "clean_fit": share of clean rows predicted as their (correct) label, "n_noisy", "n_clean"};
    a share is None when its rows are absent.
    """
    pred = np.asarray(pred).reshape(-1)
    web = np.asarray(web_label).reshape(-1)
    true = np.asarray(true_label).reshape(-1)
    noisy = true != web
    ind = noisy & (true >= 0)

    def share(mask: np.ndarray, target: np.ndarray) -> float | None:
        return float(np.mean(pred[mask] == target[mask])) if mask.any() else None

    return {"noisy_fit": share(noisy, web), "noisy_true": share(ind, true), "clean_fit": share(~noisy, web),
            "n_noisy": int(noisy.sum()), "n_clean": int((~noisy).sum())}
