"""Per-sample verdicts of offline cleaning (stage 3a): the schema of ``RUN/stage3a/samples.jsonl``.

One row per training sample::

    id                 the manifest id
    web_label          the given (web) label: a class name, or a list of names for multi-label data
    label              the final label after cleaning (web label if kept, suggested label if
                       relabelled, a list for multi-label), or null if removed
    suggested_label    the class with the highest cleaning score s_i (cleanlab's "predicted_label")
    kept / relabeled / removed   exactly one is true
    anchor             the sample was a text-matched anchor of its web label
    score              s_i of the final label (of the suggested label when removed), in [0, 1]
    label_quality      s_i of the web label, in [0, 1]; low = the web label is probably wrong
                       (cleanlab's label quality score / Datalab's "label_score")
    is_label_issue     relabelled or removed: the web label was judged wrong (cleanlab's meaning)
    text_distance      distance of the sample's (enhanced) web text to the textual prototype of its
                       web label (the text-match score; lower = better match), null if unknown
    nearest_prototype  the class whose visual prototype is most similar to the sample's embedding

Rows are built with :func:`verdict_row`, written with :func:`write_verdicts` (JSON lines, CSV, or
Parquet when pyarrow is installed) and read back with :func:`load_verdicts`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from capro.errors import DataError, UsageError
from capro.utils.io import atomic_write, read_jsonl, write_jsonl

ACTIONS = ("kept", "relabeled", "removed")
VERDICT_FIELDS = (
    "id", "web_label", "label", "suggested_label", "kept", "relabeled", "removed", "anchor",
    "score", "label_quality", "is_label_issue", "text_distance", "nearest_prototype",
)
FORMATS = ("jsonl", "csv", "parquet")
SAMPLES_PATH = Path("stage3a") / "samples.jsonl"

Label = str | list[str]


def _unit(value: float, name: str) -> float:
    v = float(value)
    if not math.isfinite(v) or not -1e-4 <= v <= 1 + 1e-4:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return round(min(max(v, 0.0), 1.0), 6)


def verdict_row(*, sample_id: str, web_label: Label, action: str, suggested_label: Label,
                anchor: bool, score: float, label_quality: float,
                text_distance: float | None = None, nearest_prototype: str | None = None,
                label: Label | None = None) -> dict[str, Any]:
    """One verdict. ``action`` is ``kept``, ``relabeled`` or ``removed``.

    ``label`` (the final label) defaults to ``web_label`` when kept and ``suggested_label`` when
    relabelled; pass it for multi-label rows, where a relabel flips only some classes. It is
    always None when removed.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    if action == "removed":
        final = None
    elif label is not None:
        final = label
    else:
        final = web_label if action == "kept" else suggested_label
    td = None if text_distance is None or not math.isfinite(float(text_distance)) else round(float(text_distance), 6)
    return {
        "id": sample_id,
        "web_label": web_label,
        "label": final,
        "suggested_label": suggested_label,
        "kept": action == "kept",
        "relabeled": action == "relabeled",
        "removed": action == "removed",
        "anchor": bool(anchor),
        "score": _unit(score, "score"),
        "label_quality": _unit(label_quality, "label_quality"),
        "is_label_issue": action != "kept",
        "text_distance": td,
        "nearest_prototype": nearest_prototype,
    }


def action_of(row: dict[str, Any]) -> str:
    """``kept`` | ``relabeled`` | ``removed`` of a verdict row."""
    if row.get("removed"):
        return "removed"
    return "relabeled" if row.get("relabeled") else "kept"


def _cell(value: Any) -> Any:
    """A CSV cell: lists as JSON text, None as empty."""
    if value is None:
        return ""
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    return value


def write_verdicts(path: str | os.PathLike, rows: Iterable[dict[str, Any]], *,
                   format: str = "jsonl") -> int:
    """Write verdict rows atomically as ``jsonl``, ``csv`` or ``parquet``; return the row count.

    CSV writes multi-label lists as JSON text. Parquet needs pyarrow (:class:`UsageError` if absent).
    """
    if format not in FORMATS:
        raise UsageError(f"unknown verdict format {format!r}; choose from {', '.join(FORMATS)}")
    rows = [{k: r.get(k) for k in VERDICT_FIELDS} for r in rows]
    if format == "jsonl":
        return write_jsonl(path, rows)
    if format == "csv":
        with atomic_write(path) as fh:
            writer = csv.DictWriter(fh, fieldnames=VERDICT_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
        return len(rows)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UsageError(f"{path}: writing Parquet needs pyarrow; install it with `pip install pyarrow`, "
                         "or choose the csv or jsonl format") from exc
    table = pa.Table.from_pylist(rows)
    with atomic_write(path, "wb") as fh:
        pq.write_table(table, fh)
    return len(rows)


def load_verdicts(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``RUN/stage3a/samples.jsonl``; fields a run did not write come back as None."""
    path = Path(run_dir) / SAMPLES_PATH
    if not path.is_file():
        raise DataError(f"{path}: not found; the run has not finished offline cleaning (stage 3a). "
                        f"Run `capro run DATA --out {run_dir} --resume` to complete it")
    try:
        rows = read_jsonl(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); rerun stage 3a to rewrite it") from exc
    for i, r in enumerate(rows, start=1):
        if not isinstance(r, dict) or "id" not in r:
            raise DataError(f"{path}:{i}: a verdict row must be an object with an \"id\"; rerun stage 3a")
        for k in VERDICT_FIELDS:
            r.setdefault(k, None)
    return rows
