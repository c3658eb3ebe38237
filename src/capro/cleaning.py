"""Online (and offline) noise cleaning: keep, relabel or drop each sample (docs/method.md).

Shapes: B samples, C classes. Scores mix the classifier with the prototype similarity; the rules
are pure tensor operations, no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CleanResult",
    "MultiLabelCleanResult",
    "clean_batch",
    "clean_batch_multilabel",
    "cleaning_scores",
]


@torch.no_grad()
def cleaning_scores(logits: Tensor, proto_logits: Tensor, *, alpha: float,
                    log_prior: Tensor | None = None) -> Tensor:
    """Cleaning score s [B, C] = ``alpha softmax(logits - log_prior) + (1 - alpha) softmax(proto_logits)``.

    logits [B, C] from the main classifier; proto_logits [B, C] = z . P^T / T, already divided
    by the temperature by the caller (so this function takes no temperature). ``log_prior`` [C]
    (``method.logit_adjust``: tau log of each class's share of the web labels, from
    :func:`class_log_prior`) takes the label prior out of the classifier's share; None (the
    paper) or a uniform prior leaves the scores as they are.
    """
    if log_prior is not None:
        logits = logits - log_prior.to(logits)
    return alpha * F.softmax(logits, dim=1) + (1.0 - alpha) * F.softmax(proto_logits.to(logits), dim=1)


def class_log_prior(labels: Tensor, num_classes: int, *, tau: float = 1.0) -> Tensor:
    """``tau * log`` of each class's share of ``labels`` [N] (int, -1 = none) as [C] float32,
    add-one smoothed so a class without labels stays finite."""
    counts = torch.bincount(labels[labels >= 0].long(), minlength=num_classes).float() + 1.0
    return tau * torch.log(counts / counts.sum())


@dataclass
class CleanResult:
    """Outcome of :func:`clean_batch`; every field has B rows."""

    target: Tensor
    """[B] long: corrected labels (argmax for relabelled samples, else the input label)."""
    clean: Tensor
    """[B] bool: the clean set S = kept | relabeled."""
    kept: Tensor
    """[B] bool: kept with its own label (s[y] >= 1/C (or ``keep_th``, within the ``keep_top`` best),
    a confident argmax == y, or an anchor)."""
    relabeled: Tensor
    """[B] bool: max s >= tau and argmax != y, not an anchor (the label changed)."""


@torch.no_grad()
def clean_batch(
    scores: Tensor, target: Tensor, *, pseudo_th: float, anchor: Tensor | None = None,
    keep_th: float | None = None, keep_top: int = 0,
) -> CleanResult:
    """Apply the single-label cleaning rules to scores [B, C] and web labels target [B].

    Relabel first: if ``max_c s_c >= pseudo_th`` the label becomes the argmax (a relabel counts
    only when the label changes; a confident argmax equal to y is "kept"). Otherwise keep when
    ``s[y] >= keep_th`` (note >=; ``None`` = 1/C, the paper's rule) and, when ``keep_top`` > 0,
    y is among the ``keep_top`` best-scored classes (fewer than ``keep_top`` classes score
    strictly higher; 1 = the scores agree with the label). Anchors (bool [B]) are always kept
    and never relabelled. ``kept`` and ``relabeled`` are disjoint.
    """
    num_classes = scores.shape[1]
    keep_th = 1.0 / num_classes if keep_th is None else keep_th
    target = target.long()
    max_s, argmax = scores.max(dim=1)
    confident = max_s >= pseudo_th
    own = scores.gather(1, target.unsqueeze(1)).squeeze(1)
    is_anchor = (
        torch.zeros_like(confident) if anchor is None else anchor.to(device=scores.device).bool()
    )
    relabeled = confident & (argmax != target) & ~is_anchor
    plausible = own >= keep_th
    if keep_top > 0:
        plausible &= (scores > own.unsqueeze(1)).sum(dim=1) < keep_top
    kept = ~relabeled & (plausible | (confident & (argmax == target)) | is_anchor)
    new_target = torch.where(relabeled, argmax, target)
    return CleanResult(target=new_target, clean=kept | relabeled, kept=kept, relabeled=relabeled)


@dataclass
class MultiLabelCleanResult:
    """Outcome of :func:`clean_batch_multilabel`."""

    target: Tensor
    """[B, C] float in {1, 0, -1}: corrected multi-hot labels, -1 = removed entry."""
    clean: Tensor
    """[B] bool: the sample has at least one kept or flipped class."""
    flipped: Tensor
    """[B, C] bool: entries whose label changed (0 -> 1 or 1 -> 0)."""


@torch.no_grad()
def clean_batch_multilabel(
    pos_scores: Tensor,
    target: Tensor,
    *,
    pseudo_th: float,
    num_classes: int,
    anchor: Tensor | None = None,
) -> MultiLabelCleanResult:
    """Per-class multi-label cleaning.

    pos_scores [B, C] = ``alpha sigmoid(p) + (1 - alpha) softmax(proto)[pos]``; s_neg = 1 - s_pos.
    target [B, C] in {1, 0, -1}. Per entry: keep a positive if s_pos >= 1/C, keep a negative if
    s_neg >= 1/C; flip 0 -> 1 if s_pos >= tau and 1 -> 0 if s_neg >= tau (a flip wins over a keep).
    Anchor entries (int8 [B, C], != 0: positive or negative anchors) are always kept and never
    flipped. Entries neither kept nor flipped, and input entries already -1 that are not
    anchors, become -1.
    """
    s_pos = pos_scores
    s_neg = 1.0 - s_pos
    inv_c = 1.0 / num_classes
    is_pos = target == 1
    is_neg = target == 0
    is_anchor = (
        torch.zeros_like(is_pos) if anchor is None else (anchor.to(device=target.device) != 0)
    )
    keep = (is_pos & (s_pos >= inv_c)) | (is_neg & (s_neg >= inv_c)) | is_anchor
    flip_up = is_neg & (s_pos >= pseudo_th) & ~is_anchor
    flip_down = is_pos & (s_neg >= pseudo_th) & ~is_anchor
    flipped = flip_up | flip_down
    valid = keep | flipped
    new_target = target.clone()
    new_target[flip_up] = 1
    new_target[flip_down] = 0
    new_target[~valid] = -1
    return MultiLabelCleanResult(target=new_target, clean=valid.any(dim=1), flipped=flipped)
