"""WebVision 1.0 -> capro layout.

Native layout (paths relative to SRC)::

    info/synsets.txt                 "n01440764 tench, Tinca tinca" (line order = class index)
    info/train_filelist_google.txt   "google/q0000/000001.jpg 0"  (image path, class index)
    info/train_filelist_flickr.txt   "flickr/q0000/000001.jpg 0"
    info/val_filelist.txt            "val_images_256/val000001.jpg 0" (or a bare "val000001.jpg")
    google/q0000.json, flickr/q0000.json   (or meta/google/q0000.json) per-query metadata: a JSON list
                                     of {"id": image stem, "title", "description", "tags"|"tag", "rank"}

Class name = the first lemma of the synsets line (names that repeat, such as ImageNet's two
"crane" synsets, get their wnid appended); wnid = the line's id. Train rows come from both file
lists with the query's title / description / tags; val rows come from the val list.
"""

from __future__ import annotations

import os
from pathlib import Path

from capro.data.adapters._common import (
    ConvertResult,
    ImageMode,
    LayoutWriter,
    check_src_out,
    text_fields,
)
from capro.data.layout import WNID_RE, ClassInfo, RowError, decode_json, is_safe_relpath
from capro.errors import DataError

TRAIN_LISTS = ("train_filelist_google.txt", "train_filelist_flickr.txt")
VAL_LIST = "val_filelist.txt"
VAL_IMAGE_DIR = "val_images_256"


def parse_synsets(path: Path) -> list[ClassInfo]:
    """``synsets.txt`` -> classes in line order; raise :class:`DataError` naming a malformed line."""
    entries: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            wnid, _, lemmas = line.strip().partition(" ")
            name = lemmas.split(",")[0].strip()
            if not WNID_RE.match(wnid) or not name:
                raise DataError(f"{path}:{lineno}: expected 'n01440764 tench, Tinca tinca' "
                                f"(a WordNet id, a space, comma-separated names), got {line.strip()[:80]!r}")
            entries.append((f"n{int(wnid[1:]):08d}", name))
    if not entries:
        raise DataError(f"{path}: no classes; expected one 'wnid name, ...' line per class")
    repeated = {n for _, n in entries if sum(1 for _, m in entries if m == n) > 1}
    return [ClassInfo(name=f"{n} ({w})" if n in repeated else n, wnid=w) for w, n in entries]


class _QueryMeta:
    """Per-query metadata, loaded one query file at a time (file lists are sorted by query)."""

    def __init__(self, src: Path) -> None:
        self.src = src
        self._key: tuple[str, str] | None = None
        self._meta: dict[str, dict] = {}

    def get(self, source: str, query: str, stem: str) -> dict:
        if self._key != (source, query):
            self._key, self._meta = (source, query), self._load(source, query)
        meta = self._meta.get(stem)
        if meta is None and stem.isdigit():
            meta = self._meta.get(str(int(stem)))
        return meta or {}

    def _load(self, source: str, query: str) -> dict[str, dict]:
        for path in (self.src / source / f"{query}.json", self.src / "meta" / source / f"{query}.json"):
            if path.is_file():
                break
        else:
            return {}
        try:
            items = decode_json(path.read_bytes())
        except RowError as exc:
            raise DataError(f"{path}: {exc}; fix or remove the file") from exc
        if isinstance(items, dict):
            items = [{"id": k, **v} for k, v in items.items() if isinstance(v, dict)]
        if not isinstance(items, list):
            raise DataError(f"{path}: metadata must be a JSON list of objects with an \"id\"")
        out: dict[str, dict] = {}
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("id"), (str, int)):
                key = str(item["id"])
                out[key] = item
                if key.isdigit():
                    out.setdefault(str(int(key)), item)
        return out


def _add_list(writer: LayoutWriter, split: str, src: Path, listing: Path, classes: list[ClassInfo],
              meta: _QueryMeta | None) -> None:
    for lineno, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        rel = parts[0]
        rid = rel.rsplit(".", 1)[0]
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            writer.skip(split, listing, lineno, None, "malformed line (expected '<image path> <class index>')")
            continue
        index = int(parts[1])
        if not 0 <= index < len(classes):
            writer.skip(split, listing, lineno, rid, f"class index {index} out of range (synsets.txt has {len(classes)} classes)")
            continue
        if not is_safe_relpath(rel):
            writer.skip(split, listing, lineno, rid, f"image path {rel!r} escapes the source directory")
            continue
        source = src / rel
        if not source.is_file() and split == "val" and "/" not in rel:
            source = src / VAL_IMAGE_DIR / rel
        if not source.is_file():
            writer.skip(split, listing, lineno, rid, "missing image file")
            continue
        row: dict = {"id": rid, "image": writer.add_image_file(source, rel), "label": classes[index].name}
        segments = rel.split("/")
        if meta is not None and len(segments) == 3:
            row.update(text_fields(meta.get(segments[0], segments[1], Path(rel).stem)))
        writer.add_row(split, row, file=str(listing), line=lineno)


def convert(src: str | os.PathLike, out: str | os.PathLike, *, images: ImageMode = "link") -> ConvertResult:
    """Convert a WebVision 1.0 directory ``src`` into a capro dataset at ``out`` (train, val)."""
    src, out = Path(src), Path(out)
    check_src_out(src, out)
    info = src / "info"
    synsets = info / "synsets.txt"
    if not synsets.is_file():
        raise DataError(f"{synsets}: missing; is {src} a WebVision 1.0 directory (with info/synsets.txt)?")
    train_lists = [info / name for name in TRAIN_LISTS if (info / name).is_file()]
    if not train_lists:
        raise DataError(f"{info}: no {' or '.join(TRAIN_LISTS)}; nothing to convert")
    classes = parse_synsets(synsets)
    writer = LayoutWriter(out, images=images)
    meta = _QueryMeta(src)
    for listing in train_lists:
        _add_list(writer, "train", src, listing, classes, meta)
    splits = ("train",)
    if (info / VAL_LIST).is_file():
        _add_list(writer, "val", src, info / VAL_LIST, classes, None)
        splits = ("train", "val")
    return writer.finish(classes, splits)
