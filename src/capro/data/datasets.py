"""Torch datasets over a :class:`~capro.data.layout.Split`.

:class:`TrainDataset` yields two augmented views per image plus the label, the anchor flag and a
per-sample weight; :class:`EvalDataset` yields the deterministic test view. Augmentation is seeded
per (seed, epoch, sample index), so a sample gets the same views whatever the number of loader
workers or processes, and a resumed run sees exactly the views an uninterrupted one would.

Batch fields (B samples, C classes):
    img [B, ch, S, S] weak view · img_aug [B, ch, S, S] strong view (training only) ·
    target [B] long (multi-label [B, C] float multi-hot) · anchor [B] bool ·
    domain [B, C] int8 (multi-label only: +1 positive / -1 negative anchor) · weight [B] float ·
    index [B] long (position in the split)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from capro.config import Config
from capro.data.layout import Record, Split
from capro.data.transforms import eval_transform, strong_transform, weak_transform
from capro.errors import DataError

_MODES = {1: "L", 3: "RGB"}


def load_image(root: str | os.PathLike, rec: Record, channels: int) -> Image.Image:
    """Open ``root/rec.image`` and convert it to ``channels``; DataError naming the file otherwise."""
    path = Path(root) / rec.image
    try:
        with Image.open(path) as im:
            return im.convert(_MODES[channels])
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image of id={rec.id} ({exc}); fix or remove the row, "
                        "or validate with data.skip_bad=true") from exc


def label_targets(records: list[Record], num_classes: int, *, multi_label: bool) -> np.ndarray:
    """Web labels: [N] int64, or [N, C] float32 multi-hot when ``multi_label``."""
    if not multi_label:
        return np.array([r.label for r in records], dtype=np.int64)
    out = np.zeros((len(records), num_classes), dtype=np.float32)
    for i, r in enumerate(records):
        out[i, list(r.labels)] = 1.0
    return out


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that differs for every (seed, epoch, index)."""
    h = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, index & 0xFFFFFFFF])
    return int(h.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class TrainDataset(Dataset):
    """Two views of each training image with its (possibly corrected) label and anchor flags.

    Args:
        root: dataset directory (image paths are relative to it).
        records: the split's records (or a subset, e.g. the samples kept by stage 3a).
        num_classes: C.
        targets: labels to train on, [N] int64 or [N, C] float; default the web labels.
        domain: anchors, [N] bool/int8 (single-label) or [N, C] int8 (multi-label); default none.
        indices: each record's index in the full split (reported as ``index``); default 0..N-1.
        weights: [N] per-sample loss weights; default ones.
    """

    def __init__(self, root: str | os.PathLike, records: list[Record], num_classes: int, *,
                 size: int, channels: int, multi_label: bool = False, weak_crop: float = 0.8,
                 strong_crop: float = 0.2, seed: int = 0, targets: np.ndarray | None = None,
                 domain: np.ndarray | None = None, indices: np.ndarray | None = None,
                 weights: np.ndarray | None = None) -> None:
        n = len(records)
        self.root, self.records, self.channels = Path(root), records, channels
        self.multi_label, self.seed, self.epoch = multi_label, seed, 0
        self.targets = (label_targets(records, num_classes, multi_label=multi_label)
                        if targets is None else np.asarray(targets))
        shape = (n, num_classes) if multi_label else (n,)
        self.domain = np.zeros(shape, np.int8) if domain is None else np.asarray(domain).astype(np.int8)
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        self.weights = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
        for name, arr in (("targets", self.targets), ("domain", self.domain),
                          ("indices", self.indices), ("weights", self.weights)):
            if len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} rows for {n} records")
        self.weak = weak_transform(size=size, channels=channels, crop=weak_crop)
        self.strong = strong_transform(size=size, channels=channels, crop=strong_crop)

    def set_epoch(self, epoch: int) -> None:
        """Views depend on the epoch; call before iterating each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = load_image(self.root, self.records[i], self.channels)
        index = int(self.indices[i])
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))
            weak, strong = self.weak(img), self.strong(img)
        item = {
            "img": weak,
            "img_aug": strong,
            "target": torch.as_tensor(self.targets[i]),
            "weight": torch.tensor(float(self.weights[i])),
            "index": torch.tensor(index, dtype=torch.long),
        }
        if self.multi_label:
            item["domain"] = torch.as_tensor(self.domain[i], dtype=torch.int8)
            item["anchor"] = torch.tensor(bool((self.domain[i] != 0).any()))
        else:
            item["anchor"] = torch.tensor(bool(self.domain[i] > 0))
        return item


class EvalDataset(Dataset):
    """The deterministic test view of each image and its clean label ([C] multi-hot if multi-label)."""

    def __init__(self, root: str | os.PathLike, records: list[Record], num_classes: int, *,
                 size: int, channels: int, multi_label: bool = False,
                 transform=None) -> None:
        self.root, self.records, self.channels = Path(root), records, channels
        self.targets = label_targets(records, num_classes, multi_label=multi_label)
        self.transform = transform or eval_transform(size=size, channels=channels)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = load_image(self.root, self.records[i], self.channels)
        return {"img": self.transform(img), "target": torch.as_tensor(self.targets[i]),
                "index": torch.tensor(i, dtype=torch.long)}


def train_dataset(cfg: Config, root: str | os.PathLike, split: Split, *, multi_label: bool,
                  **kwargs) -> TrainDataset:
    """:class:`TrainDataset` with sizes, crops and seed from ``cfg``."""
    return TrainDataset(root, split.records, len(split.classes), size=cfg.data.image_size,
                        channels=cfg.data.channels, multi_label=multi_label,
                        weak_crop=cfg.data.weak_crop, strong_crop=cfg.data.strong_crop,
                        seed=cfg.seed, **kwargs)


def eval_dataset(cfg: Config, root: str | os.PathLike, split: Split, *, multi_label: bool,
                 records: list[Record] | None = None) -> EvalDataset:
    """:class:`EvalDataset` with the test transform of ``cfg``."""
    return EvalDataset(root, split.records if records is None else records, len(split.classes),
                       size=cfg.data.image_size, channels=cfg.data.channels, multi_label=multi_label)
