"""Scoring after every epoch and keeping the best one (``train.val_split``, ``train.keep``).

After each training epoch the model is scored on the validation split (single-label top-1,
multi-label macro mAP) and on any ``train.curve_splits``; the scores become ``log.csv`` columns
named ``<split>_<metric>``. Every rank scores its slice of each split and the scores are
gathered, so all ranks hold the same scores and agree on the best epoch. Only the validation score selects: when it beats every earlier epoch
of the stage, the weights and the online-cleaning state are written to ``RUN/<stage>/best.pt``,
and with ``train.keep=best`` the stage ends with them. Curve splits (the benchmarks put ``test``
there) are recorded for plots and never select anything (D7).

With ``train.select_window`` = w > 1 (D23; the default when held-out rows with web labels
select), an epoch is judged by the mean of its selecting score and those of the w - 1 scored
epochs before it (``log.csv`` column ``<split>_<metric>_mean<w>``): the best of a hundred noisy
scores is mostly the luckiest one, and the mean of neighbouring epochs of a smoothly changing
(averaged, D22) model is not. Only epochs with a full window compete (a stage with fewer scored
epochs than w uses all of them as its window, so it keeps its last epoch): a mean over the
stage's first one or two epochs would be as lucky as a single score.

Scoring runs under a forked RNG, so a run with validation trains exactly like one without.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from capro.engine.evaluate import collect, metrics_from_logits


def score_key(multi_label: bool) -> str:
    """The metric that scores an epoch: ``top1`` (fraction) or ``mAP_macro`` (%)."""
    return "mAP_macro" if multi_label else "top1"


def paired_error(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of the difference of two top-1 accuracies measured on the same rows.

    ``a``, ``b``: [N] bool, whether each candidate got each row right. Only the rows where they
    disagree carry information (McNemar): with n_ab rows only ``a`` got right and n_ba only ``b``,
    the difference is (n_ab - n_ba) / N with standard error sqrt(n_ab + n_ba - (n_ab - n_ba)^2 / N) / N."""
    n = len(a)
    ab, ba = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return float(np.sqrt(max(ab + ba - (ab - ba) ** 2 / n, 0.0)) / n) if n else 0.0


CLOSE_CALL_P = 0.05
"""A choice whose lead has a McNemar p-value at or above this is a close call."""


def close_call(scores: dict[str, float | None], chosen: str,
               correct: dict[str, np.ndarray | None]) -> dict[str, Any]:
    """How far a choice made on the selecting split (D18, D19, D21) is from a coin flip.

    ``scores``: each candidate's selecting score (top-1); ``correct``: each candidate's [N] bool
    per-row correctness on that split. The two best candidates answered the same rows, so only
    the ``disagree`` rows where exactly one is right decide between them (McNemar). ``margin``:
    ``chosen``'s score minus the runner-up's; ``standard_error``: :func:`paired_error`;
    ``p_value``: McNemar's two-sided test with continuity correction,
    z = (|margin| N - 1) / sqrt(disagree); ``close_call``: p >= :data:`CLOSE_CALL_P` (the lead
    is not significant: another sample of validation rows could well have chosen the other way).
    {} without two scores or without per-row correctness (multi-label)."""
    others = {k: v for k, v in scores.items() if k != chosen and v is not None}
    if scores.get(chosen) is None or not others:
        return {}
    runner = max(others, key=others.get)
    a, b = correct.get(chosen), correct.get(runner)
    if a is None or b is None or len(a) != len(b) or not len(a):
        return {}
    n, disagree = len(a), int(np.sum(a != b))
    margin = float(scores[chosen]) - float(others[runner])
    z = max(abs(margin) * n - 1.0, 0.0) / np.sqrt(disagree) if disagree else 0.0
    p = float(math.erfc(z / math.sqrt(2.0)))
    return {"margin": round(margin, 6), "standard_error": round(paired_error(a, b), 6), "runner_up": runner,
            "disagree": disagree, "rows": n, "p_value": round(p, 4), "close_call": bool(p >= CLOSE_CALL_P)}


def describe_close_call(c: dict[str, Any]) -> str:
    """``"; a close call: ..."`` for the run's log when ``c`` (:func:`close_call`) is one, else ""."""
    if not c.get("close_call"):
        return ""
    return (f"; a close call: {c['margin']:.4f} ahead of {c['runner_up']}, not significant "
            f"(McNemar p = {c['p_value']:.2f}; the two disagree on {c['disagree']} of {c['rows']} rows)")


@dataclass
class EpochScorer:
    """Scores a model on the selecting split and the curve splits (every rank calls, each scores
    its slice; all get the same scores).

    ``select``: the split whose score chooses the kept epoch (None: nothing selects);
    ``splits``: split -> dataset, ``select`` first.
    """

    splits: dict[str, Dataset]
    select: str | None
    multi_label: bool
    every: int = 1
    window: int = 1
    """Trailing scored epochs the selecting score averages (D23; :class:`BestEpoch`)."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 256
    workers: int = 0
    amp: torch.dtype | None = None

    @property
    def metric(self) -> str:
        return score_key(self.multi_label)

    @property
    def column(self) -> str | None:
        """The ``log.csv`` column that selects, e.g. ``val_top1``."""
        return None if self.select is None else f"{self.select}_{self.metric}"

    def window_for(self, epochs: int) -> int:
        """The window of a stage of ``epochs`` epochs: ``window``, or all its scored epochs when
        it has fewer (at least 1)."""
        return max(1, min(self.window, sum(self.due(e, epochs) for e in range(epochs))))

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether epoch ``epoch`` (0-based) of ``epochs`` is scored."""
        return self.every > 0 and ((epoch + 1) % self.every == 0 or epoch + 1 == epochs)

    def select_rows(self, model: torch.nn.Module) -> tuple[float | None, np.ndarray | None]:
        """``model``'s score on the selecting split and, single-label, its per-row correctness
        ([N] bool: the top-1 class is the row's label; None for multi-label), from one scoring pass
        (every rank calls; the global RNG is left untouched). (None, None) without a selecting split."""
        if self.select is None:
            return None, None
        with torch.random.fork_rng(devices=[]):
            logits, targets = collect(model, self.splits[self.select], device=self.device,
                                      batch_size=self.batch_size, workers=self.workers, amp=self.amp,
                                      desc=f"score {self.select}", sharded=True)
        if not len(targets):
            return None, None
        score = float(metrics_from_logits(logits, targets, multi_label=self.multi_label)[self.metric])
        return score, None if self.multi_label else logits.argmax(1) == targets

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """{"<split>_<metric>": score} for every split; the global RNG is left untouched."""
        out = {}
        with torch.random.fork_rng(devices=[]):
            for split, ds in self.splits.items():
                logits, targets = collect(model, ds, device=self.device, batch_size=self.batch_size,
                                          workers=self.workers, amp=self.amp, desc=f"score {split}",
                                          sharded=True)
                if len(targets):
                    m = metrics_from_logits(logits, targets, multi_label=self.multi_label)
                    out[f"{split}_{self.metric}"] = float(m[self.metric])
        return out


@dataclass
class BestEpoch:
    """The best selecting score seen so far in a stage (kept in ``last.pt`` for resume).

    ``window``: the score of an epoch is the mean of the last ``window`` scores passed to
    :meth:`judge`, and an epoch without that many (the stage's first ``window - 1`` scored ones)
    is not judged; ``recent`` holds them."""

    epoch: int | None = None
    score: float | None = None
    window: int = 1
    recent: list[float] = field(default_factory=list)

    def judge(self, score: float | None) -> float | None:
        """Record this epoch's raw ``score``; return the score it is judged by: the trailing mean,
        or None before the window is full or when the score is missing or NaN (which leaves the
        window as it was)."""
        if score is None or score != score:
            return None
        self.recent = [*self.recent, float(score)][-self.window:]
        return sum(self.recent) / self.window if len(self.recent) == self.window else None

    def improves(self, score: float | None) -> bool:
        """Whether ``score`` beats the best so far (ties keep the earlier epoch)."""
        if score is None or score != score:  # missing or NaN
            return False
        return self.score is None or score > self.score

    def update(self, epoch: int, score: float) -> None:
        self.epoch, self.score = epoch, score

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "score": self.score, "recent": list(self.recent)}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, window: int = 1) -> BestEpoch:
        """From :meth:`state_dict` (a checkpoint from before D23 has no ``recent``)."""
        return cls(**{**(state or {}), "window": window})
