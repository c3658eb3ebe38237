"""Atomic file writes and JSON-lines helpers.

Every artefact capro writes goes through :func:`atomic_write`: the data is written to a temporary
file in the same directory, flushed and fsync'ed, then renamed over the target. A process killed
mid-write leaves the previous file (or none), never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from capro.errors import CaproError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched. A full disk
    (``ENOSPC``) is re-raised as :class:`CaproError` naming the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if exc.errno == 28:  # ENOSPC
            raise CaproError(f"{path}: no space left on device; the previous file was kept. Free disk space and rerun") from exc
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=indent, ensure_ascii=False)
        fh.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write one JSON object per line atomically; return the number of rows."""
    n = 0
    with atomic_write(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False))
            fh.write("\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file written by capro (trusted input; user manifests go through data.layout)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def link_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy directory ``src`` to the new ``dst`` as hard links where the file system allows (plain
    copies elsewhere). capro replaces its files atomically and never edits them in place, so the
    two trees never see each other's later writes."""
    import shutil

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def partial_npy(path: str | os.PathLike) -> Path:
    """Where a large ``.npy`` output is written, block by block, before it is complete."""
    path = Path(path)
    return path.with_name(path.stem + ".partial.npy")


def open_npy(path: str | os.PathLike, shape: tuple[int, ...], dtype: Any = "float32"):
    """A new memory-mapped ``.npy`` of ``shape`` at :func:`partial_npy` of ``path``, to fill row
    block by row block and then hand to :func:`publish_npy` (the finished name only ever holds a
    complete file)."""
    import numpy as np

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(partial_npy(path), mode="w+", dtype=dtype, shape=shape)


def publish_npy(array, path: str | os.PathLike) -> None:
    """Flush the :func:`open_npy` array of ``path`` and rename it to ``path``."""
    array.flush()
    os.replace(partial_npy(path), path)
