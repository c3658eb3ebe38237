"""Format adapters: convert native dataset layouts into capro's layout (see :mod:`capro.data.layout`).

Users pick an adapter by name (``capro convert FORMAT ...``); :data:`ADAPTERS` maps each name to
its converter and the keyword options it accepts. Every converter takes ``(src, out, **options)``,
never modifies ``src`` and returns a :class:`ConvertResult`.

Examples:
    >>> result = convert("imagefolder", "photos/", "data/", split="train")
    >>> result.rows
    {'train': 120}
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from capro.data.adapters import imagefolder, nuswide, webdataset, webvision
from capro.data.adapters._common import ConvertResult
from capro.errors import UsageError

__all__ = ["ADAPTERS", "Adapter", "ConvertResult", "convert", "get_adapter"]


@dataclass(frozen=True)
class Adapter:
    name: str
    convert: Callable[..., ConvertResult]
    options: frozenset[str]
    help: str


ADAPTERS: dict[str, Adapter] = {a.name: a for a in (
    Adapter("webvision", webvision.convert, frozenset({"images"}),
            "WebVision 1.0 (info/*filelist*.txt, synsets.txt, per-query meta JSON)"),
    Adapter("nuswide", nuswide.convert, frozenset({"images", "image_dir"}),
            "NUS-WIDE (ImageList, TrainTestLabels, NUS_WID_Tags, Concepts81.txt)"),
    Adapter("webdataset", webdataset.convert, frozenset({"label_key", "classes_file", "split"}),
            "WebDataset tar shards as img2dataset writes them (.jpg + .txt + .json)"),
    Adapter("imagefolder", imagefolder.convert, frozenset({"images", "split", "classes_file"}),
            "class folders SRC/<class>/<image> with optional .txt/.json sidecars"),
)}


def get_adapter(name: str) -> Adapter:
    if name not in ADAPTERS:
        raise UsageError(f"unknown format {name!r}; choose one of {', '.join(ADAPTERS)}")
    return ADAPTERS[name]


def convert(fmt: str, src: str | os.PathLike, out: str | os.PathLike, **options) -> ConvertResult:
    """Convert ``src`` (format ``fmt``) into a capro dataset at ``out``; ``options`` per adapter."""
    adapter = get_adapter(fmt)
    extra = sorted(set(options) - adapter.options)
    if extra:
        raise UsageError(f"format {fmt!r} does not take option(s) {', '.join(extra)}; "
                         f"it takes: {', '.join(sorted(adapter.options)) or 'none'}")
    return adapter.convert(src, out, **options)
