"""Export the cleaned training set of a run; the source dataset is never modified.

Formats:

``jsonl``        capro's layout: ``classes.json``, ``train.jsonl`` with the final labels (relabelled
                 rows get the suggested label, removed rows are left out), ``val.jsonl`` /
                 ``test.jsonl`` as they are, and the images linked (or copied) under the same
                 relative paths, so the output validates on its own.
``imagefolder``  ``DIR/<class>/<id>.<ext>`` for the kept and relabelled training images
                 (``folders.json`` maps folder names back to class names); single-label only.
``csv``, ``parquet``   only the per-sample verdict table, ``DIR/samples.<ext>``.

Dataset formats also write ``removed.jsonl``: every training row not exported, with its reason
(removed by cleaning, rejected by validation, no verdict, missing image), and ``export.json``, a
summary. The export is built in a temporary directory beside ``DIR`` and renamed into place.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from capro.data.layout import ClassInfo, Problem, Record, available_splits, read_classes, read_split
from capro.engine.validation import held_out_ids
from capro.errors import CaproError, DataError, UsageError
from capro.report.rundir import check_run_dir, read_rejected, resolve_data_root
from capro.report.verdicts import SAMPLES_PATH, load_verdicts, write_verdicts
from capro.utils.io import read_json, write_json, write_jsonl

EXPORT_FORMATS = ("jsonl", "imagefolder", "csv", "parquet")


@dataclass
class ExportSummary:
    """What an export wrote. ``exported + removed`` = every row of ``DATA/train.jsonl``."""

    out: Path
    format: str
    exported: int = 0
    relabeled: int = 0
    removed: int = 0
    splits: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "format": self.format, "exported": self.exported,
                "relabeled": self.relabeled, "removed": self.removed, "splits": self.splits}


def _prepare_out(out: Path, data_root: Path) -> None:
    data = data_root.resolve()
    target = out.resolve()
    if target == data or data in target.parents:
        raise UsageError(f"{out}: lies inside the dataset {data_root}; export elsewhere, the source is never modified")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out}: already exists and is not empty; choose a new --out directory")


def _place(src: Path, dest: Path, *, copy: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        return
    if copy:
        shutil.copy2(src, dest)
        return
    try:
        os.symlink(src.resolve(), dest)
    except OSError as exc:
        raise CaproError(f"{dest}: cannot create a symbolic link ({exc.strerror}); pass --copy to copy the images") from exc


def _manifest_row(rec: Record, label: Any, image: str) -> dict[str, Any]:
    row: dict[str, Any] = {"id": rec.id, "image": image, "label": label}
    if rec.title:
        row["title"] = rec.title
    if rec.description:
        row["description"] = rec.description
    if rec.tags:
        row["tags"] = list(rec.tags)
    return row


def _web_label(rec: Record, classes: list[ClassInfo]) -> Any:
    names = [classes[i].name for i in rec.labels]
    return names if rec.multi_label else names[0]


def _removed_row(split: str, rec: Record | None, problem: Problem | None, data_root: Path,
                 reason: str, classes: list[ClassInfo], verdict: dict | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"split": split}
    if rec is not None:
        row.update(id=rec.id, image=rec.image, source=str((data_root / rec.image).resolve()),
                   label=_web_label(rec, classes))
    else:
        assert problem is not None
        row.update(id=problem.id, line=problem.line)
    row["reason"] = reason
    if verdict is not None:
        row.update(suggested_label=verdict.get("suggested_label"),
                   label_quality=verdict.get("label_quality"))
    return row


def _safe_name(name: str) -> str:
    safe = re.sub(r"[^\w.\- ]", "_", name).strip(" .")
    return safe or "_"


def _folder_names(classes: list[ClassInfo]) -> list[str]:
    """One distinct, filesystem-safe folder name per class."""
    out: list[str] = []
    used: set[str] = set()
    for i, c in enumerate(classes):
        name = _safe_name(c.name)
        if name.lower() in used:
            name = f"{name}_{i}"
        used.add(name.lower())
        out.append(name)
    return out


def _verdict_reason(v: dict) -> str:
    lq = v.get("label_quality")
    quality = f"label quality {lq:.3f}" if isinstance(lq, float | int) else "low label quality"
    return (f"removed by offline cleaning: web label {v.get('web_label')!r} has {quality}, "
            f"suggested label {v.get('suggested_label')!r} below the relabel threshold")


def _final_label(v: dict, index: dict[str, int], path: Path) -> Any:
    label = v.get("label")
    names = label if isinstance(label, list) else [label]
    for name in names:
        if name not in index:
            raise DataError(f"{path}: id={v['id']}: final label {name!r} is not a class of the dataset; "
                            "is --data the dataset this run was trained on?")
    return label


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, *, format: str = "jsonl",
               data_root: str | os.PathLike | None = None, copy: bool = False,
               progress: bool = False) -> ExportSummary:
    """Export the cleaned dataset of ``run_dir`` to the new directory ``out`` (see module doc)."""
    if format not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {format!r}; choose from {', '.join(EXPORT_FORMATS)}")
    run = check_run_dir(run_dir)
    out = Path(out)
    verdicts = load_verdicts(run)
    if format in ("csv", "parquet"):
        if out.exists() and not out.is_dir():
            raise UsageError(f"{out}: exists and is not a directory; choose a new --out directory")
        n = write_verdicts(out / f"samples.{format}", verdicts, format=format)
        return ExportSummary(out=out, format=format, exported=n)

    root = resolve_data_root(run, data_root)
    _prepare_out(out, root)
    classes = read_classes(root)
    index = {c.name: i for i, c in enumerate(classes)}
    train = read_split(root, "train", classes)
    if format == "imagefolder" and train.multi_label:
        raise UsageError("imagefolder export needs single-label data; use --format jsonl for multi-label data")
    by_id = {v["id"]: v for v in verdicts}
    unknown = set(by_id) - {r.id for r in train.records}
    if unknown:
        raise DataError(f"{run / SAMPLES_PATH}: {len(unknown)} ids are not in {root / 'train.jsonl'} "
                        f"(first: {sorted(unknown)[0]!r}); pass the run's dataset with --data DIR")
    rejected = read_rejected(run)
    held_out = held_out_ids(run)
    folders = _folder_names(classes)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary directory
    summary = ExportSummary(out=out, format=format)
    try:
        removed: list[dict[str, Any]] = [
            _removed_row("train", None, p, root, f"invalid row: {p.reason}", classes) for p in train.problems
        ]
        rows: list[dict[str, Any]] = []
        for rec in tqdm(train.records, desc="export", unit="img", disable=not progress):
            v = by_id.get(rec.id)
            src = root / rec.image
            if v is None:
                reason = (f"rejected by validation: {rejected[rec.id]}" if rec.id in rejected
                          else "held out of training as the validation split (holdout.jsonl)"
                          if rec.id in held_out
                          else f"no verdict in {SAMPLES_PATH} (the row was not part of the run)")
                removed.append(_removed_row("train", rec, None, root, reason, classes))
            elif v.get("removed") or v.get("label") is None:
                removed.append(_removed_row("train", rec, None, root, _verdict_reason(v), classes, v))
            elif not src.is_file():
                removed.append(_removed_row("train", rec, None, root, f"source image missing: {src}", classes, v))
            else:
                label = _final_label(v, index, run / SAMPLES_PATH)
                if format == "imagefolder":
                    image = f"{folders[index[label]]}/{_safe_name(rec.id)}{src.suffix.lower()}"
                else:
                    image = rec.image
                _place(src, tmp / image, copy=copy)
                rows.append(_manifest_row(rec, label, image))
                summary.relabeled += bool(v.get("relabeled"))
        summary.exported = len(rows)
        summary.removed = len(removed)
        summary.splits["train"] = len(rows)
        if format == "jsonl":
            write_json(tmp / "classes.json", read_json(root / "classes.json"))
            write_jsonl(tmp / "train.jsonl", rows)
            for split in available_splits(root):
                if split == "train":
                    continue
                part = read_split(root, split, classes)
                eval_rows = []
                for p in part.problems:
                    removed.append(_removed_row(split, None, p, root, f"invalid row: {p.reason}", classes))
                for rec in part.records:
                    src = root / rec.image
                    if not src.is_file():
                        removed.append(_removed_row(split, rec, None, root, f"source image missing: {src}", classes))
                        continue
                    _place(src, tmp / rec.image, copy=copy)
                    eval_rows.append(_manifest_row(rec, _web_label(rec, classes), rec.image))
                summary.splits[split] = write_jsonl(tmp / f"{split}.jsonl", eval_rows)
        else:
            write_json(tmp / "folders.json", [{"folder": f, "class": c.name} for f, c in zip(folders, classes)])
        write_jsonl(tmp / "removed.jsonl", removed)
        write_json(tmp / "export.json", {**summary.to_dict(), "run": str(run.resolve()),
                                         "data": str(root.resolve()), "copy": copy})
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
