"""A full disk while a checkpoint is written: one-line error naming the file, no temporary file
left, the previous checkpoint still loads, and ``--resume`` continues from it.

The disk fills up inside one save only: that save's file object (the real temporary file that
``atomic_write`` opened) writes its first bytes and then fails with ENOSPC, as a file system does
when it runs out of blocks in the middle of a file. Everything else is the real file system.
tests/utils/test_io_cache.py covers ENOSPC at fsync inside ``atomic_write``; here it happens
inside ``torch.save``, which reports a failed write as an unrelated RuntimeError
("unexpected pos ...") unless :func:`save_checkpoint` recovers the OSError.
"""

import contextlib
import errno
import os
import shutil

import pytest
import torch

import capro.engine.checkpoint as checkpoint
from capro.config import load_config
from capro.engine.checkpoint import load_checkpoint, save_checkpoint
from capro.engine.runner import run_pipeline
from capro.errors import CaproError

TINY_RUN_OVERRIDES = ["model.backbone=simple_cnn"]  # as the tiny_run fixture


class _FillsUp:
    """A binary file that accepts ``room`` more bytes, writes part of the next chunk, then fails
    with ``code``."""

    def __init__(self, fh, room: int, code: int = errno.ENOSPC) -> None:
        self.fh, self.room, self.code = fh, room, code

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self.room:
            self.fh.write(data[:self.room])
            self.room = 0
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()

    def fileno(self) -> int:
        return self.fh.fileno()


def _fill_disk_on(monkeypatch, target, *, nth: int, room: int, code: int = errno.ENOSPC) -> list:
    """Make the ``nth`` save to ``target`` (1-based) fail with ``code`` after ``room`` bytes."""
    real = checkpoint.atomic_write
    calls = []

    @contextlib.contextmanager
    def atomic_write(path, mode="w", encoding="utf-8"):
        with real(path, mode, encoding) as fh:
            if str(path) == str(target):
                calls.append(path)
                if len(calls) == nth:
                    yield _FillsUp(fh, room, code)
                    return
            yield fh

    monkeypatch.setattr(checkpoint, "atomic_write", atomic_write)
    return calls


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_second_save_fails_mid_file_and_the_first_checkpoint_survives(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    first = {"model": {"w": torch.arange(50_000, dtype=torch.float32)}, "epoch": 1}
    second = {"model": {"w": torch.zeros(50_000)}, "epoch": 2}
    calls = _fill_disk_on(monkeypatch, path, nth=2, room=100_000)
    save_checkpoint(path, first)
    with pytest.raises(CaproError) as info:
        save_checkpoint(path, second)
    assert len(calls) == 2
    message = str(info.value)
    assert message.startswith(f"{path}: disk full while writing the checkpoint; the previous "
                              "checkpoint was kept")
    assert "\n" not in message and "--resume" in message
    assert isinstance(info.value.__cause__, CaproError)  # atomic_write's, from the real OSError
    assert _leftovers(tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["model"]["w"], first["model"]["w"])


def test_disk_full_at_fsync_is_the_same_error(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("capro.utils.io.os.fsync", no_space)
    with pytest.raises(CaproError, match=r"last\.pt: disk full while writing the checkpoint"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert _leftovers(tmp_path) == []


def test_other_write_errors_are_not_called_disk_full(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    _fill_disk_on(monkeypatch, path, nth=2, room=10, code=errno.EIO)
    save_checkpoint(path, {"epoch": 1})
    with pytest.raises(OSError) as info:  # the write's own error, not torch's "unexpected pos"
        save_checkpoint(path, {"epoch": 2})
    assert info.value.errno == errno.EIO and not isinstance(info.value, CaproError)
    assert load_checkpoint(path)["epoch"] == 1
    assert _leftovers(tmp_path) == []


def test_run_stopped_by_a_full_disk_resumes_from_the_previous_checkpoint(tiny_run, tiny_web_data,
                                                                         tmp_path, monkeypatch):
    ref_run, ref = tiny_run
    run = tmp_path / "run"
    shutil.copytree(ref_run / "text", run / "text")  # a finished step: skips loading MiniLM again
    cfg = load_config(preset="tiny", overrides=TINY_RUN_OVERRIDES)
    last = run / "stage2" / "last.pt"
    _fill_disk_on(monkeypatch, last, nth=2, room=4096)  # the end of stage-2 epoch 1
    with pytest.raises(CaproError, match=rf"^{last}: disk full while writing the checkpoint"):
        run_pipeline(tiny_web_data, run, cfg, progress=False)
    monkeypatch.undo()
    assert _leftovers(run / "stage2") == []
    ck = torch.load(last, weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"]) == (1, 0)

    got = run_pipeline(tiny_web_data, run, cfg, resume=True, progress=False)
    assert got["eval"] == ref["eval"]
    assert got["cleaning"] == ref["cleaning"]
