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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capro.data.layout import Record, Split, available_splits
from capro.utils.io import read_jsonl

HOLDOUT = "holdout"


@dataclass
class Validation:
    """The selecting split, the training split without its held-out rows, and those rows."""

    split: str | None
    """Split that selects (``val``, ``holdout``, ...), or None."""
    train: Split
    holdout: list[Record]

    @property
    def labels(self) -> str:
        return "web (noisy)" if self.split == HOLDOUT else "clean" if self.split else "none"

    def describe(self) -> str:
        """One line for the run's log."""
        if self.split is None:
            return "validation: no validation split; every stage keeps its last epoch"
        if self.split == HOLDOUT:
            return (f"validation: no val.jsonl; selecting epochs on {len(self.holdout)} training rows held "
                    f"out of training (train.holdout), scored against their web labels (noisy)")
        return f"validation: selecting epochs on {self.split}.jsonl (labels taken as clean)"


def holdout_rows(records: list[Record], *, share: float, most: int, seed: int) -> np.ndarray:
    """Sorted positions of the held-out rows: ``share`` of each web label's rows (rounded, at
    least one of every label with two rows or more), at most ``most`` in all, drawn with ``seed``."""
    if share <= 0 or most <= 0 or len(records) < 2:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x401D])
    labels = np.array([r.label for r in records])
    picked: list[np.ndarray] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n = min(len(rows) - 1, max(1, round(share * len(rows))))
        if n > 0:
            picked.append(rng.choice(rows, size=n, replace=False))
    out = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    if len(out) > most:
        out = np.sort(rng.choice(out, size=most, replace=False))
    return out.astype(np.int64)


def resolve_validation(cfg, data_root: str | os.PathLike, train: Split) -> Validation:
    """The validation plan of a run (pure: the same inputs always hold out the same rows)."""
    tc = cfg.train
    present = set(available_splits(Path(data_root))) - {"train"}
    if tc.val_split == "none" or tc.val_every == 0:
        return Validation(None, train, [])
    if tc.val_split != "auto":
        return Validation(tc.val_split if tc.val_split in present else None, train, [])
    if "val" in present:
        return Validation("val", train, [])
    held = holdout_rows(train.records, share=tc.holdout, most=tc.holdout_max, seed=cfg.seed)
    if held.size == 0:
        return Validation(None, train, [])
    keep = np.setdiff1d(np.arange(len(train.records)), held)
    return Validation(HOLDOUT, dataclasses.replace(train, records=[train.records[i] for i in keep]),
                      [train.records[i] for i in held])


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
