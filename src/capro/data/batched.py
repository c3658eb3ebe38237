"""Datasets that read whole batches of stored uint8 images (``data.augment=batch``).

The fast counterpart of :mod:`capro.data.datasets`. Indexing takes a list of positions and
returns a ready batch (so the DataLoader runs with ``batch_size=None`` over a
``BatchSampler``; :func:`batch_loader` builds it). Images come from an
:class:`~capro.data.image_cache.ImageStore` (one fancy index) or, with no store, are decoded by
the loader's workers to the same stored side. :class:`BatchTrainDataset` hands on ``raw``
[B, ch, S, S] uint8; :meth:`BatchTrainDataset.finish_batch` then builds the weak and strong
views on the batch's device (:mod:`capro.data.batch_views`). :class:`BatchEvalDataset` gives
the test view directly. Batch fields are those of :mod:`capro.data.datasets`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from capro.data.batch_views import eval_views, strong_views, view_keys, weak_views
from capro.data.datasets import BadImageError, _check_policy, label_targets, sample_arrays
from capro.data.image_cache import ImageStore, decode_stored, open_store, stored_side
from capro.data.layout import Record


class StoredImages:
    """uint8 images [ch, S, S] of ``records`` by position: from ``store``, or decoded on demand.

    ``rows`` maps each record to its row of ``store`` (None: record i is row i), so a subset
    (:meth:`subset`) reads the same store, in RAM or memory-mapped, without copying it.
    """

    def __init__(self, root: str | os.PathLike, records: list[Record], *, channels: int, side: int,
                 store: ImageStore | None = None, rows: np.ndarray | None = None) -> None:
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        if store is not None:
            n = store.images.shape[0] if self.rows is None else len(self.rows)
            if n != len(records):
                raise ValueError(f"store has {n} images for {len(records)} records")
        self.root, self.records, self.channels, self.side, self.store = Path(root), records, channels, side, store

    @property
    def in_memory(self) -> bool:
        """Whether images come from a store (a fancy index) rather than from decoding files."""
        return self.store is not None

    def fetch(self, positions: np.ndarray, policy: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(raw [B, ch, S, S] uint8, valid [B] bool, reasons [B]); ``policy`` ``stop`` raises
        :class:`BadImageError` for the first unreadable image instead."""
        if self.store is not None:
            rows = positions if self.rows is None else self.rows[positions]
            order = np.argsort(rows, kind="stable")  # a memmap reads fastest in row order
            raw = np.empty((len(rows), self.channels, self.side, self.side), np.uint8)
            raw[order] = self.store.images[rows[order]]
            reasons = [self.store.reasons[r] for r in rows]
            if policy == "stop":
                for r, why in zip(rows, reasons):
                    if why:
                        raise BadImageError(self.store.messages[r], why)
        else:
            raw = np.zeros((len(positions), self.channels, self.side, self.side), np.uint8)
            reasons = [""] * len(positions)
            for j, p in enumerate(positions):
                try:
                    raw[j] = decode_stored(self.root, self.records[p], self.channels, self.side)
                except BadImageError as exc:
                    if policy == "stop":
                        raise
                    reasons[j] = exc.reason
        valid = torch.tensor([not r for r in reasons], dtype=torch.bool)
        return torch.from_numpy(raw), valid, reasons

    def subset(self, positions: np.ndarray) -> StoredImages:
        """The images of ``records[positions]``, reading the same store (nothing is copied)."""
        positions = np.asarray(positions, dtype=np.int64)
        recs = [self.records[p] for p in positions]
        if self.store is None:
            return StoredImages(self.root, recs, channels=self.channels, side=self.side)
        rows = positions if self.rows is None else self.rows[positions]
        return StoredImages(self.root, recs, channels=self.channels, side=self.side, store=self.store, rows=rows)


def _positions(key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
        return np.array([int(key)], dtype=np.int64)
    return np.asarray(key, dtype=np.int64)


class BatchTrainDataset(Dataset):
    """Training batches: the stored images, labels, anchor flags and weights of the positions asked.

    Same arguments as :class:`capro.data.datasets.TrainDataset`, with ``images`` (a
    :class:`StoredImages` over ``records``) instead of the image root.
    """

    batched = True

    def __init__(self, images: StoredImages, num_classes: int, *, size: int, multi_label: bool = False,
                 weak_crop: float = 0.8, strong_crop: float = 0.2, seed: int = 0,
                 targets: np.ndarray | None = None, domain: np.ndarray | None = None,
                 indices: np.ndarray | None = None, weights: np.ndarray | None = None,
                 on_bad_image: str = "skip", fancy_pca: bool = False) -> None:
        _check_policy(on_bad_image)
        records = images.records
        self.images, self.records, self.size = images, records, size
        self.channels = images.channels
        self.on_bad_image, self.multi_label, self.seed, self.epoch = on_bad_image, multi_label, seed, 0
        self.weak_crop, self.strong_crop, self.fancy_pca = weak_crop, strong_crop, fancy_pca
        self.targets, self.domain, self.indices, self.weights = sample_arrays(
            records, num_classes, multi_label=multi_label, targets=targets, domain=domain,
            indices=indices, weights=weights)

    def set_epoch(self, epoch: int) -> None:
        """Views depend on the epoch; call before iterating each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> dict:
        pos = _positions(key)
        raw, valid, reasons = self.images.fetch(pos, self.on_bad_image)
        batch: dict = {
            "raw": raw,
            "target": torch.as_tensor(self.targets[pos]),
            "weight": torch.as_tensor(self.weights[pos]),
            "index": torch.as_tensor(self.indices[pos], dtype=torch.long),
            "valid": valid,
            "error": reasons,
        }
        if self.multi_label:
            dom = self.domain[pos]
            batch["domain"] = torch.as_tensor(dom, dtype=torch.int8)
            batch["anchor"] = torch.as_tensor((dom != 0).any(axis=1))
        else:
            batch["anchor"] = torch.as_tensor(self.domain[pos] > 0)
        return batch

    def finish_batch(self, batch: dict, *, strong: bool = True) -> dict:
        """Replace ``raw`` by the weak view ``img`` (and the strong view ``img_aug``) on raw's
        device; unreadable samples get zero views as in the per-image path."""
        raw = batch.pop("raw")
        keys = view_keys(self.seed, self.epoch, batch["index"])
        ok = batch["valid"].to(raw.device).view(-1, 1, 1, 1)
        batch["img"] = torch.where(ok, weak_views(raw, keys=keys, size=self.size, crop=self.weak_crop,
                                                  fancy_pca=self.fancy_pca), 0.0)
        if strong:
            batch["img_aug"] = torch.where(ok, strong_views(raw, keys=keys, size=self.size,
                                                            crop=self.strong_crop,
                                                            fancy_pca=self.fancy_pca), 0.0)
        return batch


class BatchEvalDataset(Dataset):
    """The deterministic test view of the positions asked, with their clean labels."""

    batched = True

    def __init__(self, images: StoredImages, num_classes: int, *, size: int, multi_label: bool = False,
                 on_bad_image: str = "skip") -> None:
        _check_policy(on_bad_image)
        self.images, self.records, self.size = images, images.records, size
        self.channels, self.root = images.channels, images.root
        self.on_bad_image = on_bad_image
        self.targets = label_targets(self.records, num_classes, multi_label=multi_label)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> dict:
        pos = _positions(key)
        raw, valid, reasons = self.images.fetch(pos, self.on_bad_image)
        img = torch.where(valid.view(-1, 1, 1, 1), eval_views(raw, size=self.size), 0.0)
        return {"img": img, "target": torch.as_tensor(self.targets[pos]),
                "index": torch.as_tensor(pos, dtype=torch.long), "valid": valid, "error": reasons}


def is_batched(dataset) -> bool:
    return bool(getattr(dataset, "batched", False))


def finish_batch(dataset, batch: dict, *, strong: bool = True) -> dict:
    """Build the training views of a batch that still carries ``raw`` (no-op otherwise)."""
    if "raw" in batch:
        return dataset.finish_batch(batch, strong=strong)
    return batch


def batch_loader(dataset, *, batch_size: int, sampler: Sampler | None = None, workers: int = 0,
                 generator: torch.Generator | None = None,
                 worker_init_fn: Callable[[int], None] | None = None,
                 pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` in order (or ``sampler``'s order), ``batch_size`` at a time.

    A batched dataset gets whole index lists (``BatchSampler``) and, when its images are in
    memory, no worker processes (a fancy index is faster than shipping batches between
    processes); a per-image dataset is collated as usual.
    """
    order = sampler if sampler is not None else SequentialSampler(dataset)
    if is_batched(dataset):
        n_workers = 0 if dataset.images.in_memory else workers
        return DataLoader(dataset, sampler=BatchSampler(order, batch_size, drop_last=False),
                          batch_size=None, num_workers=n_workers, worker_init_fn=worker_init_fn,
                          generator=generator, pin_memory=pin_memory)
    return DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers,
                      worker_init_fn=worker_init_fn, generator=generator, pin_memory=pin_memory)


def stored_images(cfg, root: str | os.PathLike, records: list[Record], *,
                  cache_dir: str | os.PathLike | None = None) -> StoredImages:
    """The images of ``records`` at the stored side chosen by ``cfg.data`` (cached per
    ``data.cache``; see :mod:`capro.data.image_cache`)."""
    d = cfg.data
    side = stored_side(root, records, size=d.image_size, channels=d.channels, requested=d.cache_size)
    store = open_store(root, records, channels=d.channels, side=side, mode=d.cache, cache_dir=cache_dir,
                       ram_mb=d.cache_ram_mb, disk_gb=d.cache_disk_gb)
    return StoredImages(root, records, channels=d.channels, side=side, store=store)


def make_eval_dataset(cfg, root: str | os.PathLike, records: list[Record], num_classes: int, *,
                      multi_label: bool, cache_dir: str | os.PathLike | None = None):
    """The test views of ``records`` on the path ``cfg.data.augment`` names (batched from the
    stored images, or per image)."""
    from capro.data.datasets import EvalDataset

    if cfg.data.augment == "batch":
        return BatchEvalDataset(stored_images(cfg, root, records, cache_dir=cache_dir), num_classes,
                                size=cfg.data.image_size, multi_label=multi_label,
                                on_bad_image=cfg.train.on_bad_image)
    return EvalDataset(root, records, num_classes, size=cfg.data.image_size, channels=cfg.data.channels,
                       multi_label=multi_label, on_bad_image=cfg.train.on_bad_image)
