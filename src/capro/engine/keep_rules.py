"""Choosing the offline keep rule per run on the validation split (D19, ``clean.keep_rules``).

The right keep rule depends on the data: a strict one (keep a sample only when its label is the
best-scored class) helps where the noise is mostly look-alike classes and hurts where it is
mostly out-of-distribution images. Offline cleaning scores the training set once, and the
frozen-encoder fine-tune is short, so each candidate rule gets its own stage 3a and 3b, all
started from the same stage-2 weights, and the one whose fine-tuned model scores best on the
validation split is published as the run's stage 3a / 3b.

Rules (single-label): ``paper`` (keep when s[y] >= 1/C), ``th<x>`` (s[y] >= x, e.g. ``th0.3``),
``top<k>`` (y among the k best-scored classes, e.g. ``top1``), or both joined by ``+``
(``th0.3+top1``).
"""

from __future__ import annotations

import dataclasses

from capro.config import MethodConfig, parse_rule

__all__ = ["choose", "parse_rule", "rule_method"]


def rule_method(method: MethodConfig, rule: str) -> MethodConfig:
    """``method`` with the keep rule ``rule``."""
    return dataclasses.replace(method, **parse_rule(rule))


def choose(scores: dict[str, float | None]) -> str:
    """The rule with the highest validation score; ties and missing scores go to the earlier."""
    best, best_score = next(iter(scores)), None
    for rule, score in scores.items():
        if score is not None and (best_score is None or score > best_score):
            best, best_score = rule, score
    return best
