"""Skip a pipeline step on rerun when its inputs and config are unchanged.

A step writes its artefacts, then :func:`mark_done` records a fingerprint (a hash of the config
section and input files it depends on) in ``<step_dir>/done.json``. On rerun, :func:`is_done`
compares fingerprints: any change re-runs the step.

Examples:
    >>> fp = fingerprint({"k": 20}, files=[])
    >>> is_done(step_dir, fp)   # False before mark_done(step_dir, fp)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from capro.utils.io import read_json, write_json


def file_digest(path: str | os.PathLike, *, block: int = 1 << 20) -> str:
    """Cheap content identity of a file: size, mtime and a hash of its first and last MiB."""
    p = Path(path)
    st = p.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(p, "rb") as fh:
        h.update(fh.read(block))
        if st.st_size > block:
            fh.seek(max(st.st_size - block, block))
            h.update(fh.read(block))
    return h.hexdigest()


def fingerprint(params: Any, files: Iterable[str | os.PathLike] = ()) -> str:
    """Hash of JSON-serialisable ``params`` plus the digests of ``files``."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for f in files:
        h.update(str(f).encode())
        h.update(file_digest(f).encode())
    return h.hexdigest()


def is_done(step_dir: str | os.PathLike, fp: str) -> bool:
    marker = Path(step_dir) / "done.json"
    if not marker.is_file():
        return False
    try:
        return read_json(marker).get("fingerprint") == fp
    except (OSError, ValueError):
        return False


def mark_done(step_dir: str | os.PathLike, fp: str, **info: Any) -> None:
    write_json(Path(step_dir) / "done.json", {"fingerprint": fp, **info})
