"""Fuzzed image files: check_image returns None only for files that really decode, else a one-line
reason, for truncated, corrupt, empty, huge, mislabelled and non-image files, without hanging;
--skip-bad records every file it drops."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from fuzz_strategies import IMAGE_FORMATS, fuzz, image_bytes, watchdog
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from capro.data.validate import MAX_PIXELS, check_image, load_split_for_run

# PIL warns about corrupt EXIF, truncated TIFF reads and big images: expected on fuzzed files.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

EXTENSIONS = [".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".webp", ".txt", ""]
REASONS = ("missing image file", "unreadable image file", "not an image", "truncated or corrupt image",
           "image too large")
_VALID = {fmt: image_bytes(fmt) for fmt in IMAGE_FORMATS}
_VALID["PNG-L"] = image_bytes("PNG", mode="L")
_VALID["PNG-big"] = image_bytes("PNG", size=(300, 200))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` but holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _bmp_header(width: int, height: int) -> bytes:
    """A 24-bit BMP header claiming ``width`` x ``height`` with no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def _gif_header(width: int, height: int) -> bytes:
    """A GIF whose screen and one frame claim ``width`` x ``height``, with one pixel of data."""
    size = struct.pack("<HH", width, height)
    return (b"GIF89a" + size + b"\x80\x00\x00\x00\x00\x00\xff\xff\xff,\x00\x00\x00\x00" + size
            + b"\x00\x02\x02D\x01\x00;")


def _mutate(data: bytes, cut: float, flips: list[tuple[float, int]]) -> bytes:
    out = bytearray(data[: int(len(data) * cut)])
    for pos, value in flips:
        if out:
            out[int(pos * (len(out) - 1))] = value
    return bytes(out)


image_files = st.one_of(
    st.sampled_from(sorted(_VALID)).map(_VALID.get),
    st.builds(_mutate, st.sampled_from(sorted(_VALID)).map(_VALID.get), st.floats(0, 1),
              st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=3)),
    st.binary(max_size=200),
    st.builds(_png_header, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    st.builds(_bmp_header, st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1)),
    st.builds(_gif_header, st.integers(0, 65535), st.integers(0, 65535)),
    st.sampled_from([b"", b"hello", b"%PDF-1.4\n", b"{\"id\": 1}", b"\x00" * 64,
                     b"\xff\xd8\xff\xe0" + b"\x00" * 20, b"GIF89a", b"\x89PNG\r\n\x1a\n"]),
)


def _decodes(path: Path) -> bool:
    """What the training loader does with an image (capro.data.datasets.load_image)."""
    try:
        with Image.open(path) as im:
            im.convert("RGB")
    except Exception:
        return False
    return True


@fuzz(250)
@given(image_files, st.sampled_from(EXTENSIONS))
def test_check_image_decodes_or_gives_a_one_line_reason(tmp_path_factory, data, ext):
    path = tmp_path_factory.mktemp("img") / f"x{ext}"
    path.write_bytes(data)
    with watchdog(60):
        reason = check_image(path)
    if reason is None:
        assert _decodes(path)
        with Image.open(path) as im:
            assert im.size[0] * im.size[1] <= MAX_PIXELS
    else:
        assert reason.startswith(REASONS), reason
        assert "\n" not in reason and len(reason) < 300


@pytest.mark.parametrize("fmt", sorted(_VALID))
@pytest.mark.parametrize("ext", [".png", ".jpg", ".txt"])
def test_intact_images_pass_under_any_extension(tmp_path, fmt, ext):
    path = tmp_path / f"x{ext}"
    path.write_bytes(_VALID[fmt])
    assert check_image(path) is None


@pytest.mark.parametrize("name, data, reason", [
    ("empty", b"", "truncated or corrupt image (empty file)"),
    ("text", b"just some text\n", "not an image (PIL cannot identify the file format)"),
    ("png-huge", _png_header(100_000, 100_000), "image too large (10000000000 pixels)"),
    ("png-wide", _png_header(2**31 - 1, 1), "image too large (2147483647 pixels)"),
    ("gif-huge", _gif_header(65535, 65535), "image too large (4294836225 pixels)"),
    ("gif-over-limit", _gif_header(10_000, 9_000), "image too large (10000 x 9000)"),
    ("gif-one-pixel-of-many", _gif_header(300, 300), "truncated or corrupt image"),
    ("bmp-huge", _bmp_header(60_000, 60_000), "image too large"),
    ("png-no-data", _png_header(64, 64), "truncated or corrupt image"),
    ("jpeg-half", _VALID["JPEG"][: len(_VALID["JPEG"]) // 2], "truncated or corrupt image"),
])
def test_bad_files_get_the_expected_reason(tmp_path, name, data, reason):
    path = tmp_path / f"{name}.jpg"
    path.write_bytes(data)
    with watchdog(60):
        got = check_image(path)
    assert got is not None and got.startswith(reason), got


def test_special_files_never_hang(tmp_path):
    os.mkfifo(tmp_path / "fifo.png")  # opening a FIFO for reading would block forever
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    with watchdog(30):
        got = {p: check_image(tmp_path / p) for p in
               ["fifo.png", "dir.png", "loop.png", "dangling.png", "missing.png", "a.png/b.png"]}
    assert got == {
        "fifo.png": "not an image (not a regular file)",
        "dir.png": "not an image (a directory)",
        "loop.png": "unreadable image file (Too many levels of symbolic links)",
        "dangling.png": "missing image file",
        "missing.png": "missing image file",
        "a.png/b.png": "missing image file",
    }


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.png"
    path.write_bytes(_VALID["PNG"])
    path.chmod(0)
    assert check_image(path).startswith("unreadable image file")


@fuzz(40)
@given(st.lists(image_files, min_size=1, max_size=6))
def test_skip_bad_keeps_exactly_the_decodable_images_and_records_the_rest(tmp_path_factory, files):
    root = tmp_path_factory.mktemp("imgdata")
    (root / "classes.json").write_text(json.dumps(["cat", "dog"]))
    (root / "good.png").write_bytes(_VALID["PNG"])
    rows = [{"id": "good", "image": "good.png", "label": "cat"}]
    for i, data in enumerate(files):
        (root / f"f{i}.jpg").write_bytes(data)
        rows.append({"id": f"f{i}", "image": f"f{i}.jpg", "label": "dog"})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "run").mkdir()
    with watchdog(120):
        split = load_split_for_run(root, "train", run_dir=root / "run", skip_bad=True)
    expected_good = {r["id"] for r in rows if check_image(root / r["image"]) is None}
    assert {r.id for r in split.records} == expected_good
    rejected_path = root / "run" / "rejected.jsonl"
    rejected = [json.loads(x) for x in rejected_path.read_text().splitlines()] \
        if rejected_path.exists() else []
    assert sorted(r["id"] for r in rejected) == sorted({r["id"] for r in rows} - expected_good)
    assert all(r["reason"].startswith(REASONS) for r in rejected)
    for rec in split.records:
        assert _decodes(root / rec.image)
