"""What every format adapter shares: the output writer, the result summary and class-list files.

An adapter reads a native layout and feeds :class:`LayoutWriter` rows, images and skipped rows;
:meth:`LayoutWriter.finish` writes ``classes.json``, one manifest per split and
``convert_rejected.jsonl`` (every skipped row with its reason), each atomically.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from capro.data.layout import (
    ClassesError,
    ClassInfo,
    Problem,
    RowError,
    decode_json,
    is_safe_relpath,
    parse_classes,
)
from capro.errors import CaproError, DataError, UsageError
from capro.utils.io import read_jsonl, write_json, write_jsonl

ImageMode = Literal["link", "copy"]
IMAGE_DIR = "images"
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


@dataclass
class ConvertResult:
    """What a conversion wrote: classes, rows per split, and the rows it skipped (with reasons)."""

    out: Path
    classes: int
    rows: dict[str, int]
    skipped: list[Problem] = field(default_factory=list)

    def summary(self) -> str:
        """One line: ``DATA: 81 classes; train 120 rows, test 40 rows; skipped 3 rows (...)``."""
        rows = ", ".join(f"{split} {n} rows" for split, n in self.rows.items()) or "no rows"
        text = f"{self.out}: {self.classes} classes; {rows}"
        if self.skipped:
            why = Counter(_reason_kind(p.reason) for p in self.skipped)
            kinds = ", ".join(f"{reason}: {n}" for reason, n in why.most_common())
            text += f"; skipped {len(self.skipped)} rows ({kinds}), listed in {self.out / 'convert_rejected.jsonl'}"
        return text


def _reason_kind(reason: str) -> str:
    """The reason without its details: ``unknown label 'x' (...)`` -> ``unknown label``."""
    for stop in (" '", ' "', " (", ";"):
        reason = reason.split(stop, 1)[0]
    return reason


def class_dicts(classes: list[ClassInfo]) -> list[dict]:
    """``classes.json`` entries, leaving out the optional keys that are unset."""
    return [{k: v for k, v in (("name", c.name), ("wnid", c.wnid), ("definition", c.definition)) if v is not None}
            for c in classes]


def read_class_file(path: str | os.PathLike) -> list[ClassInfo]:
    """A user-given class list: a ``classes.json``-style JSON list, or text with one name per line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: class list not found")
    if path.suffix == ".json":
        try:
            return parse_classes(decode_json(path.read_bytes()), str(path))
        except RowError as exc:
            raise ClassesError(str(path), str(exc)) from exc
    text = path.read_text(encoding="utf-8", errors="replace")
    return parse_classes([line.strip() for line in text.splitlines() if line.strip()], str(path))


def check_src_out(src: Path, out: Path) -> None:
    """Refuse a missing source and an output inside the source (converters never modify it)."""
    if not src.exists():
        raise UsageError(f"{src}: not found; give the directory (or file) of the native dataset")
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise UsageError(f"{out}: is inside the source {src}; converters never write into their source, "
                         "choose an --out directory outside it")


class LayoutWriter:
    """Collects the rows of one conversion and places images under ``out/images/``.

    ``images="link"`` makes symbolic links to the source files, ``"copy"`` copies them. Image files
    are replaced via a temporary name and a rename (no fsync per image: a crash leaves either the
    old file or none, and a rerun rewrites it); manifests are written with :func:`atomic_write`.
    """

    def __init__(self, out: str | os.PathLike, *, images: ImageMode = "link") -> None:
        if images not in ("link", "copy"):
            raise UsageError(f"unknown image mode {images!r}; use 'link' or 'copy'")
        self.out = Path(out)
        self.images = images
        self.rows: dict[str, list[dict]] = {}
        self.skipped: list[tuple[str, Problem]] = []
        self._ids: dict[str, set[str]] = {}
        self.out.mkdir(parents=True, exist_ok=True)

    def image_path(self, rel: str) -> Path:
        """Where ``images/<rel>`` lives; refuses a ``rel`` that would leave ``out/images``."""
        if not is_safe_relpath(rel):
            raise DataError(f"{rel!r}: image path escapes the output directory")
        return self.out / IMAGE_DIR / rel

    def add_image_file(self, source: Path, rel: str) -> str:
        """Link or copy ``source`` to ``images/<rel>``; return the manifest path ``images/<rel>``."""
        dest = self.image_path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        if self.images == "link":
            try:
                os.symlink(source.resolve(), tmp)
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EACCES):
                    raise CaproError(f"{self.out}: cannot create symbolic links here ({exc.strerror}); "
                                     "pass --copy-images to copy the images instead") from exc
                raise
        else:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
        return f"{IMAGE_DIR}/{rel}"

    def add_image_stream(self, stream: IO[bytes], rel: str) -> str:
        """Write the bytes of ``stream`` to ``images/<rel>``; return the manifest path."""
        dest = self.image_path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        with open(tmp, "wb") as fh:
            shutil.copyfileobj(stream, fh)
        os.replace(tmp, dest)
        return f"{IMAGE_DIR}/{rel}"

    def add_row(self, split: str, row: dict, *, file: str = "", line: int = 0) -> bool:
        """Add a manifest row; a repeated id is skipped (recorded) instead. Return whether it was added."""
        ids = self._ids.setdefault(split, set())
        if row["id"] in ids:
            self.skip(split, file, line, row["id"], "duplicate id")
            return False
        ids.add(row["id"])
        self.rows.setdefault(split, []).append(row)
        return True

    def skip(self, split: str, file: str | os.PathLike, line: int, rid: str | None, reason: str) -> None:
        """Record a source row that will not be in ``split``'s manifest, and why."""
        self.skipped.append((split, Problem(str(file), line, rid, reason)))

    def finish(self, classes: list[ClassInfo], splits: tuple[str, ...] = ()) -> ConvertResult:
        """Write ``classes.json``, the manifests (``splits`` are written even when empty) and
        ``convert_rejected.jsonl``; return what was written.

        ``convert_rejected.jsonl`` rows are ``{"file", "line", "id", "reason", "split"}``; rows an
        earlier conversion recorded for other splits (say, ``val`` class folders converted into the
        same DATA after ``train``) are kept.
        """
        write_json(self.out / "classes.json", class_dicts(classes))
        counts: dict[str, int] = {}
        written = tuple(dict.fromkeys((*splits, *self.rows, *(s for s, _ in self.skipped))))
        for split in written:
            counts[split] = write_jsonl(self.out / f"{split}.jsonl", self.rows.get(split, []))
        rejected = self.out / "convert_rejected.jsonl"
        kept = [r for r in read_jsonl(rejected) if r.get("split") not in written] if rejected.is_file() else []
        write_jsonl(rejected, kept + [{**p.to_dict(), "split": s} for s, p in self.skipped])
        return ConvertResult(out=self.out, classes=len(classes), rows=counts,
                             skipped=[p for _, p in self.skipped])


def text_fields(meta: dict) -> dict:
    """``title`` / ``description`` / ``tags`` of a metadata object, normalised to the layout's types.

    ``tags`` may be a list or a space-separated string, under ``tags`` or ``tag``; values that are
    not strings are dropped.
    """
    out: dict = {}
    for key in ("title", "description"):
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            out[key] = value.strip()
    tags = meta.get("tags", meta.get("tag"))
    if isinstance(tags, str):
        tags = tags.split()
    if isinstance(tags, list):
        tags = [t.strip() for t in tags if isinstance(t, str) and t.strip()]
        if tags:
            out["tags"] = tags
    return out
