"""Input channels that follow the data: a colour crawl trains in colour, a greyscale one in grey.

``data.channels: null`` (the default, and every preset's) is resolved at the start of a run from
a sample of the training images; a value the user set is kept, and when it disagrees with the
images the run says so in one log line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from capro.config import Config
from capro.data.layout import Record

GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def is_grey(image: Image.Image) -> bool:
    """Whether a PIL image holds no colour: a greyscale mode, or colour bands that are all equal."""
    if image.mode in GREY_MODES:
        return True
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def image_channels(root: str | os.PathLike, records: Sequence[Record], *, sample: int = 32) -> int:
    """1 when every one of up to ``sample`` images spread over ``records`` is greyscale, else 3;
    3 when none can be read (the run's own checks report unreadable images)."""
    if not records:
        return 3
    picks = np.unique(np.linspace(0, len(records) - 1, num=min(sample, len(records))).astype(int))
    read = 0
    for i in picks:
        try:
            with Image.open(Path(root) / records[i].image) as im:
                if not is_grey(im):
                    return 3
                read += 1
        except (OSError, ValueError):
            continue
    return 1 if read else 3


def resolve_channels(cfg: Config, root: str | os.PathLike, records: Sequence[Record]) -> tuple[Config, str | None]:
    """``cfg`` with ``data.channels`` set from the images when it is null, and a one-line note when
    a set value disagrees with them (None otherwise)."""
    found = image_channels(root, records)
    kinds = {1: "greyscale", 3: "colour"}
    if cfg.data.channels is None:
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, channels=found)), None
    if cfg.data.channels != found:
        return cfg, (f"data.channels={cfg.data.channels} trains on {kinds[cfg.data.channels]} input, but the "
                     f"training images are {kinds[found]}; remove the key (or set data.channels={found}) to follow them")
    return cfg, None
