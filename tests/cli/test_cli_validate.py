"""``capro validate``: output lines and exit codes 0 / 1 / 2, through ``capro.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from capro.cli import main


def _dataset(root: Path, n: int = 20) -> Path:
    root.mkdir()
    (root / "classes.json").write_text(json.dumps([{"name": "cat"}, {"name": "dog", "wnid": "n02084071"}]))
    (root / "img").mkdir()
    with open(root / "train.jsonl", "w") as fh:
        for i in range(n):
            Image.new("RGB", (32, 32), (i * 10, 255 - i * 10, 7 * i)).save(root / f"img/{i}.jpg", quality=95)
            fh.write(json.dumps({"id": f"r{i}", "image": f"img/{i}.jpg", "label": ["cat", "dog"][i % 2]}) + "\n")
    return root


def test_clean_dataset_exits_0(tmp_path: Path, capsys) -> None:
    data = _dataset(tmp_path / "D")
    assert main(["validate", str(data)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == f"capro validate: {data}: OK (train 20)"


def test_eight_bad_rows_exit_1_one_line_each(tmp_path: Path, capsys) -> None:
    data = _dataset(tmp_path / "D")
    for i in (1, 2, 3):
        p = data / f"img/{i}.jpg"
        p.write_bytes(p.read_bytes()[:300])
    for i in (10, 11):
        (data / f"img/{i}.jpg").unlink()
    with open(data / "train.jsonl", "a") as fh:
        fh.write("{oops\n")
        fh.write(json.dumps({"id": "r0", "image": "img/0.jpg", "label": "cat"}) + "\n")
        fh.write(json.dumps({"id": "r99", "image": "img/0.jpg", "label": "cow"}) + "\n")

    assert main(["validate", str(data)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 8
    manifest = data / "train.jsonl"
    expected_prefixes = [
        f"{manifest}:2: id=r1: truncated or corrupt image (",
        f"{manifest}:3: id=r2: truncated or corrupt image (",
        f"{manifest}:4: id=r3: truncated or corrupt image (",
        f"{manifest}:11: id=r10: missing image file",
        f"{manifest}:12: id=r11: missing image file",
        f"{manifest}:21: id=-: invalid JSON (",
        f"{manifest}:22: id=r0: duplicate id (first at line 1)",
        f"{manifest}:23: id=r99: unknown label 'cow'",
    ]
    for line, prefix in zip(lines, expected_prefixes):
        assert line.startswith(prefix), line
    assert err.strip() == f"capro validate: {data}: 8 problems (train 23)"


def test_json_output_and_no_images(tmp_path: Path, capsys) -> None:
    data = _dataset(tmp_path / "D", n=3)
    (data / "img/2.jpg").unlink()
    assert main(["validate", str(data), "--no-images"]) == 0
    capsys.readouterr()
    assert main(["validate", str(data), "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)
    assert problems == [{"file": str(data / "train.jsonl"), "line": 3, "id": "r2", "reason": "missing image file"}]


def test_usage_errors_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["validate", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"capro validate: error: {tmp_path / 'nowhere'}: not a directory")
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        main(["validate"])
    assert exc.value.code == 2
