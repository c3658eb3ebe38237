"""CAPro's training losses as pure functions (docs/method.md).

Shapes: B samples, C classes, D embedding dims, Q queue keys. Every loss returns a scalar
tensor. ``weight`` [B] is a per-sample weight: the loss is ``mean_i w_i * loss_i`` (D5: a true
per-sample weighting, never the released [B, B] outer product). An empty batch (B = 0) gives a
zero that still carries the graph, so ``backward()`` works and adds nothing.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "auxiliary_loss",
    "classification_loss",
    "instance_loss",
    "mixup_loss",
    "multilabel_bce",
    "multilabel_prototype_loss",
    "pos_weights",
    "prototype_loss",
    "reconstruction_loss",
    "soft_bce",
    "soft_target_loss",
]


def _weighted_mean(per_sample: Tensor, weight: Tensor | None) -> Tensor:
    """``mean_i w_i * l_i`` over a [B] vector; zero (graph kept) when B = 0."""
    if per_sample.numel() == 0:
        return per_sample.sum() * 0
    if weight is None:
        return per_sample.mean()
    return (per_sample * weight.to(per_sample)).mean()


def _masked_mean(per_entry: Tensor, mask: Tensor, weight: Tensor | None) -> Tensor:
    """``sum_ic w_i m_ic l_ic / sum_ic m_ic`` over [B, C]; zero (graph kept) when no entry is valid."""
    m = mask.to(per_entry)
    n_valid = m.sum().clamp(min=1)
    if weight is not None:
        m = m * weight.to(per_entry).unsqueeze(1)
    return (per_entry * m).sum() / n_valid


def classification_loss(logits: Tensor, target: Tensor, *, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy. logits [B, C], target [B] long."""
    return _weighted_mean(F.cross_entropy(logits, target, reduction="none"), weight)


def _soft_ce(logits: Tensor, soft: Tensor) -> Tensor:
    """Per-sample ``-sum_c soft_c log_softmax(logits)_c`` -> [B]; no gradient through ``soft``."""
    return -(soft.detach().to(logits) * F.log_softmax(logits, dim=1)).sum(dim=1)


def soft_target_loss(logits: Tensor, soft: Tensor, *, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy against a soft target: ``mean_i -sum_c soft_ic log_softmax(logits)_ic``.

    logits [B, C], soft [B, C] (rows sum to 1; treated as a constant).
    """
    return _weighted_mean(_soft_ce(logits, soft), weight)


def auxiliary_loss(
    logits: Tensor,
    target: Tensor,
    soft: Tensor | None,
    *,
    beta: float,
    weight: Tensor | None = None,
) -> Tensor:
    """Auxiliary-classifier loss ``(1 - beta) * CE(logits, target) + beta * soft_target_loss``.

    logits [B, C], target [B] long, soft [B, C] or None (plain CE, whatever ``beta``).
    """
    ce = F.cross_entropy(logits, target, reduction="none")
    if soft is None:
        return _weighted_mean(ce, weight)
    return _weighted_mean((1.0 - beta) * ce + beta * _soft_ce(logits, soft), weight)


def instance_loss(q: Tensor, k: Tensor, queue: Tensor, *, temperature: float) -> Tensor:
    """MoCo InfoNCE over the full batch: ``CE([q.k, q.queue^T] / T, 0)``.

    q, k [B, D] L2-normalised queries and keys, queue [Q, D] (the queue before this step's
    enqueue). The key side carries no gradient.
    """
    k = k.detach().to(q)
    queue = queue.detach().to(q)
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.t()
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return _weighted_mean(F.cross_entropy(logits, labels, reduction="none"), None)


def prototype_loss(
    z: Tensor,
    prototypes: Tensor,
    target: Tensor,
    *,
    temperature: float,
    weight: Tensor | None = None,
) -> Tensor:
    """Prototypical contrastive loss ``CE(z P^T / T, target)``.

    z [B, D], prototypes [C, D] (treated as constants), target [B] long.
    """
    logits = z @ prototypes.detach().to(z).t() / temperature
    return _weighted_mean(F.cross_entropy(logits, target, reduction="none"), weight)


def reconstruction_loss(recon: Tensor, feats: Tensor, *, weight: Tensor | None = None) -> Tensor:
    """MSE between ``recon`` [B, D] and ``feats.detach()`` [B, D]: mean over D, then over samples."""
    per_sample = ((recon - feats.detach().to(recon)) ** 2).mean(dim=1)
    return _weighted_mean(per_sample, weight)


def mixup_loss(logits: Tensor, target_a: Tensor, target_b: Tensor, lam: float) -> Tensor:
    """Mix-up loss ``lam * CE(logits, a) + (1 - lam) * CE(logits, b)``. logits [B, C]."""
    ce_a = F.cross_entropy(logits, target_a, reduction="none")
    ce_b = F.cross_entropy(logits, target_b, reduction="none")
    return _weighted_mean(lam * ce_a + (1.0 - lam) * ce_b, None)


def multilabel_bce(
    logits: Tensor,
    target: Tensor,
    *,
    pos_weight: Tensor | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """Multi-label BCE-with-logits; entries with target -1 (removed labels) are ignored.

    logits [B, C], target [B, C] in {1, 0, -1}, pos_weight [C] (scales the positive term).
    Each sample's loss is the mean over its valid entries (0 when it has none); the result is
    the weighted mean of those over the B samples.
    """
    valid = target >= 0
    t = target.clamp(min=0).to(logits)
    pw = None if pos_weight is None else pos_weight.to(logits)
    per_entry = F.binary_cross_entropy_with_logits(logits, t, pos_weight=pw, reduction="none")
    per_sample = (per_entry * valid.to(logits)).sum(dim=1) / valid.sum(dim=1).clamp(min=1).to(
        logits
    )
    return _weighted_mean(per_sample, weight)


def soft_bce(
    logits: Tensor,
    soft: Tensor,
    *,
    mask: Tensor | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """Full soft BCE (D6): ``-[b log s(q) + (1 - b) log(1 - s(q))]`` with s the sigmoid.

    logits [B, C], soft [B, C] in [0, 1] (constant), mask [B, C] bool (None = all entries).
    Masked mean: ``sum_ic w_i m_ic l_ic / sum_ic m_ic``.
    """
    b = soft.detach().to(logits)
    per_entry = F.binary_cross_entropy_with_logits(logits, b, reduction="none")
    if mask is None:
        mask = torch.ones_like(per_entry, dtype=torch.bool)
    return _masked_mean(per_entry, mask, weight)


def multilabel_prototype_loss(
    proto_logits: Tensor,
    target: Tensor,
    *,
    class_weight: Tensor | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """2-way (negative vs. positive prototype) CE per (sample, class), masked mean.

    proto_logits [B, C, 2] (index 0 = negative prototype, 1 = positive), target [B, C] in
    {1, 0, -1} (-1 ignored), class_weight [2] scales each entry by the weight of its target
    polarity. The sum over valid entries is divided by their count (not by the summed class
    weights, unlike ``F.cross_entropy``'s weighted mean).
    """
    b, c = target.shape
    valid = target >= 0
    t = target.clamp(min=0).long().reshape(-1)
    cw = None if class_weight is None else class_weight.to(proto_logits)
    per_entry = F.cross_entropy(proto_logits.reshape(b * c, 2), t, weight=cw, reduction="none")
    return _masked_mean(per_entry.reshape(b, c), valid, weight)


def pos_weights(label_counts: Tensor | np.ndarray, n: int) -> Tensor:
    """Per-class positive weights ``sqrt((N - n_c) / n_c)`` [C] float32, with n_c clamped to >= 1."""
    counts = torch.as_tensor(label_counts).to(torch.float64)
    ratio = (float(n) - counts).clamp(min=0) / counts.clamp(min=1)
    return ratio.sqrt().to(torch.float32)
