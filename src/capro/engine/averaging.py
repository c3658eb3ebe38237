"""An exponential moving average of a model's weights, the model a stage scores and hands on (D22).

``stage*.ema_epochs = E > 0`` keeps, beside the trained weights, an average updated after every
optimiser step with decay ``d = 1 - 1 / (E * steps_per_epoch)``: the weights of roughly the last
E epochs. The t-th update (from 0) uses ``min(d, t / (t + 1))``, so while the stage is younger
than E epochs the average is the plain mean of its steps so far, and the weights the stage
started from never linger in it. Validation scores the average, ``best.pt`` stores it, and the
stage ends on it. Training itself, online cleaning included, runs on the live weights.

Averaged: the floating-point parameters and batch-norm running statistics of every submodule but
the momentum key encoder and key head (themselves a momentum copy). The queue, the prototypes and
the other buffers are the live model's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["WeightAverage", "averaged_keys", "ema_decay"]

_NOT_AVERAGED = ("encoder_k.", "projection_k.")
_BN_STATS = ("running_mean", "running_var")


def ema_horizon(ema_epochs: float, epochs: int, max_share: float) -> float:
    """Epochs the average of a stage of ``epochs`` epochs spans: ``ema_epochs``, at most
    ``max_share`` of the stage (D24); 0 = no average."""
    return min(float(ema_epochs), max_share * epochs)


def ema_decay(ema_epochs: float, steps_per_epoch: int) -> float:
    """Per-step decay of an average over about ``ema_epochs`` epochs of ``steps_per_epoch`` steps."""
    return max(0.0, 1.0 - 1.0 / max(ema_epochs * steps_per_epoch, 1.0))


def averaged_keys(model: nn.Module) -> list[str]:
    """``model.state_dict()`` keys the average covers (see the module doc), in state-dict order."""
    params = {k for k, p in model.named_parameters() if p.is_floating_point()}
    stats = {k for k, b in model.named_buffers() if k.endswith(_BN_STATS) and b.is_floating_point()}
    return [k for k in model.state_dict() if (k in params or k in stats) and not k.startswith(_NOT_AVERAGED)]


class WeightAverage:
    """``shadow[k] <- decay * shadow[k] + (1 - decay) * live[k]`` over :func:`averaged_keys`."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.keys = averaged_keys(model)
        self.updates = 0
        live = model.state_dict()
        self.shadow = {k: live[k].detach().clone() for k in self.keys}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the live weights of ``model`` into the average (after an optimiser step)."""
        live = model.state_dict()
        decay = min(self.decay, self.updates / (self.updates + 1))
        torch._foreach_lerp_(list(self.shadow.values()), [live[k] for k in self.keys], 1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the averaged entries of ``model`` with the average."""
        live = model.state_dict()
        for k in self.keys:
            live[k].copy_(self.shadow[k])

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` carries the average inside the block and its live weights again after it."""
        live = model.state_dict()
        saved = {k: live[k].detach().clone() for k in self.keys}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k in self.keys:
                    live[k].copy_(saved[k])

    def state_dict(self) -> dict:
        """{"weights": {key: tensor}, "updates": int}."""
        return {"weights": dict(self.shadow), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved average (same keys); tensors keep this average's device."""
        missing = set(self.keys) - set(state["weights"])
        if missing:
            raise KeyError(f"weight average lacks {sorted(missing)[:3]}")
        with torch.no_grad():
            for k in self.keys:
                self.shadow[k].copy_(state["weights"][k])
        self.updates = int(state["updates"])
