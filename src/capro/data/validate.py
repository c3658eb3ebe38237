"""Dataset validation: every manifest row, every image file, ``classes.json`` and ``truth.jsonl``.

:func:`validate_dataset` collects every problem of a dataset directory (for ``capro validate``).
:func:`load_split_for_run` is what training commands call: it refuses a split with bad rows, or,
with ``skip_bad``, drops them and records each in ``RUN/rejected.jsonl`` so no row is lost without
a trace.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from capro.data.layout import (
    ClassesError,
    ClassInfo,
    PathError,
    Problem,
    Record,
    Split,
    available_splits,
    escape_text,
    iter_json_lines,
    path_type,
    read_classes,
    read_split,
    show_id,
)
from capro.errors import DataError, UsageError
from capro.utils.dist import is_main
from capro.utils.io import read_jsonl, write_jsonl

MAX_PIXELS = 89_478_485
"""Images with more pixels are refused as possible decompression bombs (PIL's default limit)."""
IMAGE_WORKERS = 2
_CHUNK = 4096  # images submitted to the thread pool at a time (bounds memory on huge datasets)


@dataclass
class ValidationReport:
    """Everything wrong with a dataset directory.

    ``problems`` are in file order (classes.json, train, val, test, truth) and line order within a
    file; ``counts`` holds the number of non-blank rows read per manifest.
    """

    root: Path
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def check_image(path: Path, *, max_pixels: int = MAX_PIXELS) -> str | None:
    """Return ``None`` when ``path`` opens and fully decodes as an image, else the reason.

    Checks, in order: the file exists and is a regular file (a FIFO or device is never opened, so
    this cannot hang), it is not empty, PIL identifies it, its size is at most ``max_pixels``,
    ``verify()`` passes and a fresh ``load()`` decodes every pixel.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "missing image file"
    except OSError as exc:
        return f"unreadable image file ({exc.strerror or _one_line(exc)})"
    if stat.S_ISDIR(st.st_mode):
        return "not an image (a directory)"
    if not stat.S_ISREG(st.st_mode):
        return "not an image (not a regular file)"
    if st.st_size == 0:
        return "truncated or corrupt image (empty file)"
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                return f"image too large ({width} x {height})"
            im.verify()
        with Image.open(path) as im:
            im.load()
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        return f"image too large ({pixels.group(1) + ' pixels' if pixels else 'decompression bomb'})"
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify the file format)"
    except PermissionError as exc:
        return f"unreadable image file ({exc.strerror})"
    except Exception as exc:  # a corrupt file can make any decoder raise anything
        return f"truncated or corrupt image ({_one_line(exc)})"
    return None


def check_images(paths: Sequence[Path], *, progress: bool = False, desc: str = "images",
                 workers: int = IMAGE_WORKERS) -> list[str | None]:
    """:func:`check_image` on every path (in a thread pool), results in input order."""
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not (progress and is_main()))
    out: list[str | None] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for start in range(0, len(paths), _CHUNK):
                for result in pool.map(check_image, paths[start:start + _CHUNK]):
                    out.append(result)
                    bar.update(1)
    bar.close()
    return out


def image_problems(root: Path, records: Sequence[Record], file: str, *,
                   progress: bool = False) -> list[Problem]:
    """One :class:`Problem` per record whose image is missing or does not decode."""
    reasons = check_images([root / r.image for r in records], progress=progress,
                           desc=f"checking {Path(file).name}")
    return [Problem(file, r.line, r.id, why) for r, why in zip(records, reasons) if why]


def _checked_split(root: Path, name: str, classes: list[ClassInfo] | None, *,
                   check_images: bool, progress: bool) -> tuple[Split, list[Problem]]:
    """Read one split and check its images; return the split and all its problems in line order."""
    split = read_split(root, name, classes, check_labels=classes is not None)
    problems = list(split.problems)
    if check_images and split.records:
        problems += image_problems(root, split.records, str(root / f"{name}.jsonl"), progress=progress)
    problems.sort(key=lambda p: p.line)
    return split, problems


def _parse_truth(path: Path, classes: list[ClassInfo] | None,
                 train_ids: set[str] | None) -> tuple[dict[str, dict], list[Problem]]:
    """Parse ``truth.jsonl``; ``train_ids=None`` skips the "id must be in train.jsonl" check."""
    names = {c.name for c in classes} if classes is not None else None
    fname = str(path)
    truth: dict[str, dict] = {}
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    try:
        with open(path, "rb") as fh:
            for lineno, obj in iter_json_lines(fh, fname, problems):
                rid = obj.get("id") if isinstance(obj, dict) else None
                reason = _truth_row_problem(obj, names)
                if reason is None and rid in first_line:
                    reason = f"duplicate id (first at line {first_line[rid]})"
                if reason is None and train_ids is not None and rid not in train_ids:
                    reason = "id is not in train.jsonl"
                if reason is not None:
                    problems.append(Problem(fname, lineno, rid if isinstance(rid, str) else None, reason))
                    continue
                first_line[rid] = lineno
                truth[rid] = {"true_label": obj["true_label"], "noise": obj.get("noise", "")}
    except OSError as exc:
        problems.append(Problem(fname, 0, None, f"cannot read it ({exc.strerror or type(exc).__name__})"))
    return truth, problems


def _truth_row_problem(obj: object, names: set[str] | None) -> str | None:
    if not isinstance(obj, dict):
        return f"a row must be a JSON object, got {type(obj).__name__}"
    for key in ("id", "true_label"):
        if key not in obj:
            return f"missing field \"{key}\""
    if not isinstance(obj["id"], str) or not obj["id"].strip():
        return "field \"id\" must be a non-empty string"
    if not isinstance(obj.get("noise", ""), str):
        return "field \"noise\" must be a string"
    label = obj["true_label"]
    if label is None:
        return None
    labels = label if isinstance(label, list) else [label]
    for name in labels:
        if not isinstance(name, str):
            return "field \"true_label\" must be a class name, a list of names, or null"
        if names is not None and name not in names:
            return f"unknown true_label {name[:200]!r}; it is not a name in classes.json"
    return None


def read_truth(root: str | os.PathLike) -> dict[str, dict]:
    """``DATA/truth.jsonl`` as ``id -> {"true_label": name | list | None, "noise": str}``; ``{}`` when absent.

    Raises :class:`DataError` when a row is invalid.
    """
    root = Path(root)
    path = root / "truth.jsonl"
    if path_type(path) != "file":
        return {}
    truth, problems = _parse_truth(path, read_classes(root), None)
    if problems:
        raise DataError(f"{path}: {len(problems)} invalid rows (first: {_short(problems[0])}); "
                        f"run `capro validate {root}` for the full list")
    return truth


def validate_dataset(root: str | os.PathLike, *, check_images: bool = True,
                     splits: Iterable[str] | None = None, progress: bool = False) -> ValidationReport:
    """Check ``classes.json``, every split manifest (rows and images) and ``truth.jsonl``.

    ``splits`` defaults to every standard split present. Raises :class:`UsageError` when ``root``
    is not a directory; everything else wrong is reported in the returned report.
    """
    root = Path(root)
    try:
        kind = path_type(root)
    except PathError as exc:
        raise UsageError(f"{escape_text(str(root))}: {exc.reason}; give the dataset directory that holds "
                         "classes.json and train.jsonl") from exc
    if kind != "dir":
        raise UsageError(f"{escape_text(str(root))}: not a directory; give the dataset directory that holds "
                         "classes.json and train.jsonl")
    report = ValidationReport(root=root)
    try:
        classes: list[ClassInfo] | None = read_classes(root)
    except ClassesError as exc:
        report.problems.append(exc.to_problem())
        classes = None
    names = available_splits(root) if splits is None else list(splits)
    if not names:
        report.problems.append(Problem(str(root), 0, None,
                                       "no train.jsonl, val.jsonl or test.jsonl; a dataset needs at least train.jsonl"))
    train_ids: set[str] | None = None
    for name in names:
        path = root / f"{name}.jsonl"
        if path_type(path) != "file":
            report.problems.append(Problem(str(path), 0, None, "manifest not found"))
            continue
        split, problems = _checked_split(root, name, classes, check_images=check_images, progress=progress)
        report.problems += problems
        report.counts[name] = len(split.records) + len(split.problems)
        if name == "train":
            train_ids = {r.id for r in split.records}
    truth_path = root / "truth.jsonl"
    if path_type(truth_path) == "file" and (splits is None or "train" in names):
        truth, problems = _parse_truth(truth_path, classes, train_ids or set())
        report.problems += problems
        report.counts["truth"] = len(truth) + len(problems)
    return report


def _short(p: Problem) -> str:
    where = f"line {p.line}: " if p.line else ""
    return f"{where}id={show_id(p.id)}: {escape_text(p.reason)}"


def load_split_for_run(root: str | os.PathLike, split: str, *, run_dir: Path | None, skip_bad: bool,
                       check_images: bool = True, classes: list[ClassInfo] | None = None) -> Split:
    """Read and check one split for a training or evaluation run; return its good records.

    Bad rows (invalid JSON, fields, labels, duplicate ids, missing or corrupt images) make it raise
    :class:`DataError`, unless ``skip_bad``: then they are dropped, and each is recorded as
    ``{"file", "line", "id", "reason"}`` in ``run_dir/rejected.jsonl`` (merged with the rows other
    splits recorded there) and a one-line warning is printed. Only rank 0 writes and prints.
    """
    root = Path(root)
    if classes is None:
        classes = read_classes(root)
    manifest = root / f"{split}.jsonl"
    result, problems = _checked_split(root, split, classes, check_images=check_images, progress=False)
    if not problems:
        return result
    if not skip_bad:
        raise DataError(f"{manifest}: {len(problems)} invalid rows (first: {_short(problems[0])}); "
                        f"run `capro validate {root}` for the full list, fix them, or pass --skip-bad")
    bad_lines = {p.line for p in problems}
    good = [r for r in result.records if r.line not in bad_lines]
    if is_main():
        _record_rejected(run_dir, str(manifest), problems)
    if not good:
        raise DataError(f"{manifest}: no valid rows left after skipping {len(problems)} invalid rows; "
                        f"run `capro validate {root}` to see why")
    return Split(name=split, records=good, problems=problems, classes=classes)


def _record_rejected(run_dir: Path | None, file: str, problems: list[Problem]) -> None:
    """Write ``problems`` to ``run_dir/rejected.jsonl``, replacing earlier rows of the same ``file``."""
    if run_dir is None:
        for p in problems:
            print(f"capro: skipped {p}", file=sys.stderr)
        print(f"capro: warning: skipped {len(problems)} invalid rows of {file} (listed above)", file=sys.stderr)
        return
    path = Path(run_dir) / "rejected.jsonl"
    kept = [row for row in read_jsonl(path) if row.get("file") != file] if path.is_file() else []
    write_jsonl(path, kept + [p.to_dict() for p in problems])
    print(f"capro: warning: skipped {len(problems)} invalid rows of {file} "
          f"(first: {_short(problems[0])}); every one is listed in {path}", file=sys.stderr)
