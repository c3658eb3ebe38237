"""``capro convert``: summary line, exit codes, and that its output passes ``capro validate``."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from PIL import Image

from capro.cli import main


def _folders(src: Path) -> Path:
    for i, cls in enumerate(["ant", "bee", "bee"]):
        (src / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(src / cls / f"{i}.png")
    (src / "ant/0.txt").write_text("an ant")
    return src


def test_convert_imagefolder_then_validate(tmp_path: Path, capsys) -> None:
    src, out = _folders(tmp_path / "src"), tmp_path / "D"
    assert main(["convert", "imagefolder", str(src), "--out", str(out), "--copy-images"]) == 0
    assert capsys.readouterr().err.strip() == f"capro convert: {out}: 2 classes; train 3 rows"
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert rows[0] == {"id": "ant/0", "image": "images/train/ant/0.png", "label": "ant", "title": "an ant"}
    assert not (out / rows[0]["image"]).is_symlink()
    assert main(["validate", str(out)]) == 0


def test_convert_summary_counts_skipped_rows(tmp_path: Path, capsys) -> None:
    src = _folders(tmp_path / "src")
    (src / "ant/0.json").write_text("[")
    assert main(["convert", "imagefolder", str(src), "--out", str(tmp_path / "D")]) == 0
    err = capsys.readouterr().err.strip()
    assert err == (f"capro convert: {tmp_path / 'D'}: 2 classes; train 2 rows; skipped 1 rows "
                   f"(invalid sidecar JSON: 1), listed in {tmp_path / 'D/convert_rejected.jsonl'}")


def test_convert_exit_codes(tmp_path: Path, capsys) -> None:
    src = _folders(tmp_path / "src")
    assert main(["convert", "imagefolder", str(tmp_path / "nope"), "--out", str(tmp_path / "D")]) == 2
    assert main(["convert", "webvision", str(src), "--out", str(tmp_path / "D"), "--label-key", "x"]) == 2
    assert "--label-key does not apply to format 'webvision'" in capsys.readouterr().err
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards/00000.tar", "w") as tar:
        tar.add(src / "ant/0.png", arcname="000.png")
        tar.add(src / "ant/0.txt", arcname="000.txt")
    assert main(["convert", "webdataset", str(tmp_path / "shards"), "--out", str(tmp_path / "W"), "--link-images"]) == 2
    assert "--link-images does not apply to format 'webdataset'" in capsys.readouterr().err
    assert main(["convert", "webdataset", str(tmp_path / "shards"), "--out", str(tmp_path / "W")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("capro convert: error: ") and "sample '000' has no 'label' key" in err
    assert len(err.splitlines()) == 1
    assert main(["convert", "webvision", str(src), "--out", str(tmp_path / "V")]) == 1
    assert "info/synsets.txt: missing" in capsys.readouterr().err
