"""Decode once: a split's images as one uint8 array [N, ch, S, S] at a stored side S.

``data.cache`` chooses where the array lives: ``ram`` (built in memory, kept for the process),
``disk`` (a memory-mapped ``.npy`` under the run directory, reused by later stages, resumes and
``capro evaluate``), ``off`` (no array: loader workers decode each batch) or ``auto`` (``ram``
up to ``data.cache_ram_mb``, else ``disk`` up to ``data.cache_disk_gb``, else ``off``). The
images stay the source of truth: the cache is named by a fingerprint of the records (id, path)
and of each image file's size and modification time, so any change builds a new one.

Every image is converted to the configured channels, its shorter side resized to S (PIL's
antialiased bilinear) and the central S × S square kept; an image already S × S is stored as
it is. The random crops then see this square (as FFCV-style stores do); crops of non-square
images lose the ends of their longer side. An image that cannot be read is stored as zeros with
its one-line reason, exactly as the per-image path would report it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from capro.data.datasets import BadImageError, load_image
from capro.data.layout import Record
from capro.utils.io import atomic_write

CACHE_MODES = ("auto", "ram", "disk", "off")
_RAM: dict[str, ImageStore] = {}
"""Stores built in RAM in this process, by fingerprint (a later stage reuses them)."""
_RAM_LIMIT = 4


@dataclass
class ImageStore:
    """Decoded images of N records: ``images`` [N, ch, S, S] uint8 (an array or a memmap)."""

    images: np.ndarray
    reasons: list[str]
    """One-line reason per unreadable image ("" for readable ones)."""
    messages: list[str] = field(default_factory=list)
    """The full error message per unreadable image (for ``on_bad_image=stop``)."""
    path: Path | None = None

    @property
    def side(self) -> int:
        return int(self.images.shape[-1])


def stored_side(root: str | os.PathLike, records: list[Record], *, size: int, channels: int,
                requested: int = 0) -> int:
    """S: ``requested`` when > 0; else the smallest shorter side among the first 16 readable
    images, capped at 2 · size: images are never enlarged in the store (the views resize them
    on the device), and large ones are reduced to what the crops can use."""
    if requested > 0:
        return requested
    hi = max(2 * size, round(size * 256 / 224))
    sides = []
    for rec in records[:64]:
        try:
            with Image.open(Path(root) / rec.image) as im:
                sides.append(min(im.size))
        except Exception:  # an unreadable image says nothing about the size
            continue
        if len(sides) == 16:
            break
    return min(min(sides), hi) if sides else hi


def decode_stored(root: str | os.PathLike, rec: Record, channels: int, side: int) -> np.ndarray:
    """[ch, S, S] uint8 of one record; :class:`BadImageError` when it cannot be read."""
    im = load_image(root, rec, channels)
    w, h = im.size
    if (w, h) != (side, side):
        scale = side / min(w, h)
        nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - side) // 2, (nh - side) // 2
        im = im.crop((left, top, left + side, top + side))
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def store_fingerprint(root: str | os.PathLike, records: list[Record], *, channels: int,
                      side: int) -> str:
    """Hash of (records' ids and paths, each image file's size and mtime, channels, S)."""
    h = hashlib.sha256(f"v1:{Path(root).resolve()}:{channels}:{side}:{len(records)}".encode())
    for rec in records:
        try:
            st = os.stat(Path(root) / rec.image)
            stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_mode}"
        except OSError:
            stamp = "missing"
        h.update(f"\0{rec.id}\0{rec.image}\0{stamp}".encode())
    return h.hexdigest()


def choose_mode(mode: str, nbytes: int, *, ram_mb: float, disk_gb: float, has_dir: bool) -> str:
    """The concrete mode (``ram``, ``disk`` or ``off``) for ``mode`` and an array of ``nbytes``."""
    if mode not in CACHE_MODES:
        raise ValueError(f"data.cache must be one of {CACHE_MODES}, got {mode!r}")
    if mode == "disk" and not has_dir:
        return "ram"
    if mode != "auto":
        return mode
    if nbytes <= ram_mb * 2**20:
        return "ram"
    if has_dir and nbytes <= disk_gb * 2**30:
        return "disk"
    return "off"


def _decode_all(root, records, channels: int, side: int, out: np.ndarray) -> tuple[list[str], list[str]]:
    reasons, messages = [""] * len(records), [""] * len(records)
    for i, rec in enumerate(records):
        try:
            out[i] = decode_stored(root, rec, channels, side)
        except BadImageError as exc:
            out[i] = 0
            reasons[i], messages[i] = exc.reason, str(exc)
    return reasons, messages


def open_store(root: str | os.PathLike, records: list[Record], *, channels: int, side: int,
               mode: str, cache_dir: str | os.PathLike | None = None, ram_mb: float = 1024,
               disk_gb: float = 64) -> ImageStore | None:
    """The decoded images of ``records`` (built on first use), or None when the mode is ``off``."""
    nbytes = len(records) * channels * side * side
    mode = choose_mode(mode, nbytes, ram_mb=ram_mb, disk_gb=disk_gb, has_dir=cache_dir is not None)
    if mode == "off":
        return None
    fp = store_fingerprint(root, records, channels=channels, side=side)
    shape = (len(records), channels, side, side)
    if mode == "ram" and fp in _RAM:
        return _RAM[fp]
    store = None
    if cache_dir is not None:
        store = _read_disk(Path(cache_dir), fp, shape, mmap=mode == "disk")
        if store is None and mode == "disk":
            store = _build_disk(root, records, Path(cache_dir), fp, shape)
    if store is None:
        images = np.empty(shape, np.uint8)
        reasons, messages = _decode_all(root, records, channels, side, images)
        store = ImageStore(images, reasons, messages)
    if mode == "ram":
        if len(_RAM) >= _RAM_LIMIT:
            _RAM.pop(next(iter(_RAM)))
        _RAM[fp] = store
    return store


def _paths(cache_dir: Path, fp: str) -> tuple[Path, Path]:
    return cache_dir / f"images-{fp[:24]}.npy", cache_dir / f"images-{fp[:24]}.json"


def _read_disk(cache_dir: Path, fp: str, shape: tuple, *, mmap: bool) -> ImageStore | None:
    npy, meta = _paths(cache_dir, fp)
    if not (npy.is_file() and meta.is_file()):
        return None
    info = json.loads(meta.read_text(encoding="utf-8"))
    if info.get("fingerprint") != fp:
        return None
    images = np.load(npy, mmap_mode="r" if mmap else None)
    if images.shape != shape or images.dtype != np.uint8:
        return None
    return ImageStore(images, info["reasons"], info["messages"], npy)


def _build_disk(root, records, cache_dir: Path, fp: str, shape: tuple) -> ImageStore:
    """Decode into a memory-mapped temporary file, then publish it (renamed into place, its
    metadata last, so a reader never sees a half-written store)."""
    npy, meta = _paths(cache_dir, fp)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp")
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        reasons, messages = _decode_all(root, records, shape[1], shape[-1], arr)
        arr.flush()
        del arr
        os.replace(tmp, npy)
    finally:
        tmp.unlink(missing_ok=True)
    with atomic_write(meta) as fh:
        json.dump({"fingerprint": fp, "shape": list(shape), "reasons": reasons,
                   "messages": messages}, fh)
    return ImageStore(np.load(npy, mmap_mode="r"), reasons, messages, npy)
