"""Reading a finished run directory: where its data is, its per-epoch logs, its rejected rows."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from capro.errors import DataError, UsageError
from capro.utils.io import read_json, read_jsonl

LOG_STAGES = ("stage1", "stage2", "stage3b")


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise UsageError(f"{run}: run directory not found; pass the --out directory of `capro run`")
    return run


def read_optional_json(path: Path) -> Any:
    """The decoded JSON file, or None when it is absent or unreadable."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def read_optional_jsonl(path: Path) -> list[dict] | None:
    try:
        return read_jsonl(path)
    except (OSError, ValueError):
        return None


def resolve_data_root(run_dir: str | os.PathLike, data: str | os.PathLike | None = None) -> Path:
    """The dataset a run was trained on: ``data`` if given, else ``RUN/run.json``'s ``"data"``."""
    run = Path(run_dir)
    if data is None:
        info = read_optional_json(run / "run.json")
        data = info.get("data") if isinstance(info, dict) else None
        if not data:
            raise UsageError(f"{run / 'run.json'}: missing or without a \"data\" path; pass --data DIR")
    root = Path(data)
    if not (root / "classes.json").is_file():
        raise DataError(f"{root}: not a capro dataset (no classes.json); pass the run's dataset with --data DIR")
    return root


def read_rejected(run_dir: str | os.PathLike) -> dict[str, str]:
    """id -> reason for the rows ``--skip-bad`` dropped (``RUN/rejected.jsonl``)."""
    rows = read_optional_jsonl(Path(run_dir) / "rejected.jsonl") or []
    return {str(r["id"]): str(r.get("reason", "")) for r in rows if isinstance(r, dict) and r.get("id")}


def _number(text: str | None) -> float | None:
    try:
        v = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_log(path: str | os.PathLike) -> dict[str, list[float | None]] | None:
    """A per-epoch CSV log as column -> values (numeric columns only); None when absent or empty."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return None
    if not rows:
        return None
    columns: dict[str, list[float | None]] = {}
    for name in rows[0]:
        if name is None:
            continue
        values = [_number(r.get(name)) for r in rows]
        if any(v is not None for v in values):
            columns[name] = values
    return columns or None


def read_logs(run_dir: str | os.PathLike) -> dict[str, dict[str, list[float | None]]]:
    """stage -> its log columns, for the stages that wrote ``RUN/<stage>/log.csv``."""
    out = {}
    for stage in LOG_STAGES:
        log = read_log(Path(run_dir) / stage / "log.csv")
        if log:
            out[stage] = log
    return out
