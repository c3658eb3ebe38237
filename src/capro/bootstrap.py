"""Soft targets for the auxiliary classifier: collective bootstrapping and the baselines.

docs/method.md, "Stage 2" (single-label and multi-label). Shapes: B batch samples,
Q queue keys, C classes, D embedding dims. Every target is computed without gradient and
returned detached, in at least float32 (half-precision inputs are promoted, so AMP does not
round the 1e-7 floor or the Q-term sums away); single-label targets have rows that sum to 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "collective_target",
    "collective_target_multilabel",
    "key_predictions",
    "key_predictions_multilabel",
    "label_smoothing_target",
    "ncr_target",
    "self_target",
]


def _wd(t: Tensor) -> torch.dtype:
    """Working dtype: at least float32."""
    return torch.promote_types(t.dtype, torch.float32)


@torch.no_grad()
def key_predictions(aux_logits: Tensor, proto_logits: Tensor | None, *, alpha: float) -> Tensor:
    """Each key's class prediction [Q, C]: ``alpha softmax(aux) + (1 - alpha) softmax(proto)``.

    aux_logits [Q, C] from the auxiliary classifier on the keys; proto_logits [Q, C] = keys . P^T / T,
    or None while the prototypes are not initialised (their term is then uniform, 1/C).
    """
    aux = F.softmax(aux_logits.to(_wd(aux_logits)), dim=1)
    if proto_logits is None:
        proto = torch.full_like(aux, 1.0 / aux.shape[1])
    else:
        proto = F.softmax(proto_logits.to(aux), dim=1)
    return alpha * aux + (1.0 - alpha) * proto


def _key_weights(z: Tensor, keys: Tensor) -> Tensor:
    """Linear (not softmax) look-up weights [B, Q]: ``a = clamp(z k^T, 0, 1) + 1e-7``, rows / sum."""
    z = z.to(_wd(z))
    a = (z @ keys.to(z).t()).clamp(0.0, 1.0) + 1e-7
    return a / a.sum(dim=1, keepdim=True)


@torch.no_grad()
def collective_target(z: Tensor, keys: Tensor, key_probs: Tensor) -> Tensor:
    """Collective bootstrapping target b [B, C] (single-label).

    z [B, D] query embeddings, keys [Q, D] the queue after this step's enqueue, key_probs [Q, C]
    from :func:`key_predictions`. ``b = w @ key_probs`` with the linear look-up weights, clamped
    to [0, 1] and renormalised so each row sums to 1.
    """
    w = _key_weights(z, keys)
    b = (w @ key_probs.to(w)).clamp(0.0, 1.0)
    return (b / b.sum(dim=1, keepdim=True)).detach()


@torch.no_grad()
def self_target(logits: Tensor) -> Tensor:
    """Bootstrapping with the model's own prediction: softmax(logits) [B, C], detached."""
    return F.softmax(logits.to(_wd(logits)), dim=1).detach()


@torch.no_grad()
def label_smoothing_target(target: Tensor, num_classes: int, *, eps: float = 0.1) -> Tensor:
    """Label smoothing [B, C] float32: ``(1 - eps) one_hot(target) + eps / C``."""
    one_hot = F.one_hot(target.long(), num_classes).to(torch.float32)
    return (1.0 - eps) * one_hot + eps / num_classes


@torch.no_grad()
def ncr_target(z: Tensor, probs: Tensor, *, k: int = 10, temperature: float = 2.0) -> Tensor:
    """Neighbour-consistency target [B, C] from the batch (the NCR baseline, ``use_soft_label`` 5).

    For each sample, take its k most cosine-similar *other* samples of the batch (itself
    excluded; k is clipped to B - 1), weight them by ``softmax(similarity / temperature)`` over
    those k, and average their predictions ``probs`` [B, C] (softmax rows for single-label,
    per-class sigmoids for multi-label). With B = 1 there is no neighbour and the sample's own
    prediction is returned.

    Reading of NCR (Iscen et al., CVPR 2022): the target is a similarity-weighted mean of the
    neighbours' predictions. The paper and the released baseline weight neighbours linearly by
    their non-negative cosine, sum(w) = 1, and put the temperature 2 on the logits' softmax
    (the released version also keeps the sample itself among its 10 neighbours). Here the
    temperature sits on the neighbour weights instead, which works the same way for
    single- and multi-label predictions; with cosines in [-1, 1] and T = 2 both weightings are
    close to uniform over the k neighbours.
    """
    n = z.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return probs.detach().to(_wd(probs)).clone()
    zn = F.normalize(z.to(_wd(z)), dim=1)
    sim = zn @ zn.t()
    sim.fill_diagonal_(float("-inf"))
    top_sim, top_idx = sim.topk(k, dim=1)
    w = F.softmax(top_sim / temperature, dim=1)
    target = (w.unsqueeze(2) * probs.to(w)[top_idx]).sum(dim=1)
    return target.detach()


@torch.no_grad()
def key_predictions_multilabel(
    aux_logits: Tensor, proto_pos_prob: Tensor | None, *, alpha: float
) -> Tensor:
    """Each key's per-class positive probability [Q, C]: ``alpha sigmoid(aux) + (1 - alpha) p_pos``.

    aux_logits [Q, C]; proto_pos_prob [Q, C] = softmax over (negative, positive) prototype
    logits, positive entry; None while the prototypes are not initialised (then 0.5).
    """
    aux = torch.sigmoid(aux_logits.to(_wd(aux_logits)))
    proto = torch.full_like(aux, 0.5) if proto_pos_prob is None else proto_pos_prob.to(aux)
    return alpha * aux + (1.0 - alpha) * proto


@torch.no_grad()
def collective_target_multilabel(z: Tensor, keys: Tensor, key_probs: Tensor) -> Tensor:
    """Multi-label collective target [B, C]: ``clamp(w @ key_probs, 0, 1)``, no renormalisation.

    z [B, D], keys [Q, D], key_probs [Q, C] from :func:`key_predictions_multilabel`.
    """
    w = _key_weights(z, keys)
    return (w @ key_probs.to(w)).clamp(0.0, 1.0).detach()
