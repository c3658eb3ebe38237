"""Class folders (``SRC/<class>/<image>``, the ImageFolder layout) -> capro layout.

Images may sit in sub-folders of their class folder. An optional sidecar next to an image gives
its text: ``<image stem>.txt`` (the title) or ``<image stem>.json`` (title / description / tags).
Images go to ``DATA/images/<split>/<class>/...`` so train, val and test folders can be converted
into the same DATA one after another.

Classes: ``classes_file`` when given; else, for ``val`` / ``test``, the ``classes.json`` already in
DATA (so evaluation folders use the training class ids); else the sorted folder names.
"""

from __future__ import annotations

import os
from pathlib import Path

from capro.data.adapters._common import (
    IMAGE_EXTS,
    ConvertResult,
    ImageMode,
    LayoutWriter,
    check_src_out,
    read_class_file,
    text_fields,
)
from capro.data.layout import ClassInfo, RowError, decode_json, read_classes
from capro.errors import DataError, UsageError

SPLIT_NAMES = ("train", "val", "test")


def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(base).parts)


def _sidecar_text(image: Path) -> dict:
    """Text fields from ``<stem>.json`` or ``<stem>.txt`` beside ``image``; ValueError if unreadable."""
    meta_file, title_file = image.with_suffix(".json"), image.with_suffix(".txt")
    if meta_file.is_file():
        try:
            meta = decode_json(meta_file.read_bytes())
        except RowError as exc:
            raise ValueError(f"invalid sidecar JSON ({meta_file.name}: {exc})") from exc
        if not isinstance(meta, dict):
            raise ValueError(f"sidecar {meta_file.name} must be a JSON object with title / description / tags")
        return text_fields(meta)
    if title_file.is_file():
        return text_fields({"title": title_file.read_text(encoding="utf-8", errors="replace")})
    return {}


def _classes(src: Path, out: Path, split: str, folders: list[str],
             classes_file: str | os.PathLike | None) -> list[ClassInfo]:
    if classes_file is not None:
        return read_class_file(classes_file)
    if split != "train" and (out / "classes.json").is_file():
        return read_classes(out)
    if not folders:
        raise DataError(f"{src}: no class folders; expected SRC/<class name>/<image files>")
    return [ClassInfo(name=f) for f in folders]


def convert(src: str | os.PathLike, out: str | os.PathLike, *, images: ImageMode = "link",
            split: str = "train", classes_file: str | os.PathLike | None = None) -> ConvertResult:
    """Convert class folders ``src`` into split ``split`` of a capro dataset at ``out``."""
    src, out = Path(src), Path(out)
    check_src_out(src, out)
    if split not in SPLIT_NAMES:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_NAMES)}")
    if not src.is_dir():
        raise UsageError(f"{src}: not a directory of class folders")
    folders = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = _classes(src, out, split, folders, classes_file)
    names = {c.name for c in classes}
    writer = LayoutWriter(out, images=images)
    for stray in sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS):
        writer.skip(split, stray, 0, stray.stem, "image is not inside a class folder")
    for folder in folders:
        for path in sorted((src / folder).rglob("*")):
            if not path.is_file() or path.suffix.lower() not in IMAGE_EXTS or not _visible(path, src):
                continue
            rel = path.relative_to(src).as_posix()
            rid = rel.rsplit(".", 1)[0]
            if folder not in names:
                writer.skip(split, path, 0, rid, f"unknown label {folder!r}; the folder is not a class in the class list")
                continue
            try:
                text = _sidecar_text(path)
            except ValueError as exc:
                writer.skip(split, path, 0, rid, str(exc))
                continue
            row = {"id": rid, "image": writer.add_image_file(path, f"{split}/{rel}"), "label": folder, **text}
            writer.add_row(split, row, file=str(path))
    return writer.finish(classes, (split,))
