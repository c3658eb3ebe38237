"""Small heads of the CAPro model: projection, reconstructor, auxiliary classifiers, per-class projection.

Shapes: B samples, F backbone feature dims, D embedding dims (low_dim), C classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ClassProjection",
    "NormLinear",
    "PerClassLinear",
    "projection_head",
    "reconstructor_head",
]


def projection_head(feature_dim: int, low_dim: int) -> nn.Sequential:
    """Linear(F, F) -> ReLU -> Linear(F, D); the caller L2-normalises the output."""
    return nn.Sequential(
        nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True), nn.Linear(feature_dim, low_dim)
    )


def reconstructor_head(low_dim: int, feature_dim: int) -> nn.Sequential:
    """Linear(D, F) -> ReLU -> Linear(F, F): maps an embedding back to the backbone feature."""
    return nn.Sequential(
        nn.Linear(low_dim, feature_dim), nn.ReLU(inplace=True), nn.Linear(feature_dim, feature_dim)
    )


class NormLinear(nn.Module):
    """L2-normalise the input [N, D], then Linear(D, C, bias=False) -> logits [N, C]."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(F.normalize(z, dim=-1))


class ClassProjection(nn.Module):
    """One Linear(D, D) per class, evaluated as one batched einsum, then L2-normalised.

    Maps z [N, D] -> per-class embeddings [N, C, D]. ``weight`` [C, D_out, D_in], ``bias`` [C, D].
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(num_classes, dim, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        zc = torch.einsum("ni,coi->nco", z, self.weight) + self.bias
        return F.normalize(zc, dim=-1)


class PerClassLinear(nn.Module):
    """One logit per class from that class's embedding: h [N, C, D] -> [N, C].

    logit[n, c] = <normalise(h[n, c]), weight[c]>, ``weight`` [C, D] (no bias).
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ncd,cd->nc", F.normalize(h, dim=-1), self.weight)
