"""Format adapters: tiny native fixtures (real PIL images) converted and checked field by field."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capro.data.adapters import ADAPTERS, convert, get_adapter
from capro.data.validate import validate_dataset
from capro.errors import CaproError, DataError, UsageError
from capro.utils.io import read_json, read_jsonl


def _image(path: Path, seed: int = 0, fmt: str | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format=fmt or path.suffix[1:].replace("jpg", "jpeg"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _rejected(out: Path) -> list[tuple]:
    return [(Path(r["file"]).name, r["line"], r["id"], r["reason"], r["split"])
            for r in read_jsonl(out / "convert_rejected.jsonl")]


# --------------------------------------------------------------------------- WebVision 1.0

def _webvision(src: Path) -> Path:
    _write(src / "info/synsets.txt", "n01440764 tench, Tinca tinca\nn02012849 crane\nn03126707 crane\n")
    _write(src / "info/train_filelist_google.txt",
           "google/q0000/000001.jpg 0\ngoogle/q0000/000002.jpg 0\ngoogle/q0001/000001.jpg 1\n"
           "google/q0002/000003.jpg 5\ngoogle/q0002/000004.jpg 2\nthis line is wrong\n")
    _write(src / "info/train_filelist_flickr.txt", "flickr/q0000/000001.jpg 0\n")
    _write(src / "info/val_filelist.txt", "val_images_256/val000001.jpg 1\nval000002.jpg 2\n")
    for i, rel in enumerate(["google/q0000/000001.jpg", "google/q0000/000002.jpg", "google/q0001/000001.jpg",
                             "google/q0002/000003.jpg", "flickr/q0000/000001.jpg",
                             "val_images_256/val000001.jpg", "val_images_256/val000002.jpg"]):
        _image(src / rel, seed=i)
    _write(src / "google/q0000.json", json.dumps([
        {"id": "000001", "title": "A tench", "description": "fish in a net", "tags": ["fish", "green"], "rank": 1},
        {"id": "000002", "title": "T2", "description": None, "rank": 2}]))
    _write(src / "meta/google/q0001.json", json.dumps([{"id": 1, "title": "crane bird", "tags": "bird tall"}]))
    _write(src / "flickr/q0000.json", json.dumps([{"id": "000001", "title": "F", "description": "D", "tag": "a b"}]))
    return src


def test_webvision_rows_field_by_field(tmp_path: Path) -> None:
    src, out = _webvision(tmp_path / "wv"), tmp_path / "D"
    before = _snapshot(src)
    result = convert("webvision", src, out)
    assert _snapshot(src) == before  # the source is never modified
    assert read_json(out / "classes.json") == [
        {"name": "tench", "wnid": "n01440764"},
        {"name": "crane (n02012849)", "wnid": "n02012849"},
        {"name": "crane (n03126707)", "wnid": "n03126707"},
    ]
    assert read_jsonl(out / "train.jsonl") == [
        {"id": "google/q0000/000001", "image": "images/google/q0000/000001.jpg", "label": "tench",
         "title": "A tench", "description": "fish in a net", "tags": ["fish", "green"]},
        {"id": "google/q0000/000002", "image": "images/google/q0000/000002.jpg", "label": "tench", "title": "T2"},
        {"id": "google/q0001/000001", "image": "images/google/q0001/000001.jpg", "label": "crane (n02012849)",
         "title": "crane bird", "tags": ["bird", "tall"]},
        {"id": "flickr/q0000/000001", "image": "images/flickr/q0000/000001.jpg", "label": "tench",
         "title": "F", "description": "D", "tags": ["a", "b"]},
    ]
    assert read_jsonl(out / "val.jsonl") == [
        {"id": "val_images_256/val000001", "image": "images/val_images_256/val000001.jpg", "label": "crane (n02012849)"},
        {"id": "val000002", "image": "images/val000002.jpg", "label": "crane (n03126707)"},
    ]
    assert _rejected(out) == [
        ("train_filelist_google.txt", 4, "google/q0002/000003", "class index 5 out of range (synsets.txt has 3 classes)", "train"),
        ("train_filelist_google.txt", 5, "google/q0002/000004", "missing image file", "train"),
        ("train_filelist_google.txt", 6, None, "malformed line (expected '<image path> <class index>')", "train"),
    ]
    assert result.rows == {"train": 4, "val": 2} and result.classes == 3 and len(result.skipped) == 3
    link = out / "images/google/q0000/000001.jpg"
    assert link.is_symlink() and link.resolve() == (src / "google/q0000/000001.jpg").resolve()
    assert validate_dataset(out).ok


def test_webvision_copy_images_and_bad_meta(tmp_path: Path) -> None:
    src, out = _webvision(tmp_path / "wv"), tmp_path / "D"
    convert("webvision", src, out, images="copy")
    copied = out / "images/val000002.jpg"
    assert not copied.is_symlink() and copied.read_bytes() == (src / "val_images_256/val000002.jpg").read_bytes()
    _write(src / "google/q0000.json", "[{")
    with pytest.raises(DataError, match=r"google/q0000.json: invalid JSON \(.*\); fix or remove the file"):
        convert("webvision", src, tmp_path / "D2")
    _write(src / "info/synsets.txt", "tench\n")
    with pytest.raises(DataError, match=r"synsets.txt:1: expected 'n01440764 tench, Tinca tinca'"):
        convert("webvision", src, tmp_path / "D3")


# --------------------------------------------------------------------------- NUS-WIDE

NUS_ALL = [  # (list path, train?, AllTags81 bits, All_Tags line, ground truth)
    ("actor\\0001_111.jpg", True, "1 0 1 ", "111 dog sea", "0 0 0"),
    ("actor\\0002_222.jpg", False, "0 0 0", "222 cat", "1 0 0"),
    ("beach\\0001_333.jpg", True, "0 0 0", "333", "0 1 0"),
    ("beach\\0002_444.jpg", False, "0 1 0", "444 x", "0 0 0"),
    ("sky\\0001_555.jpg", True, "0 1 0", "555 cloud", "0 0 1"),
    ("sky\\0002_666.jpg", False, "0 0 0", "666 sand sun", "0 1 1"),
]
CONCEPTS = ["animal", "beach", "sky"]


def _nuswide(src: Path, *, image_list: bool, labels: str, images: Path) -> Path:
    _write(src / "Concepts81.txt", "\n".join(CONCEPTS) + "\n")
    train = [p for p, is_train, *_ in NUS_ALL if is_train]
    test = [p for p, is_train, *_ in NUS_ALL if not is_train]
    _write(src / "ImageList/TrainImagelist.txt", "\r\n".join(train) + "\r\n")
    _write(src / "ImageList/TestImagelist.txt", "\n".join(test) + "\n")
    if image_list:
        _write(src / "ImageList/Imagelist.txt", "\n".join(p for p, *_ in NUS_ALL) + "\n")
    _write(src / "NUS_WID_Tags/AllTags81.txt", "\n".join(bits for _, _, bits, _, _ in NUS_ALL) + "\n")
    _write(src / "NUS_WID_Tags/All_Tags.txt", "\n".join(t for *_, t, _ in NUS_ALL) + "\n")
    for c, concept in enumerate(CONCEPTS):
        if labels == "split":
            col = [gt.split()[c] for _, is_train, *_, gt in NUS_ALL if not is_train]
            _write(src / f"TrainTestLabels/Labels_{concept}_Test.txt", "\n".join(col) + "\n")
        else:
            _write(src / f"AllLabels/Labels_{concept}.txt", "\n".join(gt.split()[c] for *_, gt in NUS_ALL) + "\n")
    for i, (p, *_rest) in enumerate(NUS_ALL):
        if "555" not in p:
            _image(images / p.replace("\\", "/"), seed=i)
    return src


@pytest.mark.parametrize(("image_list", "labels", "custom_images"),
                         [(True, "split", False), (False, "all", True)])
def test_nuswide_rows_field_by_field(tmp_path: Path, image_list: bool, labels: str, custom_images: bool) -> None:
    src = tmp_path / "nus"
    images = tmp_path / "flickr_elsewhere" if custom_images else src / "Flickr"
    _nuswide(src, image_list=image_list, labels=labels, images=images)
    out = tmp_path / "D"
    result = convert("nuswide", src, out, **({"image_dir": images} if custom_images else {}))
    assert read_json(out / "classes.json") == [{"name": c} for c in CONCEPTS]
    assert read_jsonl(out / "train.jsonl") == [
        {"id": "actor/0001_111", "image": "images/actor/0001_111.jpg", "label": ["animal", "sky"], "tags": ["dog", "sea"]},
    ]
    assert read_jsonl(out / "test.jsonl") == [
        {"id": "actor/0002_222", "image": "images/actor/0002_222.jpg", "label": ["animal"], "tags": ["cat"]},
        {"id": "sky/0002_666", "image": "images/sky/0002_666.jpg", "label": ["beach", "sky"], "tags": ["sand", "sun"]},
    ]
    assert _rejected(out) == [
        ("TrainImagelist.txt", 2, "beach/0001_333", "no web label", "train"),
        ("TrainImagelist.txt", 3, "sky/0001_555", "missing image file", "train"),
        ("TestImagelist.txt", 2, "beach/0002_444", "no ground-truth label", "test"),
    ]
    assert result.rows == {"train": 1, "test": 2}
    report = validate_dataset(out)
    assert report.ok and report.counts == {"train": 1, "test": 2}


def test_nuswide_misaligned_label_file(tmp_path: Path) -> None:
    src = _nuswide(tmp_path / "nus", image_list=True, labels="split", images=tmp_path / "nus/Flickr")
    _write(src / "TrainTestLabels/Labels_sky_Test.txt", "0\n1\n")
    with pytest.raises(DataError, match=r"Labels_sky_Test.txt: 2 lines but TestImagelist.txt lists 3 images"):
        convert("nuswide", src, tmp_path / "D")


# --------------------------------------------------------------------------- WebDataset

def _add(tar: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.type, info.linkname = kind, link
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _shards(src: Path) -> dict[str, bytes]:
    src.mkdir(parents=True)
    img = {k: _image(src / f"tmp{k}.{ext}", seed=i) for i, (k, ext) in
           enumerate([("000000000", "jpg"), ("000000001", "png"), ("000010000", "jpg")])}
    for p in src.glob("tmp*"):
        p.unlink()
    with tarfile.open(src / "00000.tar", "w") as tar:
        _add(tar, "000000000.jpg", img["000000000"])
        _add(tar, "000000000.txt", b"a red car\n")
        _add(tar, "000000000.json", json.dumps({"key": "000000000", "status": "success", "label": "car",
                                                "tags": ["red"], "description": "d", "url": "http://x"}).encode())
        _add(tar, "000000001.png", img["000000001"])
        _add(tar, "000000001.json", json.dumps({"label": ["car", "dog"], "caption": "two"}).encode())
        _add(tar, "000000002.json", json.dumps({"status": "failed_to_download"}).encode())
    with tarfile.open(src / "00001.tar", "w") as tar:
        _add(tar, "000010000.jpg", img["000010000"])
        _add(tar, "000010000.json", json.dumps({"label": "dog"}).encode())
    return img


def test_webdataset_rows_field_by_field(tmp_path: Path) -> None:
    src, out = tmp_path / "shards", tmp_path / "D"
    img = _shards(src)
    result = convert("webdataset", src, out)
    assert read_json(out / "classes.json") == [{"name": "car"}, {"name": "dog"}]
    assert read_jsonl(out / "train.jsonl") == [
        {"id": "000000000", "image": "images/00000/000000000.jpg", "label": "car",
         "title": "a red car", "description": "d", "tags": ["red"]},
        {"id": "000000001", "image": "images/00000/000000001.png", "label": ["car", "dog"], "title": "two"},
        {"id": "000010000", "image": "images/00001/000010000.jpg", "label": "dog"},
    ]
    for key, data in img.items():
        ext = "png" if key == "000000001" else "jpg"
        assert (out / f"images/{key[:5] if key != '000010000' else '00001'}/{key}.{ext}").read_bytes() == data
    assert _rejected(out) == [("00000.tar", 0, "000000002", "no image in the sample (status 'failed_to_download')", "train")]
    assert result.rows == {"train": 3}
    assert validate_dataset(out).ok


def test_webdataset_label_key_classes_file_and_split(tmp_path: Path) -> None:
    src = tmp_path / "shards"
    _shards(src)
    with pytest.raises(DataError, match=r"00000.tar: sample '000000000' has no 'cls' key .* pass --label-key"):
        convert("webdataset", src, tmp_path / "D", label_key="cls")
    _write(tmp_path / "classes.txt", "dog\n")
    convert("webdataset", src / "00000.tar", tmp_path / "D2", classes_file=tmp_path / "classes.txt", split="val")
    assert read_json(tmp_path / "D2/classes.json") == [{"name": "dog"}]
    assert read_jsonl(tmp_path / "D2/val.jsonl") == []
    assert [r[3] for r in _rejected(tmp_path / "D2")] == [
        f"unknown label 'car'; it is not in {tmp_path / 'classes.txt'}",
        f"unknown label 'car'; it is not in {tmp_path / 'classes.txt'}",
        "no image in the sample (status 'failed_to_download')",
    ]


@pytest.mark.parametrize(("name", "kind", "link"), [
    ("../evil.jpg", tarfile.REGTYPE, ""),
    ("/tmp/capro-evil.jpg", tarfile.REGTYPE, ""),
    ("a/../../evil.jpg", tarfile.REGTYPE, ""),
    ("000000003.jpg", tarfile.SYMTYPE, "/etc/passwd"),
    ("000000004.jpg", tarfile.LNKTYPE, "../../etc/passwd"),
])
def test_webdataset_refuses_members_that_escape(tmp_path: Path, name: str, kind: bytes, link: str) -> None:
    src = tmp_path / "shards"
    src.mkdir()
    with tarfile.open(src / "00000.tar", "w") as tar:
        _add(tar, name, b"x" * 10, kind, link)
        _add(tar, "000000009.json", b'{"label": "a"}')
    with pytest.raises(DataError, match="refusing this archive"):
        convert("webdataset", src, tmp_path / "out/D")
    assert not (tmp_path / "out/evil.jpg").exists() and not (tmp_path / "evil.jpg").exists()
    assert not Path("/tmp/capro-evil.jpg").exists()
    assert not (tmp_path / "out/D/images").exists()


def test_webdataset_corrupt_shard(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s/00000.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="00000.tar: not a readable tar archive"):
        convert("webdataset", tmp_path / "s", tmp_path / "D")


# --------------------------------------------------------------------------- ImageFolder

def test_imagefolder_train_then_val(tmp_path: Path) -> None:
    src = tmp_path / "train"
    _image(src / "cat/1.jpg")
    _write(src / "cat/1.txt", " a cat \n")
    _image(src / "cat/sub/2.png", 1)
    _write(src / "cat/sub/2.json", json.dumps({"title": "t", "description": "d", "tags": ["x", 3]}))
    _image(src / "dog/3.jpg", 2)
    _image(src / "dog/bad.jpg", 3)
    _write(src / "dog/bad.json", "{nope")
    _write(src / "dog/notes.md", "not an image")
    _image(src / "stray.jpg", 4)
    _image(src / ".cache/x.jpg", 5)
    _image(src / "dog/.hidden.jpg", 6)
    out = tmp_path / "D"
    convert("imagefolder", src, out)
    assert read_json(out / "classes.json") == [{"name": "cat"}, {"name": "dog"}]
    assert read_jsonl(out / "train.jsonl") == [
        {"id": "cat/1", "image": "images/train/cat/1.jpg", "label": "cat", "title": "a cat"},
        {"id": "cat/sub/2", "image": "images/train/cat/sub/2.png", "label": "cat", "title": "t",
         "description": "d", "tags": ["x"]},
        {"id": "dog/3", "image": "images/train/dog/3.jpg", "label": "dog"},
    ]
    rejected = _rejected(out)
    assert [r[:3] + (r[4],) for r in rejected] == [("stray.jpg", 0, "stray", "train"), ("bad.jpg", 0, "dog/bad", "train")]
    assert rejected[1][3] == ("invalid sidecar JSON (bad.json: invalid JSON "
                               "(Expecting property name enclosed in double quotes at column 2))")

    val = tmp_path / "val"
    _image(val / "dog/9.jpg", 7)
    _image(val / "bird/8.jpg", 8)
    result = convert("imagefolder", val, out, split="val", images="copy")
    assert read_json(out / "classes.json") == [{"name": "cat"}, {"name": "dog"}]  # the training class ids
    assert read_jsonl(out / "val.jsonl") == [{"id": "dog/9", "image": "images/val/dog/9.jpg", "label": "dog"}]
    assert result.rows == {"val": 1}
    # the train conversion's rejected rows are kept beside the val ones
    assert [(r[2], r[4]) for r in _rejected(out)] == [("stray", "train"), ("dog/bad", "train"), ("bird/8", "val")]
    assert len(read_jsonl(out / "train.jsonl")) == 3
    assert validate_dataset(out).ok


def test_registry_and_usage_errors(tmp_path: Path) -> None:
    assert sorted(ADAPTERS) == ["imagefolder", "nuswide", "webdataset", "webvision"]
    assert get_adapter("nuswide").options == {"images", "image_dir"}
    with pytest.raises(UsageError, match="unknown format 'coco'; choose one of webvision"):
        convert("coco", tmp_path, tmp_path / "D")
    with pytest.raises(UsageError, match="does not take option"):
        convert("webvision", tmp_path, tmp_path / "D", label_key="x")
    with pytest.raises(UsageError, match="not found"):
        convert("imagefolder", tmp_path / "missing", tmp_path / "D")
    _image(tmp_path / "src/cat/1.jpg")
    with pytest.raises(UsageError, match="converters never write into their source"):
        convert("imagefolder", tmp_path / "src", tmp_path / "src/D")


def test_symlinks_unsupported_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    _image(tmp_path / "src/cat/1.jpg")

    def no_symlinks(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    # a filesystem without symlink support (e.g. some network or FAT mounts) answers EPERM
    monkeypatch.setattr(os, "symlink", no_symlinks)
    with pytest.raises(CaproError, match="cannot create symbolic links here .* pass --copy-images"):
        convert("imagefolder", tmp_path / "src", tmp_path / "D")
