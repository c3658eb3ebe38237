"""Torch datasets over a :class:`~capro.data.layout.Split`.

:class:`TrainDataset` yields two augmented views per image plus the label, the anchor flag and a
per-sample weight; :class:`EvalDataset` yields the deterministic test view. Augmentation is seeded
per (seed, epoch, sample index), so a sample gets the same views whatever the number of loader
workers or processes, and a resumed run sees exactly the views an uninterrupted one would.

Batch fields (B samples, C classes):
    img [B, ch, S, S] weak view · img_aug [B, ch, S, S] strong view (training only) ·
    target [B] long (multi-label [B, C] float multi-hot) · anchor [B] bool ·
    domain [B, C] int8 (multi-label only: +1 positive / -1 negative anchor) · weight [B] float ·
    index [B] long (position in the split) · valid [B] bool · error: B strings

An image that cannot be read (it passed validation but changed on disk since) stops iteration
with a :class:`DataError` when ``on_bad_image="stop"``. With ``"skip"`` (the default) the sample
keeps its place in the batch, so every process of a distributed run still gets batches of the
same size: its views are zero images, ``valid`` is False and ``error`` holds the one-line reason
("" for readable images). Consumers must ignore invalid samples (the CAPro step, the engine's
loops and :func:`capro.engine.evaluate.collect` do).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from capro.config import Config
from capro.data.layout import Record, Split, escape_text, show_id
from capro.data.transforms import eval_transform, strong_transform, weak_transform
from capro.data.validate import check_image
from capro.errors import DataError

_MODES = {1: "L", 3: "RGB"}
BAD_IMAGE_POLICIES = ("skip", "stop")


class BadImageError(DataError):
    """An image that passed validation cannot be read now; ``reason`` is one line."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


def _open_regular(path: Path):
    """``path`` opened for binary reading; OSError if it is not a regular file (a FIFO never blocks)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"not a regular file ({'a directory' if stat.S_ISDIR(mode) else 'special file'})")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _reason(path: Path, exc: BaseException) -> str:
    """One-line reason, in the words of ``capro validate`` when its check also fails."""
    why = check_image(path)
    if why is not None:
        return why
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"cannot convert image ({text[:200]})"


def load_image(root: str | os.PathLike, rec: Record, channels: int) -> Image.Image:
    """Open ``root/rec.image`` and convert it to ``channels``; :class:`BadImageError` naming the
    file otherwise (any decoder failure: a corrupt file can make a decoder raise anything)."""
    path = Path(root) / rec.image
    try:
        with _open_regular(path) as fh, Image.open(fh) as im:
            return im.convert(_MODES[channels])
    except Exception as exc:
        why = _reason(path, exc)
        raise BadImageError(f"{escape_text(str(path))}: cannot read image of id={show_id(rec.id)} ({why}); "
                            "fix or remove the row, "
                            "validate with data.skip_bad=true, or set train.on_bad_image=skip",
                            why) from exc


def _check_policy(on_bad_image: str) -> None:
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")


def label_targets(records: list[Record], num_classes: int, *, multi_label: bool) -> np.ndarray:
    """Web labels: [N] int64, or [N, C] float32 multi-hot when ``multi_label``."""
    if not multi_label:
        return np.array([r.label for r in records], dtype=np.int64)
    out = np.zeros((len(records), num_classes), dtype=np.float32)
    for i, r in enumerate(records):
        out[i, list(r.labels)] = 1.0
    return out


def sample_arrays(records: list[Record], num_classes: int, *, multi_label: bool,
                  targets: np.ndarray | None = None, domain: np.ndarray | None = None,
                  indices: np.ndarray | None = None, weights: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(targets, domain int8, indices int64, weights float32) of N training records, each
    defaulting as :class:`TrainDataset` documents; ValueError when a given one has other than N rows."""
    n = len(records)
    targets = label_targets(records, num_classes, multi_label=multi_label) if targets is None else np.asarray(targets)
    shape = (n, num_classes) if multi_label else (n,)
    domain = np.zeros(shape, np.int8) if domain is None else np.asarray(domain).astype(np.int8)
    indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    weights = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
    for name, arr in (("targets", targets), ("domain", domain), ("indices", indices), ("weights", weights)):
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows for {n} records")
    return targets, domain, indices, weights


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
        on_bad_image: ``skip`` (placeholder sample with ``valid`` False) or ``stop`` (raise).
    """

    def __init__(self, root: str | os.PathLike, records: list[Record], num_classes: int, *,
                 size: int, channels: int, multi_label: bool = False, weak_crop: float = 0.8,
                 strong_crop: float = 0.2, seed: int = 0, targets: np.ndarray | None = None,
                 domain: np.ndarray | None = None, indices: np.ndarray | None = None,
                 weights: np.ndarray | None = None, on_bad_image: str = "skip") -> None:
        _check_policy(on_bad_image)
        self.root, self.records, self.channels, self.size = Path(root), records, channels, size
        self.on_bad_image = on_bad_image
        self.multi_label, self.seed, self.epoch = multi_label, seed, 0
        self.targets, self.domain, self.indices, self.weights = sample_arrays(
            records, num_classes, multi_label=multi_label, targets=targets, domain=domain,
            indices=indices, weights=weights)
        self.weak = weak_transform(size=size, channels=channels, crop=weak_crop)
        self.strong = strong_transform(size=size, channels=channels, crop=strong_crop)

    def set_epoch(self, epoch: int) -> None:
        """Views depend on the epoch; call before iterating each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | str]:
        img, error = _load_or_skip(self.root, self.records[i], self.channels, self.on_bad_image)
        index = int(self.indices[i])
        if img is None:
            weak = strong = torch.zeros(self.channels, self.size, self.size)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))
                weak, strong = self.weak(img), self.strong(img)
        item = {
            "img": weak,
            "img_aug": strong,
            "target": torch.as_tensor(self.targets[i]),
            "weight": torch.tensor(float(self.weights[i])),
            "index": torch.tensor(index, dtype=torch.long),
            "valid": torch.tensor(img is not None),
            "error": error,
        }
        if self.multi_label:
            item["domain"] = torch.as_tensor(self.domain[i], dtype=torch.int8)
            item["anchor"] = torch.tensor(bool((self.domain[i] != 0).any()))
        else:
            item["anchor"] = torch.tensor(bool(self.domain[i] > 0))
        return item


def _load_or_skip(root: Path, rec: Record, channels: int, policy: str) -> tuple[Image.Image | None, str]:
    """(image, "") or, under ``skip``, (None, reason) for an unreadable image."""
    try:
        return load_image(root, rec, channels), ""
    except BadImageError as exc:
        if policy == "stop":
            raise
        return None, exc.reason


class EvalDataset(Dataset):
    """The deterministic test view of each image and its clean label ([C] multi-hot if multi-label).

    Items: img, target, index (position in ``records``), valid, error (see the module doc).
    """

    def __init__(self, root: str | os.PathLike, records: list[Record], num_classes: int, *,
                 size: int, channels: int, multi_label: bool = False,
                 transform=None, on_bad_image: str = "skip") -> None:
        _check_policy(on_bad_image)
        self.root, self.records, self.channels, self.size = Path(root), records, channels, size
        self.on_bad_image = on_bad_image
        self.targets = label_targets(records, num_classes, multi_label=multi_label)
        self.transform = transform or eval_transform(size=size, channels=channels)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | str]:
        img, error = _load_or_skip(self.root, self.records[i], self.channels, self.on_bad_image)
        view = torch.zeros(self.channels, self.size, self.size) if img is None else self.transform(img)
        return {"img": view, "target": torch.as_tensor(self.targets[i]),
                "index": torch.tensor(i, dtype=torch.long), "valid": torch.tensor(img is not None),
                "error": error}


def train_dataset(cfg: Config, root: str | os.PathLike, split: Split, *, multi_label: bool,
                  **kwargs) -> TrainDataset:
    """:class:`TrainDataset` with sizes, crops and seed from ``cfg``."""
    return TrainDataset(root, split.records, len(split.classes), size=cfg.data.image_size,
                        channels=cfg.data.channels, multi_label=multi_label,
                        weak_crop=cfg.data.weak_crop, strong_crop=cfg.data.strong_crop,
                        seed=cfg.seed, on_bad_image=cfg.train.on_bad_image, **kwargs)


def eval_dataset(cfg: Config, root: str | os.PathLike, split: Split, *, multi_label: bool,
                 records: list[Record] | None = None) -> EvalDataset:
    """:class:`EvalDataset` with the test transform of ``cfg``."""
    return EvalDataset(root, split.records if records is None else records, len(split.classes),
                       size=cfg.data.image_size, channels=cfg.data.channels, multi_label=multi_label,
                       on_bad_image=cfg.train.on_bad_image)
