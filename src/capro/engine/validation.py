"""Which split selects the kept epochs (``train.val_split``), and a held-out one when DATA has none.

``train.val_split=auto`` (the default) scores ``val`` when ``DATA/val.jsonl`` exists (clean
labels). Crawls often come without one; then a seeded, per-class share ``train.holdout`` of the
training rows (at most ``train.holdout_max``) is held out of training and scored against its web
labels: a noisy validation split, which still ranks epochs because the noise is the same for
every epoch. The held-out rows are listed in ``RUN/holdout.jsonl``; they are not trained on,
cleaned or exported. A named split (``val``, ``test``, ...) is used as given; ``none`` scores
nothing, so every stage keeps its last epoch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capro.config import HOLDOUT_WINDOW
from capro.data.layout import Record, Split, available_splits
from capro.utils.io import read_jsonl

HOLDOUT = "holdout"
HOLDOUT_DRAW = "holdout-draw"
"""The name under which the texts of every training row are encoded to draw a text-verified
held-out split (``RUN/text/texts_holdout-draw.npy``)."""


@dataclass
class Validation:
    """The selecting split, the training split without its held-out rows, and those rows."""

    split: str | None
    """Split that selects (``val``, ``holdout``, ...), or None."""
    train: Split
    holdout: list[Record]
    verified: int | None = None
    """Held-out rows whose text prefers their web label (D20), when that was asked."""
    window: int = 1
    """Trailing scored epochs the selecting score averages (D23, :func:`select_window`)."""

    @property
    def labels(self) -> str:
        return "web (noisy)" if self.split == HOLDOUT else "clean" if self.split else "none"

    def describe(self) -> str:
        """One line for the run's log."""
        if self.split is None:
            return "validation: no validation split; every stage keeps its last epoch"
        mean = "" if self.window == 1 else (f"; each epoch judged by the mean of its last {self.window} "
                                             f"scores (train.select_window)")
        if self.split == HOLDOUT:
            which = "" if self.verified is None else (
                f", {self.verified} of them rows whose web text prefers their web label (train.holdout_from=text)")
            return (f"validation: no val.jsonl; selecting epochs on {len(self.holdout)} training rows held "
                    f"out of training (train.holdout){which}, scored against their web labels (noisy){mean}")
        return f"validation: selecting epochs on {self.split}.jsonl (labels taken as clean){mean}"


def select_window(cfg, split: str | None) -> int:
    """D23: how many trailing scored epochs the selecting score of ``split`` averages
    (``train.select_window``; auto: :data:`~capro.config.HOLDOUT_WINDOW` for held-out rows scored
    against web labels, 1 for a split with clean labels)."""
    if cfg.train.select_window is not None:
        return int(cfg.train.select_window)
    return HOLDOUT_WINDOW if split == HOLDOUT else 1


def holdout_rows(records: list[Record], *, share: float, most: int, seed: int,
                 eligible: np.ndarray | None = None) -> np.ndarray:
    """Sorted positions of the held-out rows: ``share`` of each web label's rows (rounded, at
    least one of every label with two rows or more), at most ``most`` in all, drawn with ``seed``.

    ``eligible`` ([N] bool, D20): draw each label's rows from its eligible ones only (all of them
    when fewer are eligible than its share); a label with no eligible row draws from all its rows.
    """
    if share <= 0 or most <= 0 or len(records) < 2:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x401D])
    labels = np.array([r.label for r in records])
    picked: list[np.ndarray] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n = min(len(rows) - 1, max(1, round(share * len(rows))))
        if eligible is not None and eligible[rows].any():
            rows = rows[eligible[rows]]
            n = min(n, len(rows))
        if n > 0:
            picked.append(rng.choice(rows, size=n, replace=False))
    out = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    if len(out) > most:
        out = np.sort(rng.choice(out, size=most, replace=False))
    return out.astype(np.int64)


def resolve_validation(cfg, data_root: str | os.PathLike, train: Split, *,
                       eligible: Callable[[], np.ndarray] | None = None) -> Validation:
    """The validation plan of a run (pure: the same inputs always hold out the same rows).

    ``eligible``: called only when rows are held out under ``train.holdout_from=text``, it gives
    the [N] bool rows that may be (:func:`text_verified`)."""
    plan = _plan(cfg, data_root, train, eligible)
    return dataclasses.replace(plan, window=select_window(cfg, plan.split)) if plan.split else plan


def _plan(cfg, data_root: str | os.PathLike, train: Split,
          eligible: Callable[[], np.ndarray] | None) -> Validation:
    """:func:`resolve_validation` before the window."""
    tc = cfg.train
    present = set(available_splits(Path(data_root))) - {"train"}
    if tc.val_split == "none" or tc.val_every == 0:
        return Validation(None, train, [])
    if tc.val_split != "auto":
        return Validation(tc.val_split if tc.val_split in present else None, train, [])
    if "val" in present:
        return Validation("val", train, [])
    may = eligible() if eligible is not None and tc.holdout_from == "text" and not train.multi_label else None
    held = holdout_rows(train.records, share=tc.holdout, most=tc.holdout_max, seed=cfg.seed, eligible=may)
    if held.size == 0:
        return Validation(None, train, [])
    keep = np.setdiff1d(np.arange(len(train.records)), held)
    return Validation(HOLDOUT, dataclasses.replace(train, records=[train.records[i] for i in keep]),
                      [train.records[i] for i in held], None if may is None else int(may[held].sum()))


def text_verified(cfg, train: Split, run_dir: str | os.PathLike) -> np.ndarray:
    """[N] bool: the training row's own (cleaned) web text is closer to its web label's textual
    prototype than to any other class's (margin > 0, as :func:`capro.graph.match.text_margins`).

    Encodes the texts of every training row into ``RUN/text/texts_holdout-draw.npy`` (every rank
    calls; the encoding is shared, :func:`capro.text.pipeline.encode_split_texts`)."""
    from capro.graph.match import text_margins_of
    from capro.text.pipeline import class_prototypes, encode_split_texts
    from capro.utils.dist import barrier, is_main

    emb = encode_split_texts(cfg, dataclasses.replace(train, name=HOLDOUT_DRAW), run_dir)
    if is_main():  # writes RUN/text/prototypes.npy; the other ranks then read it
        class_prototypes(cfg, train.classes, run_dir)
    barrier()
    protos = class_prototypes(cfg, train.classes, run_dir)
    labels = np.array([r.label for r in train.records])
    margin, _ = text_margins_of(np.asarray(emb), protos, labels)
    with np.errstate(invalid="ignore"):
        return margin > 0


def held_out_ids(run_dir: str | os.PathLike) -> set[str]:
    """Ids of the training rows a finished run held out as its validation split
    (``RUN/holdout.jsonl``; empty when it held none out)."""
    path = Path(run_dir) / "holdout.jsonl"
    return {r["id"] for r in read_jsonl(path)} if path.is_file() else set()


def trained_split(train: Split, run_dir: str | os.PathLike) -> Split:
    """``train`` without the rows a finished run held out: the rows its stages trained on, for
    the commands that pick a run up later."""
    held = held_out_ids(run_dir)
    if not held:
        return train
    return dataclasses.replace(train, records=[r for r in train.records if r.id not in held])
