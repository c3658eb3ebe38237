"""Dataset validation, skip-bad loading and truth.jsonl, on real PIL images written to tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capro.data.layout import Problem
from capro.data.validate import (
    check_image,
    load_split_for_run,
    read_truth,
    validate_dataset,
)
from capro.errors import DataError, UsageError
from capro.utils.io import read_jsonl

CLASSES = [
    {"name": "tench", "wnid": "n01440764"},
    {"name": "goldfish", "wnid": "n01443537", "definition": "small golden or orange-red freshwater fish"},
    {"name": "great white shark"},
]


def _image(path: Path, seed: int, size: int = 16) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def make_dataset(root: Path, n_train: int = 20, n_val: int = 4) -> Path:
    """A valid dataset: 3 classes, PNG and JPEG images, train/val manifests and truth.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(CLASSES), encoding="utf-8")
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for i in range(n):
            image = f"images/{split}/{i:03d}.{'png' if i % 2 else 'jpg'}"
            _image(root / image, seed=i + (1000 if split == "val" else 0))
            rows.append({"id": f"{split}-{i}", "image": image, "label": CLASSES[i % 3]["name"],
                         "title": f"photo {i}", "tags": ["fish", f"t{i}"]})
        _write_lines(root / f"{split}.jsonl", rows)
    truth = [{"id": f"train-{i}", "true_label": CLASSES[(i + (i % 5 == 0)) % 3]["name"] if i != 7 else None,
              "noise": "ood" if i == 7 else ("flip" if i % 5 == 0 else "clean")} for i in range(n_train)]
    _write_lines(root / "truth.jsonl", truth)
    return root


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "D")


def test_valid_dataset_is_clean(dataset: Path) -> None:
    report = validate_dataset(dataset)
    assert report.ok, [str(p) for p in report.problems]
    assert report.counts == {"train": 20, "val": 4, "truth": 20}


def test_done_when_scenario_reports_exactly_the_eight_bad_rows(dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "copy"
    shutil.copytree(dataset, data)
    train = data / "train.jsonl"
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    truncated = [2, 5, 11]  # 0-based row index; the manifest line is index + 1
    deleted = [8, 17]
    for i in truncated:
        img = data / rows[i]["image"]
        blob = img.read_bytes()
        img.write_bytes(blob[: len(blob) // 2])
    for i in deleted:
        (data / rows[i]["image"]).unlink()
    with open(train, "a", encoding="utf-8") as fh:
        fh.write('{"id": "broken", "image": \n')                                       # line 21
        fh.write(json.dumps({**rows[3], "title": "again"}) + "\n")                    # line 22
        fh.write(json.dumps({**rows[4], "id": "new-1", "label": "whale"}) + "\n")     # line 23

    report = validate_dataset(data)

    assert not report.ok
    assert report.counts["train"] == 23
    got = [(Path(p.file).name, p.line, p.id, p.reason) for p in report.problems]
    expected = sorted(
        [("train.jsonl", i + 1, f"train-{i}", "truncated") for i in truncated]
        + [("train.jsonl", i + 1, f"train-{i}", "missing image file") for i in deleted]
        + [("train.jsonl", 21, None, "invalid JSON"),
           ("train.jsonl", 22, "train-3", "duplicate id (first at line 4)"),
           ("train.jsonl", 23, "new-1", "unknown label 'whale'")],
        key=lambda t: t[1])
    assert len(got) == 8
    for (file, line, rid, reason), (efile, eline, erid, ereason) in zip(got, expected):
        assert (file, line, rid) == (efile, eline, erid)
        assert reason.startswith(ereason if ereason != "truncated" else "truncated or corrupt image ("), reason
    # Problem.__str__ is the line the CLI prints
    assert str(report.problems[0]) == f"{data / 'train.jsonl'}:3: id=train-2: {report.problems[0].reason}"


def test_check_image_reasons(tmp_path: Path) -> None:
    good = tmp_path / "a.png"
    _image(good, 0)
    assert check_image(good) is None
    assert check_image(tmp_path / "nope.png") == "missing image file"
    assert check_image(tmp_path / "a.png" / "x.png") == "missing image file"
    text = tmp_path / "t.jpg"
    text.write_text("hello, not an image")
    assert check_image(text) == "not an image (PIL cannot identify the file format)"
    empty = tmp_path / "e.jpg"
    empty.write_bytes(b"")
    assert check_image(empty) == "truncated or corrupt image (empty file)"
    assert check_image(tmp_path) == "not an image (a directory)"
    assert check_image(good, max_pixels=15 * 16) == "image too large (16 x 16)"
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert check_image(fifo) == "not an image (not a regular file)"  # and it did not block


def test_decompression_bomb_header_is_refused_without_decoding(tmp_path: Path) -> None:
    # a tiny valid PNG whose header claims 100000 x 100000 pixels
    small = tmp_path / "small.png"
    Image.new("L", (1, 1)).save(small)
    blob = bytearray(small.read_bytes())
    blob[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR width, height
    blob[29:33] = zlib.crc32(bytes(blob[12:29])).to_bytes(4, "big")  # IHDR CRC
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bytes(blob))
    assert check_image(bomb) == "image too large (10000000000 pixels)"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[1, 2", "invalid JSON at column"),
        ("{}", "must be a non-empty JSON list"),
        ("[]", "must be a non-empty JSON list"),
        ('[{"name": "a"}, {"name": "a"}]', "entry 1 repeats the class name 'a'"),
        ('[{"name": "a", "wnid": "x123"}]', "entry 0 ('a') has wnid 'x123'"),
        ('[{"name": ""}]', "entry 0 needs a non-empty string \"name\""),
        ('[{"name": "a", "colour": 1}]', "entry 0 has unknown key(s) ['colour']"),
        ('[3]', "entry 0 must be an object"),
    ],
)
def test_malformed_classes_json_is_one_problem(dataset: Path, content: str, reason: str) -> None:
    (dataset / "classes.json").write_text(content)
    report = validate_dataset(dataset)
    classes_problems = [p for p in report.problems if p.file.endswith("classes.json")]
    assert len(classes_problems) == 1
    assert classes_problems[0].reason.startswith(reason), classes_problems[0].reason
    # rows are still checked (labels cannot be): an otherwise clean dataset has no row problems,
    # except truth.jsonl whose labels cannot be checked either
    assert all(p.file.endswith("classes.json") for p in report.problems)


def test_missing_classes_json_and_rows_still_checked(dataset: Path) -> None:
    (dataset / "classes.json").unlink()
    (dataset / "images/train/000.jpg").unlink()
    report = validate_dataset(dataset)
    assert [(Path(p.file).name, p.line, p.reason.split(";")[0]) for p in report.problems] == [
        ("classes.json", 0, "missing"), ("train.jsonl", 1, "missing image file")]


@pytest.mark.parametrize(
    ("image", "escapes"),
    [("../x.png", True), ("/etc/passwd", True), ("images/../../x.png", True), ("C:/x.png", True),
     ("\\\\server\\x.png", True), ("images/train/000.jpg", False)],
)
def test_paths_escaping_the_dataset_are_refused(dataset: Path, image: str, escapes: bool) -> None:
    with open(dataset / "train.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "evil", "image": image, "label": "tench"}) + "\n")
    report = validate_dataset(dataset, check_images=False)
    reasons = [p.reason for p in report.problems]
    if escapes:
        assert len(reasons) == 1 and "escapes the dataset directory" in reasons[0]
        assert report.problems[0].line == 21 and report.problems[0].id == "evil"
    else:
        assert reasons == []


def test_wrong_types_and_missing_fields(dataset: Path) -> None:
    bad = [
        {"image": "images/train/000.jpg", "label": "tench"},
        {"id": 5, "image": "images/train/000.jpg", "label": "tench"},
        {"id": "a", "image": "images/train/000.jpg", "label": 3},
        {"id": "b", "image": "images/train/000.jpg", "label": []},
        {"id": "c", "image": "images/train/000.jpg", "label": "tench", "tags": [1]},
        {"id": "d", "image": "images/train/000.jpg", "label": "tench", "title": ["x"]},
        ["not", "an", "object"],
    ]
    with open(dataset / "train.jsonl", "a") as fh:
        for row in bad:
            fh.write(json.dumps(row) + "\n")
    report = validate_dataset(dataset, check_images=False)
    assert [(p.line, p.id, p.reason) for p in report.problems] == [
        (21, None, 'missing field "id"'),
        (22, None, 'field "id" must be a non-empty string'),
        (23, "a", 'field "label" must be a class name or a list of class names'),
        (24, "b", 'field "label" is an empty list; give at least one class name'),
        (25, "c", 'field "tags" must be a list of strings'),
        (26, "d", 'field "title" must be a string'),
        (27, None, "a row must be a JSON object, got list"),
    ]


def test_truth_jsonl_checks(dataset: Path) -> None:
    with open(dataset / "truth.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "ghost", "true_label": "tench", "noise": "clean"}) + "\n")
        fh.write(json.dumps({"id": "train-0", "true_label": "tench", "noise": "clean"}) + "\n")
        fh.write(json.dumps({"id": "train-1", "true_label": ["tench", "orca"], "noise": "flip"}) + "\n")
        fh.write(json.dumps({"id": "train-2", "noise": "flip"}) + "\n")
    report = validate_dataset(dataset, check_images=False)
    assert [(Path(p.file).name, p.line, p.id, p.reason) for p in report.problems] == [
        ("truth.jsonl", 21, "ghost", "id is not in train.jsonl"),
        ("truth.jsonl", 22, "train-0", "duplicate id (first at line 1)"),
        ("truth.jsonl", 23, "train-1", "unknown true_label 'orca'; it is not a name in classes.json"),
        ("truth.jsonl", 24, "train-2", 'missing field "true_label"'),
    ]


def test_read_truth(dataset: Path, tmp_path: Path) -> None:
    truth = read_truth(dataset)
    assert len(truth) == 20
    assert truth["train-7"] == {"true_label": None, "noise": "ood"}
    assert truth["train-5"] == {"true_label": "tench", "noise": "flip"}
    assert truth["train-4"] == {"true_label": "goldfish", "noise": "clean"}
    assert read_truth(tmp_path) == {}
    with open(dataset / "truth.jsonl", "a") as fh:
        fh.write("nonsense\n")
    with pytest.raises(DataError, match=r"truth.jsonl: 1 invalid rows \(first: line 21: id=-: invalid JSON"):
        read_truth(dataset)


def test_validate_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a directory"):
        validate_dataset(tmp_path / "missing")
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))
    report = validate_dataset(tmp_path)
    assert [p.reason for p in report.problems] == [
        "no train.jsonl, val.jsonl or test.jsonl; a dataset needs at least train.jsonl"]


def _break_rows(root: Path) -> list[tuple[int, str]]:
    """Delete one image and append an unknown label; return the (line, id) of the bad rows."""
    (root / "images/train/004.jpg").unlink()
    with open(root / "train.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "x", "image": "images/train/000.jpg", "label": "orca"}) + "\n")
    return [(5, "train-4"), (21, "x")]


def test_load_split_refuses_bad_rows_without_skip_bad(dataset: Path, tmp_path: Path) -> None:
    _break_rows(dataset)
    with pytest.raises(DataError) as err:
        load_split_for_run(dataset, "train", run_dir=tmp_path / "run", skip_bad=False)
    msg = str(err.value)
    assert msg.startswith(f"{dataset / 'train.jsonl'}: 2 invalid rows (first: line 5: id=train-4: missing image file)")
    assert "--skip-bad" in msg and f"capro validate {dataset}" in msg
    assert not (tmp_path / "run").exists()


def test_load_split_skip_bad_records_every_row(dataset: Path, tmp_path: Path, capsys) -> None:
    bad = _break_rows(dataset)
    run = tmp_path / "run"
    split = load_split_for_run(dataset, "train", run_dir=run, skip_bad=True)
    assert len(split) == 19
    assert "train-4" not in {r.id for r in split.records}
    rejected = read_jsonl(run / "rejected.jsonl")
    file = str(dataset / "train.jsonl")
    assert [(r["file"], r["line"], r["id"]) for r in rejected] == [(file, line, rid) for line, rid in bad]
    assert rejected[0]["reason"] == "missing image file"
    assert rejected[1]["reason"].startswith("unknown label 'orca'")
    assert "skipped 2 invalid rows" in capsys.readouterr().err

    # a second split merges into the same file; re-loading train replaces its rows, not duplicates
    (dataset / "images/val/001.png").write_bytes(b"garbage")
    val = load_split_for_run(dataset, "val", run_dir=run, skip_bad=True)
    assert len(val) == 3
    load_split_for_run(dataset, "train", run_dir=run, skip_bad=True)
    rejected = read_jsonl(run / "rejected.jsonl")
    assert sorted((Path(r["file"]).name, r["line"]) for r in rejected) == [
        ("train.jsonl", 5), ("train.jsonl", 21), ("val.jsonl", 2)]


def test_load_split_clean_and_all_bad(dataset: Path, tmp_path: Path) -> None:
    split = load_split_for_run(dataset, "val", run_dir=tmp_path / "run", skip_bad=False)
    assert [r.id for r in split.records] == ["val-0", "val-1", "val-2", "val-3"]
    assert [r.labels for r in split.records] == [(0,), (1,), (2,), (0,)]
    assert not (tmp_path / "run" / "rejected.jsonl").exists()
    shutil.rmtree(dataset / "images/val")
    with pytest.raises(DataError, match="no valid rows left after skipping 4 invalid rows"):
        load_split_for_run(dataset, "val", run_dir=tmp_path / "run", skip_bad=True)
    assert len(read_jsonl(tmp_path / "run" / "rejected.jsonl")) == 4


def test_load_split_without_run_dir_prints_each_skipped_row(dataset: Path, capsys) -> None:
    _break_rows(dataset)
    split = load_split_for_run(dataset, "train", run_dir=None, skip_bad=True, check_images=False)
    assert len(split) == 20  # the deleted image is not noticed without image checks
    err = capsys.readouterr().err
    assert f"capro: skipped {Problem(str(dataset / 'train.jsonl'), 21, 'x', '')}".rstrip() in err
