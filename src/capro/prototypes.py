"""Visual prototypes: initialisation from anchors and vectorised momentum updates (D3).

docs/method.md, "Stage 2". Shapes: N samples, C classes, D dims. Functions
return new tensors and never modify their inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "init_prototypes",
    "init_prototypes_multilabel",
    "momentum_update",
    "momentum_update_multilabel",
]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


@torch.no_grad()
def init_prototypes(z: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Class prototypes from embeddings z [N, D] and labels [N].

    Returns (P [C, D] = L2-normalised mean of each class's z, present [C] bool). A class with no
    sample gets a zero row and ``present`` False.
    """
    labels = labels.long().to(z.device)
    wd = _work_dtype(z.dtype)
    sums = torch.zeros(num_classes, z.shape[1], dtype=wd, device=z.device)
    sums.index_add_(0, labels, z.to(wd))
    counts = torch.bincount(labels, minlength=num_classes)
    means = sums / counts.clamp(min=1).unsqueeze(1).to(wd)
    return F.normalize(means, dim=1).to(z.dtype), counts > 0


@torch.no_grad()
def momentum_update(prototypes: Tensor, z: Tensor, labels: Tensor, *, momentum: float) -> Tensor:
    """Momentum update of prototypes [C, D] with samples z [N, D] of labels [N], then row L2-norm.

    Equals the sequential rule ``for i in order: P[y_i] = m P[y_i] + (1 - m) z_i`` followed by
    normalising every row (all-zero rows stay zero). Vectorised: for class c with samples
    i_1..i_n in order, ``P_c' = m^n P_c + (1 - m) sum_j m^(n - j) z_{i_j}``, where each sample's
    exponent comes from its rank within its class (a stable sort of the labels).
    """
    num_classes = prototypes.shape[0]
    wd = _work_dtype(prototypes.dtype)
    p = prototypes.to(wd)
    labels = labels.long().to(prototypes.device)
    n = labels.shape[0]
    if n > 0:
        counts = torch.bincount(labels, minlength=num_classes)
        order = torch.sort(labels, stable=True).indices
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(labels)
        rank[order] = torch.arange(n, device=labels.device) - starts[labels[order]]
        exponent = (counts[labels] - 1 - rank).to(wd)
        coef = (1.0 - momentum) * torch.pow(momentum, exponent)
        decay = torch.pow(momentum, counts.to(wd))
        p = decay.unsqueeze(1) * p
        p.index_add_(0, labels, coef.unsqueeze(1) * z.to(device=p.device, dtype=wd))
    return F.normalize(p, dim=1).to(prototypes.dtype)


def _flatten_multilabel(zc: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(z [M, D], row [M]) for every valid (sample, class) entry in sample-major order.

    Row index = 2 c + target, so a [C, 2, D] prototype tensor viewed as [2C, D] is addressed.
    """
    n, c, d = zc.shape
    target = target.to(zc.device)
    valid = (target >= 0).reshape(-1)
    rows = (torch.arange(c, device=zc.device) * 2 + target.long().clamp(min=0)).reshape(-1)
    return zc.reshape(n * c, d)[valid], rows[valid]


@torch.no_grad()
def init_prototypes_multilabel(zc: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Negative/positive prototypes from per-class embeddings zc [N, C, D], target [N, C].

    target in {1, 0, -1} (-1 skipped). Returns (P [C, 2, D], index 0 negative, 1 positive;
    present [C, 2] bool).
    """
    _, c, d = zc.shape
    z, rows = _flatten_multilabel(zc, target)
    p, present = init_prototypes(z, rows, 2 * c)
    return p.reshape(c, 2, d), present.reshape(c, 2)


@torch.no_grad()
def momentum_update_multilabel(
    prototypes: Tensor, zc: Tensor, target: Tensor, *, momentum: float
) -> Tensor:
    """Momentum update of prototypes [C, 2, D] with zc [N, C, D] and target [N, C] in {1, 0, -1}.

    Same sequential semantics as :func:`momentum_update`, per (class, polarity): in sample order,
    ``P[c, y_ic] = m P[c, y_ic] + (1 - m) zc[i, c]``, entries with target -1 skipped; then every
    row is L2-normalised.
    """
    c, two, d = prototypes.shape
    z, rows = _flatten_multilabel(zc, target)
    updated = momentum_update(prototypes.reshape(c * two, d), z, rows, momentum=momentum)
    return updated.reshape(c, two, d)
