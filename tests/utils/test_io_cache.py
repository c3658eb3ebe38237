import errno
import json

import pytest

from capro.errors import CaproError
from capro.utils import io
from capro.utils.cache import fingerprint, is_done, mark_done


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), io.atomic_write(target) as fh:
        fh.write("partial")
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_full_disk_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.bin"
    with io.atomic_write(target, "wb") as fh:
        fh.write(b"good")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", no_space)
    with pytest.raises(CaproError, match="no space left"), io.atomic_write(target, "wb") as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"good"
    assert len(list(tmp_path.iterdir())) == 1


def test_jsonl_roundtrip(tmp_path):
    rows = [{"id": "a", "x": [1, 2]}, {"id": "é", "x": None}]
    assert io.write_jsonl(tmp_path / "r.jsonl", rows) == 2
    assert io.read_jsonl(tmp_path / "r.jsonl") == rows


def test_fingerprint_tracks_params_and_files(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("one")
    fp = fingerprint({"k": 20}, files=[f])
    assert fp == fingerprint({"k": 20}, files=[f])
    assert fp != fingerprint({"k": 21}, files=[f])
    step = tmp_path / "step"
    assert not is_done(step, fp)
    mark_done(step, fp, rows=3)
    assert is_done(step, fp)
    f.write_text("two!")
    assert not is_done(step, fingerprint({"k": 20}, files=[f]))


def test_atomic_write_gives_usual_permissions(tmp_path):
    import os

    target = tmp_path / "m.json"
    io.write_json(target, {})
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
