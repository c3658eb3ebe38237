"""The dataset layout, the contract every part of capro reads.

::

    DATA/classes.json   list, index = class id: {"name": str, "wnid": "n04197391" (optional),
                        "definition": str (optional)}
    DATA/train.jsonl    one object per line: "id" (unique str), "image" (path relative to DATA),
                        "label" (class name; a list of names for multi-label),
                        optional "title", "description" (str) and "tags" (list of str)
    DATA/val.jsonl, DATA/test.jsonl    optional, same fields, clean labels
    DATA/truth.jsonl    optional: "id", "true_label" (name, list, or null for out-of-distribution),
                        "noise" (which kind of noise the sample got)

Parsing is pure: :func:`parse_classes` and :func:`parse_row` turn decoded JSON into typed records
or raise :class:`ClassesError` / :class:`RowError` with the reason. :func:`read_split` reads a whole manifest and returns
the good records plus one :class:`Problem` per bad line (file, line number, id, reason). Image
files are checked by :mod:`capro.data.validate`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from capro.errors import DataError

SPLITS = ("train", "val", "test")
WNID_RE = re.compile(r"^n\d{1,8}$")
TEXT_FIELDS = ("title", "description", "tags")
MAX_LINE_BYTES = 1 << 20  # a manifest line over 1 MiB is refused, not parsed
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAYBE_SURROGATE = re.compile(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]")  # a raw one, or a JSON escape
_SURROGATE_REASON = ("holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape); "
                     "write the character itself or a complete surrogate pair")


def escape_text(text: str) -> str:
    """``text`` with every non-printable character (control characters, line and paragraph
    separators, lone surrogates, ...) written as its Python escape, so it prints on one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def show_id(rid: str | None) -> str:
    """A row id as problem messages print it: as is when plainly printable, else quoted and
    escaped like ``repr`` (``'a\\nb'``), so an id can never break a line or send a terminal escape."""
    if not rid:
        return "-"
    if rid.isprintable() and "\\" not in rid and not rid.startswith(("'", '"')):
        return rid
    return repr(rid)


def has_surrogate(text: str) -> bool:
    """True when ``text`` holds a lone UTF-16 surrogate (it cannot be written as UTF-8)."""
    return _SURROGATE.search(text) is not None


class PathError(DataError):
    """A path whose kind cannot be told (name too long, permission denied, a symlink loop, a NUL
    byte). ``path`` and ``reason`` are kept apart so callers can re-word the error."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{escape_text(path)}: {reason}")
        self.path, self.reason = path, reason


def path_type(path: str | os.PathLike) -> str | None:
    """``"file"``, ``"dir"`` or ``"other"`` for an existing path, ``None`` when there is none.

    Unlike ``Path.is_file()``, every other failure is a one-line :class:`PathError` naming the
    path (``Path.is_file()`` raises a bare ``OSError`` for a name over 255 bytes, say).
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise PathError(os.fsdecode(path), f"cannot access it ({exc.strerror or type(exc).__name__})") from exc
    except ValueError as exc:  # an embedded NUL byte
        raise PathError(os.fsdecode(path), f"not a usable path ({exc})") from exc
    if stat.S_ISREG(mode):
        return "file"
    return "dir" if stat.S_ISDIR(mode) else "other"


@dataclass(frozen=True)
class ClassInfo:
    """One class: its name, optional WordNet id (``n`` + 8-digit offset) and optional definition."""

    name: str
    wnid: str | None = None
    definition: str | None = None

    @property
    def offset(self) -> int | None:
        """WordNet noun offset of ``wnid`` (``n04197391`` -> 4197391)."""
        return int(self.wnid[1:]) if self.wnid else None


@dataclass(frozen=True)
class Record:
    """One manifest row, validated. ``labels`` holds class ids: one for single-label rows."""

    id: str
    image: str
    labels: tuple[int, ...]
    multi_label: bool = False
    title: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    line: int = 0

    @property
    def label(self) -> int:
        """The single label (first label of a multi-label row)."""
        return self.labels[0] if self.labels else -1

    def text(self, fields: tuple[str, ...] | list[str] = TEXT_FIELDS) -> str:
        """The row's web text: the chosen fields joined by spaces (tags joined too)."""
        parts: list[str] = []
        for f in fields:
            if f == "tags":
                parts.extend(self.tags)
            elif f in ("title", "description"):
                parts.append(getattr(self, f))
            else:
                raise ValueError(f"unknown text field {f!r}; choose from {TEXT_FIELDS}")
        return " ".join(p for p in parts if p)


@dataclass(frozen=True)
class Problem:
    """A bad row: where it is and why. ``line`` is 1-based; 0 for a whole-file problem."""

    file: str
    line: int
    id: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{escape_text(self.file)}:{self.line}" if self.line else escape_text(self.file)
        return f"{where}: id={show_id(self.id)}: {escape_text(self.reason)}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "id": self.id, "reason": self.reason}


class RowError(ValueError):
    """A manifest row is invalid; the message is the reason."""


def _surrogate_field(obj: Any) -> str | None:
    """Where decoded JSON ``obj`` first holds a lone surrogate (in a key or a string value):
    ``field "tags"`` under a top-level key of an object, else ``a string``; ``None`` when nowhere."""
    stack: list[tuple[Any, str]] = [(obj, "a string")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if has_surrogate(value):
                return where
        elif isinstance(value, list):
            stack.extend((v, where) for v in value)
        elif isinstance(value, dict):
            for key, v in value.items():
                here = f"field {json.dumps(key[:60])}" if value is obj else where
                if has_surrogate(key):
                    return here
                stack.append((v, here))
    return None


def decode_json(data: bytes | str) -> Any:
    """``json.loads`` that raises :class:`RowError` with a one-line reason for any bad input
    (bad UTF-8, bad syntax, nesting too deep, a number too long to convert, a string holding a
    lone surrogate such as the escape ``\\ud800``, which no UTF-8 file or terminal can take)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise RowError("not valid UTF-8; re-save the file as UTF-8") from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
        raise RowError(f"invalid JSON ({exc.msg} at {where})") from exc
    except RecursionError as exc:
        raise RowError("JSON nested too deeply") from exc
    except ValueError as exc:
        raise RowError(f"invalid JSON ({' '.join(str(exc).split())[:200]})") from exc
    if _MAYBE_SURROGATE.search(text):
        where = _surrogate_field(obj)
        if where is not None:
            raise RowError(f"{where} {_SURROGATE_REASON}")
    return obj


class ClassesError(DataError):
    """``classes.json`` is malformed. ``file``, ``line`` (0 when unknown) and ``reason`` are kept apart
    so that validation can report it as a :class:`Problem`."""

    def __init__(self, file: str, reason: str, *, line: int = 0) -> None:
        super().__init__(f"{escape_text(file)}: {reason}")
        self.file, self.line, self.reason = file, line, reason

    def to_problem(self) -> Problem:
        return Problem(self.file, self.line, None, self.reason)


@dataclass
class Split:
    """The good records of one manifest, the problems found, and the class list it was read against."""

    name: str
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)
    classes: list[ClassInfo] = field(default_factory=list)

    @property
    def multi_label(self) -> bool:
        return any(r.multi_label for r in self.records)

    def __len__(self) -> int:
        return len(self.records)


def parse_classes(data: Any, file: str = "classes.json") -> list[ClassInfo]:
    """Validate decoded ``classes.json``; raise :class:`ClassesError` naming the entry and the fix."""
    if not isinstance(data, list) or not data:
        raise ClassesError(file, "must be a non-empty JSON list of {\"name\": ...} objects")
    out: list[ClassInfo] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(data):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise ClassesError(file, f"entry {i} must be an object with a \"name\", got {type(entry).__name__}")
        unknown = set(entry) - {"name", "wnid", "definition"}
        if unknown:
            raise ClassesError(file, f"entry {i} has unknown key(s) {sorted(unknown)}; allowed: name, wnid, definition")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ClassesError(file, f"entry {i} needs a non-empty string \"name\"")
        if has_surrogate(name):
            raise ClassesError(file, f"entry {i} has a \"name\" that {_SURROGATE_REASON}")
        if name in seen:
            raise ClassesError(file, f"entry {i} repeats the class name {name!r} (first at entry {seen[name]}); names must be unique")
        seen[name] = i
        wnid = entry.get("wnid")
        if wnid is not None and (not isinstance(wnid, str) or not WNID_RE.match(wnid)):
            raise ClassesError(file, f"entry {i} ({name!r}) has wnid {wnid!r}; expected 'n' followed by the 8-digit WordNet offset, e.g. n04197391")
        if wnid is not None:
            wnid = f"n{int(wnid[1:]):08d}"
        definition = entry.get("definition")
        if definition is not None and not isinstance(definition, str):
            raise ClassesError(file, f"entry {i} ({name!r}) has a non-string \"definition\"")
        if definition is not None and has_surrogate(definition):
            raise ClassesError(file, f"entry {i} ({name!r}) has a \"definition\" that {_SURROGATE_REASON}")
        out.append(ClassInfo(name=name, wnid=wnid, definition=definition))
    return out


def read_classes(root: str | os.PathLike) -> list[ClassInfo]:
    """Read and validate ``DATA/classes.json``; raise :class:`ClassesError` when it is malformed."""
    path = Path(root) / "classes.json"
    fname = str(path)
    try:
        kind = path_type(path)
    except PathError as exc:
        raise ClassesError(fname, exc.reason) from exc
    if kind != "file":
        raise ClassesError(fname, "missing; every dataset needs a classes.json (a list of {\"name\": ...})")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ClassesError(fname, f"cannot read it ({exc.strerror or type(exc).__name__})") from exc
    except UnicodeDecodeError as exc:
        raise ClassesError(fname, f"not valid UTF-8 ({exc.reason}); re-save it as UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise ClassesError(fname, f"invalid JSON at column {exc.colno} ({exc.msg})", line=exc.lineno) from exc
    except RecursionError as exc:
        raise ClassesError(fname, "JSON nested too deeply") from exc
    except ValueError as exc:
        raise ClassesError(fname, f"invalid JSON ({' '.join(str(exc).split())[:200]})") from exc
    return parse_classes(data, fname)


def is_safe_relpath(image: str) -> bool:
    """True when ``image`` is a non-empty relative path that stays inside its base directory."""
    if not image or "\x00" in image:
        return False
    p = Path(image)
    if p.is_absolute() or image.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", image):
        return False
    return ".." not in p.parts


def _check_unicode(value: str, key: str) -> None:
    if has_surrogate(value):
        raise RowError(f"field \"{key}\" {_SURROGATE_REASON}")


def parse_row(obj: Any, class_index: Mapping[str, int] | None) -> Record:
    """Validate one decoded manifest row (without touching the image file).

    ``class_index`` maps class names to ids; ``None`` skips the label-name check (used to keep
    validating rows when ``classes.json`` itself is broken) and leaves ``labels`` empty.
    """
    if not isinstance(obj, dict):
        raise RowError(f"a row must be a JSON object, got {type(obj).__name__}")
    for key in ("id", "image", "label"):
        if key not in obj:
            raise RowError(f"missing field \"{key}\"")
    rid, image, label = obj["id"], obj["image"], obj["label"]
    if not isinstance(rid, str) or not rid.strip():
        raise RowError("field \"id\" must be a non-empty string")
    _check_unicode(rid, "id")
    if not isinstance(image, str):
        raise RowError("field \"image\" must be a string path relative to the dataset directory")
    _check_unicode(image, "image")
    if not is_safe_relpath(image):
        raise RowError(f"image path {image[:200]!r} escapes the dataset directory; use a relative path inside it")
    multi = isinstance(label, list)
    names = label if multi else [label]
    if not names:
        raise RowError("field \"label\" is an empty list; give at least one class name")
    labels: list[int] = []
    for name in names:
        if not isinstance(name, str):
            raise RowError("field \"label\" must be a class name or a list of class names")
        _check_unicode(name, "label")
        if class_index is None:
            continue
        if name not in class_index:
            raise RowError(f"unknown label {name[:200]!r}; it is not a name in classes.json")
        if class_index[name] not in labels:
            labels.append(class_index[name])
    kwargs: dict[str, Any] = {}
    for key in ("title", "description"):
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise RowError(f"field \"{key}\" must be a string")
        _check_unicode(value, key)
        kwargs[key] = value
    tags = obj.get("tags")
    if tags is not None:
        if isinstance(tags, str):
            tags = [tags]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise RowError("field \"tags\" must be a list of strings")
        for tag in tags:
            _check_unicode(tag, "tags")
        kwargs["tags"] = tuple(tags)
    return Record(id=rid, image=image, labels=tuple(labels), multi_label=multi, **kwargs)


def iter_json_lines(fh: IO[bytes], fname: str, problems: list[Problem]) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, decoded JSON)`` for each non-blank line of a binary file handle.

    Lines over :data:`MAX_LINE_BYTES` and lines that do not decode are appended to ``problems``
    (with no id) and skipped.
    """
    for lineno, raw in enumerate(fh, start=1):
        if len(raw) > MAX_LINE_BYTES:
            problems.append(Problem(fname, lineno, None, f"line longer than {MAX_LINE_BYTES} bytes"))
            continue
        if not raw.strip():
            continue
        try:
            yield lineno, decode_json(raw)
        except RowError as exc:
            problems.append(Problem(fname, lineno, None, str(exc)))


def read_split(root: str | os.PathLike, split: str, classes: list[ClassInfo] | None = None,
               *, manifest: str | os.PathLike | None = None, check_labels: bool = True) -> Split:
    """Read ``DATA/<split>.jsonl`` (or ``manifest``); bad lines become :class:`Problem` entries.

    Duplicate ids are problems on the second and later occurrences. Image files are not opened here.
    ``check_labels=False`` accepts any label names (``classes`` is then not read).
    """
    root = Path(root)
    if check_labels and classes is None:
        classes = read_classes(root)
    index = {c.name: i for i, c in enumerate(classes)} if check_labels else None
    path = Path(manifest) if manifest is not None else root / f"{split}.jsonl"
    fname = str(path)
    if path_type(path) != "file":
        raise DataError(f"{escape_text(fname)}: manifest not found")
    records: list[Record] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    try:
        with open(path, "rb") as fh:
            for lineno, obj in iter_json_lines(fh, fname, problems):
                rid = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
                try:
                    rec = parse_row(obj, index)
                except RowError as exc:
                    problems.append(Problem(fname, lineno, rid, str(exc)))
                    continue
                if rec.id in seen:
                    problems.append(Problem(fname, lineno, rec.id, f"duplicate id (first at line {seen[rec.id]})"))
                    continue
                seen[rec.id] = lineno
                records.append(dataclasses.replace(rec, line=lineno))
    except OSError as exc:
        raise DataError(f"{escape_text(fname)}: cannot read the manifest ({exc.strerror or type(exc).__name__})") from exc
    return Split(name=split, records=records, problems=problems, classes=classes or [])


def available_splits(root: str | os.PathLike) -> list[str]:
    """The standard splits whose manifest exists under ``root``, in :data:`SPLITS` order."""
    return [s for s in SPLITS if path_type(Path(root) / f"{s}.jsonl") == "file"]
