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
import re

from capro.config import MethodConfig
from capro.errors import ConfigError

_PART = re.compile(r"^(?:th(?P<th>0(?:\.\d+)?|1(?:\.0+)?)|top(?P<top>[1-9]\d*))$")


def parse_rule(rule: str, *, key: str = "clean.keep_rules") -> dict[str, float | int | None]:
    """``{"keep_th": float | None, "keep_top": int}`` of a rule name (see the module docstring)."""
    if rule == "paper":
        return {"keep_th": None, "keep_top": 0}
    out: dict[str, float | int | None] = {"keep_th": None, "keep_top": 0}
    for part in rule.split("+"):
        m = _PART.match(part)
        if m is None:
            raise ConfigError(f"{key}: {rule!r} is not a keep rule; use paper, th<x> "
                              "(e.g. th0.3), top<k> (e.g. top1) or both joined by + (th0.3+top1)")
        if m["th"] is not None:
            out["keep_th"] = float(m["th"])
        else:
            out["keep_top"] = int(m["top"])
    return out


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
