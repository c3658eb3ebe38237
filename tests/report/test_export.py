"""`capro export`: the cleaned set validates on its own, accounts for every training row, and the
source dataset is left untouched."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import pytest
from PIL import Image
from report_fixtures import REJECTED, TRAIN, build_run

from capro.cli import main
from capro.data.validate import validate_dataset
from capro.errors import DataError, UsageError
from capro.report.export import export_run
from capro.utils.io import read_json, read_jsonl, write_jsonl


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (not following links) -> hash of its bytes and mtime."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            st = p.lstat()
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes() + str(st.st_mtime_ns).encode()).hexdigest()
    return out


def _final(rid: str):
    web, _, action, suggested, _, _ = TRAIN[rid]
    return {"kept": web, "relabeled": suggested, "removed": None}[action]


def test_jsonl_export_validates_and_accounts_for_every_training_row(synthetic_run, tmp_path):
    before = _tree_digest(synthetic_run.data)
    out = tmp_path / "clean"
    rc = main(["export", str(synthetic_run.run), "--format", "jsonl", "--out", str(out)])
    assert rc == 0
    assert _tree_digest(synthetic_run.data) == before

    report = validate_dataset(out)
    assert report.ok, [str(p) for p in report.problems]
    assert main(["validate", str(out)]) == 0

    train = read_jsonl(out / "train.jsonl")
    removed = read_jsonl(out / "removed.jsonl")
    exported_ids = [r["id"] for r in train]
    removed_ids = [r["id"] for r in removed if r["split"] == "train"]
    assert sorted(exported_ids + removed_ids) == sorted(synthetic_run.train_ids)
    assert not set(exported_ids) & set(removed_ids)
    assert {r["id"]: r["label"] for r in train} == {rid: _final(rid) for rid in TRAIN if _final(rid) is not None}
    reasons = {r["id"]: r["reason"] for r in removed}
    assert set(reasons) == {"t03", "t13", REJECTED}
    assert reasons[REJECTED].startswith("rejected by validation: truncated or corrupt image")
    assert reasons["t03"].startswith("removed by offline cleaning")
    assert removed[0]["source"] == str((synthetic_run.data / f"images/train/{removed[0]['id']}.png").resolve())

    by_id = {r["id"]: r for r in train}
    assert by_id["t04"]["title"].startswith("cotton tee") and by_id["t04"]["tags"] == ["shop", "t-shirt/top"]
    assert "title" not in by_id["t08"]
    img = out / by_id["t02"]["image"]
    assert img.is_symlink() and img.resolve() == (synthetic_run.data / "images/train/t02.png").resolve()
    assert read_jsonl(out / "test.jsonl") == read_jsonl(synthetic_run.data / "test.jsonl")
    assert read_json(out / "classes.json") == read_json(synthetic_run.data / "classes.json")
    summary = read_json(out / "export.json")
    assert (summary["exported"], summary["relabeled"], summary["removed"]) == (13, 3, 3)


def test_copy_mode_writes_real_files(synthetic_run, tmp_path):
    out = tmp_path / "copied"
    s = export_run(synthetic_run.run, out, copy=True)
    img = out / "images/train/t00.png"
    assert not img.is_symlink()
    assert img.read_bytes() == (synthetic_run.data / "images/train/t00.png").read_bytes()
    assert s.splits == {"train": 13, "val": 3, "test": 6}


def test_imagefolder_export_puts_each_image_under_its_final_class(synthetic_run, tmp_path):
    out = tmp_path / "folders"
    s = export_run(synthetic_run.run, out, format="imagefolder")
    folders = {f["class"]: f["folder"] for f in read_json(out / "folders.json")}
    assert folders == {"T-shirt/top": "T-shirt_top", "Trouser": "Trouser", "Bag": "Bag"}
    found = {p.stem: p.parent.name for p in out.glob("*/*.png")}
    expected = {rid: folders[_final(rid)] for rid in TRAIN if _final(rid) is not None}
    assert found == expected
    assert s.exported == 13
    with Image.open(out / "Trouser" / "t02.png") as im:
        assert im.size == (8, 8)
    removed = {r["id"] for r in read_jsonl(out / "removed.jsonl")}
    assert sorted([*found, *removed]) == sorted(synthetic_run.train_ids)


def test_invalid_manifest_rows_are_listed_as_removed(synthetic_run, tmp_path):
    with open(synthetic_run.data / "train.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"id": "bad", "image": "images/train/t00.png", "label": "Sock"}\n{not json\n')
    out = tmp_path / "clean"
    s = export_run(synthetic_run.run, out)
    bad = [r for r in read_jsonl(out / "removed.jsonl") if r["reason"].startswith("invalid row")]
    assert [(r["id"], r["line"]) for r in bad] == [("bad", 17), (None, 18)]
    assert s.exported + s.removed == 18  # every line of train.jsonl


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_verdict_table_formats(synthetic_run, tmp_path, fmt):
    out = tmp_path / "table"
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        assert main(["export", str(synthetic_run.run), "--format", fmt, "--out", str(out)]) == 2
        return
    s = export_run(synthetic_run.run, out, format=fmt)
    assert s.exported == len(TRAIN) and (out / f"samples.{fmt}").is_file()


def test_refusals(synthetic_run, tmp_path):
    run, data = synthetic_run.run, synthetic_run.data
    with pytest.raises(UsageError, match="inside the dataset"):
        export_run(run, data / "export")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        export_run(run, busy)
    assert (busy / "x").read_text() == "keep me"
    with pytest.raises(UsageError, match="multi-label|single-label"):
        rows = read_jsonl(data / "train.jsonl")
        rows[0]["label"] = [rows[0]["label"]]
        write_jsonl(data / "train.jsonl", rows)
        export_run(run, tmp_path / "ml", format="imagefolder")
    assert not (tmp_path / "ml").exists()
    assert not list(tmp_path.glob(".ml.*"))  # the partial directory was cleaned up


def test_errors_name_the_fix(tmp_path):
    s = build_run(tmp_path / "a")
    (s.run / "run.json").unlink()
    with pytest.raises(UsageError, match="pass --data DIR"):
        export_run(s.run, tmp_path / "o1")
    other = build_run(tmp_path / "b")
    rows = read_jsonl(other.data / "train.jsonl")
    write_jsonl(other.data / "train.jsonl", rows[:5])
    with pytest.raises(DataError, match="ids are not in .*train.jsonl.*--data"):
        export_run(s.run, tmp_path / "o2", data_root=other.data)
    (s.run / "stage3a" / "samples.jsonl").unlink()
    assert main(["export", str(s.run), "--out", str(tmp_path / "o3"), "--data", str(s.data)]) == 1
