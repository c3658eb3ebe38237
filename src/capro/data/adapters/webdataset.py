"""WebDataset tar shards (as img2dataset writes them) -> capro layout.

Each shard ``00000.tar`` holds samples as members sharing a key: ``000000000.jpg`` (the image),
``000000000.txt`` (the caption) and ``000000000.json`` (metadata: "caption", "url", "key",
"status", and the label under a user-chosen key). Images are extracted to
``DATA/images/<shard>/<member>``; members whose names would escape that directory, and links or
devices, make the whole shard refused. title <- the caption (``.txt``, else json "caption");
description <- json "description"; tags <- json "tags".
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path, PurePosixPath

from capro.data.adapters._common import (
    IMAGE_EXTS,
    ConvertResult,
    LayoutWriter,
    check_src_out,
    read_class_file,
    text_fields,
)
from capro.data.layout import ClassInfo, RowError, decode_json, is_safe_relpath
from capro.errors import DataError, UsageError


def _samples(shard: Path, tar: tarfile.TarFile) -> dict[str, dict[str, tarfile.TarInfo]]:
    """Group the members of ``tar`` by sample key (the member name up to the first dot of its file name)."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    for member in tar.getmembers():
        if not is_safe_relpath(member.name):
            raise DataError(f"{shard}: member {member.name[:200]!r} would be extracted outside the output "
                            "directory; refusing this archive (rebuild the shard with relative member names)")
        if member.isdir():
            continue
        if not member.isfile():
            raise DataError(f"{shard}: member {member.name[:200]!r} is a link or special file, not a regular "
                            "file; refusing this archive")
        name = str(PurePosixPath(member.name))
        folder, base = posixpath.split(name)
        stem, _, ext = base.partition(".")
        samples.setdefault(posixpath.join(folder, stem), {})[ext.lower()] = member
    return samples


def _read_text(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    fh = tar.extractfile(member)
    return fh.read().decode("utf-8", errors="replace").strip() if fh else ""


def _label_names(value: object, classes: list[ClassInfo] | None) -> list[str] | str:
    """The sample's label as class names (list for multi-label); ValueError with the reason if invalid."""
    values = value if isinstance(value, list) else [value]
    names: list[str] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ValueError(f"label {v!r} must be a class name, a class index, or a list of them")
        if isinstance(v, int):
            if classes is None:
                raise ValueError(f"label {v} is a class index; pass --classes FILE to name the classes")
            if not 0 <= v < len(classes):
                raise ValueError(f"class index {v} out of range ({len(classes)} classes)")
            v = classes[v].name
        if not v.strip():
            raise ValueError("empty label")
        names.append(v)
    if not names:
        raise ValueError("empty label list")
    return names if isinstance(value, list) else names[0]


def _shard_rows(shard: Path, tar: tarfile.TarFile, writer: LayoutWriter, *, split: str, label_key: str,
                given: list[ClassInfo] | None, classes_file: str | os.PathLike | None) -> list[dict]:
    """Extract the images of one shard and return its rows; skipped samples go to ``writer``."""
    known = {c.name for c in given} if given is not None else None
    rows: list[dict] = []
    for key, parts in _samples(shard, tar).items():
        meta: dict = {}
        if "json" in parts:
            try:
                meta = decode_json(_read_text(tar, parts["json"]))
            except RowError as exc:
                writer.skip(split, shard, 0, key, f"invalid metadata JSON ({parts['json'].name}: {exc})")
                continue
            if not isinstance(meta, dict):
                writer.skip(split, shard, 0, key, f"{parts['json'].name} is not a JSON object")
                continue
        image = next((m for ext, m in parts.items() if f".{ext.rsplit('.', 1)[-1]}" in IMAGE_EXTS), None)
        if image is None:
            status = f" (status {meta['status']!r})" if "status" in meta else ""
            writer.skip(split, shard, 0, key, f"no image in the sample{status}")
            continue
        if label_key not in meta:
            raise DataError(f"{shard}: sample {key!r} has no {label_key!r} key in its .json metadata; "
                            "pass --label-key with the metadata key that holds the class")
        try:
            label = _label_names(meta[label_key], given)
        except ValueError as exc:
            writer.skip(split, shard, 0, key, str(exc))
            continue
        names = label if isinstance(label, list) else [label]
        unknown = [n for n in names if known is not None and n not in known]
        if unknown:
            writer.skip(split, shard, 0, key, f"unknown label {unknown[0]!r}; it is not in {classes_file}")
            continue
        title = _read_text(tar, parts["txt"]) if "txt" in parts else meta.get("caption")
        row = {"id": key, "image": "", "label": label, **text_fields({**meta, "title": title})}
        row["image"] = writer.add_image_stream(tar.extractfile(image), f"{shard.stem}/{PurePosixPath(image.name)}")
        rows.append(row)
    return rows


def convert(src: str | os.PathLike, out: str | os.PathLike, *, label_key: str = "label",
            classes_file: str | os.PathLike | None = None, split: str = "train") -> ConvertResult:
    """Extract the shards ``src`` (one ``.tar`` or a directory of them) into a capro dataset at ``out``.

    Classes: ``classes_file`` (a classes.json-style list or one name per line) when given, else
    the sorted set of labels found. A sample without ``label_key`` in its metadata is an error.
    """
    src, out = Path(src), Path(out)
    check_src_out(src, out)
    shards = [src] if src.is_file() else sorted(src.glob("*.tar"))
    if not shards:
        raise UsageError(f"{src}: no .tar shards found")
    given = read_class_file(classes_file) if classes_file is not None else None
    writer = LayoutWriter(out, images="copy")
    for shard in shards:
        try:
            with tarfile.open(shard) as tar:
                rows = _shard_rows(shard, tar, writer, split=split, label_key=label_key, given=given, classes_file=classes_file)
        except tarfile.TarError as exc:
            raise DataError(f"{shard}: not a readable tar archive ({exc})") from exc
        for row in rows:
            writer.add_row(split, row, file=str(shard))
    if given is None:
        names = {n for row in writer.rows.get(split, [])
                 for n in (row["label"] if isinstance(row["label"], list) else [row["label"]])}
        given = [ClassInfo(name=n) for n in sorted(names)]
    if not given:
        raise DataError(f"{src}: no labelled samples found; nothing to convert")
    return writer.finish(given, (split,))
