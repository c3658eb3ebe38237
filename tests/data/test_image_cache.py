import os
import shutil

import numpy as np
import pytest
from PIL import Image

from capro.data import image_cache
from capro.data.datasets import load_image
from capro.data.image_cache import (
    choose_mode,
    decode_stored,
    open_store,
    store_fingerprint,
    stored_side,
)
from capro.data.layout import Record, read_split
from capro.data.validate import check_image


def _records(n: int, folder: str = "img") -> list[Record]:
    return [Record(id=f"s{i}", image=f"{folder}/{i}.png", labels=(0,), line=i + 1) for i in range(n)]


@pytest.fixture
def images(tmp_path):
    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / f"img/{i}.png")
    return tmp_path


def test_decoded_image_is_the_central_square_of_the_resized_image(images):
    rec = _records(1)[0]
    got = decode_stored(images, rec, 3, 10)
    ref = load_image(images, rec, 3).resize((15, 10), Image.BILINEAR).crop((2, 0, 12, 10))
    np.testing.assert_array_equal(got, np.asarray(ref).transpose(2, 0, 1))
    grey = decode_stored(images, rec, 1, 20)  # shorter side already 20: crop only
    np.testing.assert_array_equal(grey[0], np.asarray(load_image(images, rec, 1))[:, 5:25])


def test_side_follows_the_images_and_the_crop_size(tiny_web_data):
    recs = read_split(tiny_web_data, "train").records  # 16-px sources
    assert stored_side(tiny_web_data, recs, size=16, channels=1) == 16  # kept as they are
    assert stored_side(tiny_web_data, recs, size=32, channels=1) == 16  # never enlarged
    assert stored_side(tiny_web_data, recs, size=4, channels=1) == 8  # at most twice the crop
    assert stored_side(tiny_web_data, recs, size=16, channels=1, requested=40) == 40
    assert stored_side(tiny_web_data, [], size=16, channels=1) == 32


def test_modes_by_size():
    assert choose_mode("auto", 10 * 2**20, ram_mb=16, disk_gb=1, has_dir=True) == "ram"
    assert choose_mode("auto", 20 * 2**20, ram_mb=16, disk_gb=1, has_dir=True) == "disk"
    assert choose_mode("auto", 20 * 2**20, ram_mb=16, disk_gb=1, has_dir=False) == "off"
    assert choose_mode("auto", 2 * 2**30, ram_mb=16, disk_gb=1, has_dir=True) == "off"
    assert choose_mode("disk", 1, ram_mb=16, disk_gb=1, has_dir=False) == "ram"
    with pytest.raises(ValueError, match="data.cache"):
        choose_mode("gpu", 1, ram_mb=16, disk_gb=1, has_dir=True)


def test_disk_store_is_reused_and_rebuilt_when_an_image_changes(images, tmp_path):
    recs = _records(5)
    cache = tmp_path / "cache"
    store = open_store(images, recs, channels=3, side=12, mode="disk", cache_dir=cache)
    assert isinstance(store.images, np.memmap) and store.path.parent == cache
    for i, rec in enumerate(recs):
        np.testing.assert_array_equal(store.images[i], decode_stored(images, rec, 3, 12))
    again = open_store(images, recs, channels=3, side=12, mode="disk", cache_dir=cache)
    assert again.path == store.path and len(list(cache.glob("*.npy"))) == 1
    # a changed file (new content, new mtime) gets a new store
    Image.new("RGB", (30, 20), (255, 0, 0)).save(images / "img/3.png")
    os.utime(images / "img/3.png", ns=(1, 1))
    fresh = open_store(images, recs, channels=3, side=12, mode="disk", cache_dir=cache)
    assert fresh.path != store.path
    assert (fresh.images[3][0] == 255).all() and (fresh.images[3][1] == 0).all()
    # RAM mode reads a finished disk store into memory instead of decoding again
    ram = open_store(images, recs, channels=3, side=12, mode="ram", cache_dir=cache)
    assert not isinstance(ram.images, np.memmap)
    np.testing.assert_array_equal(ram.images, fresh.images)


def test_unreadable_images_are_recorded_with_the_validate_reason(images, tmp_path):
    recs = _records(5)
    (images / "img/1.png").write_bytes(b"not an image")
    (images / "img/2.png").unlink()
    image_cache._RAM.clear()
    store = open_store(images, recs, channels=1, side=8, mode="ram")
    assert store.reasons[0] == "" and store.reasons[3] == ""
    assert store.reasons[1] == check_image(images / "img/1.png")
    assert store.reasons[2] == "missing image file"
    assert "id=s2" in store.messages[2] and (store.images[1] == 0).all()


def test_fingerprint_names_records_paths_and_files(images, tmp_path):
    recs = _records(5)
    fp = store_fingerprint(images, recs, channels=3, side=12)
    assert fp == store_fingerprint(images, recs, channels=3, side=12)
    assert fp != store_fingerprint(images, recs, channels=1, side=12)
    assert fp != store_fingerprint(images, recs[::-1], channels=3, side=12)
    shutil.copy(images / "img/0.png", images / "img/x.png")
    moved = [*recs[:4], Record(id="s4", image="img/x.png", labels=(0,), line=5)]
    assert fp != store_fingerprint(images, moved, channels=3, side=12)
    assert open_store(images, recs, channels=3, side=12, mode="off") is None
