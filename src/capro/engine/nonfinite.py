"""Catch a non-finite (nan / inf) loss before it reaches the weights.

:func:`check_finite` looks at every loss term of one step. When all are finite it returns True;
otherwise it raises :class:`NonFiniteLoss` naming the stage, epoch, step and term
(``policy="stop"``), or returns False so the loop skips the batch (``policy="skip"``, set by
``train.on_nonfinite``). Under DDP the per-term verdict is all-reduced first, so every rank stops
or skips the same step even when only one rank saw the bad value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist

from capro.errors import CaproError

POLICIES = ("stop", "skip")
_KINDS = ("finite", "inf", "-inf", "nan")  # codes 0..3; a higher code wins when reduced


class NonFiniteLoss(CaproError):
    """A loss term is nan or inf. ``bad`` maps each offending term to ``"nan"``, ``"inf"`` or ``"-inf"``."""

    def __init__(self, message: str, *, stage: str, epoch: int, step: int, bad: dict[str, str]) -> None:
        super().__init__(message)
        self.stage, self.epoch, self.step, self.bad = stage, epoch, step, bad


def _kind(value: torch.Tensor | float) -> int:
    """Code of the worst value in ``value``: 0 finite, 1 inf, 2 -inf, 3 nan."""
    t = torch.as_tensor(value).detach()
    if not t.is_floating_point():
        return 0
    if torch.isnan(t).any():
        return 3
    if torch.isposinf(t).any():
        return 1
    if torch.isneginf(t).any():
        return 2
    return 0


def nonfinite_terms(terms: Mapping[str, torch.Tensor | float], *, sync: bool = True) -> dict[str, str]:
    """The non-finite terms of ``terms`` -> ``"nan"`` / ``"inf"`` / ``"-inf"``, in ``terms`` order.

    With ``sync`` and an initialised process group the codes are all-reduced (MAX) over ranks;
    every rank must then pass the same keys.
    """
    names = list(terms)
    codes = [_kind(terms[k]) for k in names]
    if sync and names and dist.is_available() and dist.is_initialized():
        first = terms[names[0]]
        device = first.device if isinstance(first, torch.Tensor) else torch.device("cpu")
        t = torch.tensor(codes, dtype=torch.int32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        codes = [int(c) for c in t.tolist()]
    return {k: _KINDS[c] for k, c in zip(names, codes) if c}


def _describe(bad: dict[str, str]) -> str:
    if len(bad) == 1:
        ((name, kind),) = bad.items()
        return f"loss term '{name}' is {kind}"
    return "loss terms " + ", ".join(f"'{k}' ({v})" for k, v in bad.items()) + " are not finite"


def check_finite(terms: Mapping[str, torch.Tensor | float], *, step: int, epoch: int, stage: str,
                 policy: str = "stop", sync: bool = True,
                 warn: Callable[[str], None] | None = None) -> bool:
    """True when every loss term is finite; else raise (``policy="stop"``) or return False (``"skip"``).

    Args:
        terms: loss name -> value (a tensor of any shape, or a float); include the weighted total
            (e.g. under ``"loss"``) so an overflow in the sum is caught too.
        step, epoch, stage: where the run is, for the message (``stage`` like ``"stage2"``).
        policy: ``"stop"`` or ``"skip"`` (``train.on_nonfinite``).
        sync: all-reduce the verdict over DDP ranks (see :func:`nonfinite_terms`).
        warn: called with a one-line message when a batch is skipped (e.g. a rank-0 logger).

    Raises:
        NonFiniteLoss: ``"stage2 epoch 3 step 120: loss term 'proto' is nan; lower the learning
        rate, check the data, or set train.on_nonfinite=skip"``.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    bad = nonfinite_terms(terms, sync=sync)
    if not bad:
        return True
    where = f"{stage} epoch {epoch} step {step}: {_describe(bad)}"
    if policy == "skip":
        if warn is not None:
            warn(f"{where}; batch skipped (train.on_nonfinite=skip)")
        return False
    raise NonFiniteLoss(f"{where}; lower the learning rate, check the data, or set "
                        "train.on_nonfinite=skip", stage=stage, epoch=epoch, step=step, bad=bad)
