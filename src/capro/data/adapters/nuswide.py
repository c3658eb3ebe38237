"""NUS-WIDE -> capro layout (multi-label: train rows get web labels, test rows ground truth).

Native layout (paths relative to SRC)::

    Concepts81.txt                          one concept per line (the 81 classes, in order)
    ImageList/TrainImagelist.txt            "actor\\0001_2124494179.jpg" per line (Windows separators)
    ImageList/TestImagelist.txt
    ImageList/Imagelist.txt                 optional: every image, the order of the NUS_WID_Tags files
    TrainTestLabels/Labels_<c>_Test.txt     one 0/1 per line, aligned with TestImagelist.txt
      (or AllLabels/Labels_<c>.txt          aligned with the order of every image)
    NUS_WID_Tags/AllTags81.txt              one line per image: 81 0/1 values (web labels, Concepts81 order)
    NUS_WID_Tags/All_Tags.txt               one line per image: "<photo id> tag1 tag2 ..."
    Flickr/actor/0001_2124494179.jpg        the images (or a directory given as ``image_dir``)

An image is matched to its line in the ``NUS_WID_Tags`` files by its path in ``Imagelist.txt``
when that file exists, else by its Flickr photo id (the file-name part after the first ``_``).
Train rows with no web label and test rows with no ground-truth label are skipped and recorded.
"""

from __future__ import annotations

import os
from pathlib import Path

from capro.data.adapters._common import ConvertResult, ImageMode, LayoutWriter, check_src_out
from capro.data.layout import ClassInfo, is_safe_relpath
from capro.errors import DataError

LISTS = {"train": "TrainImagelist.txt", "test": "TestImagelist.txt"}


def _lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [line.strip() for line in fh]


def _nonblank(path: Path) -> list[str]:
    return [line for line in _lines(path) if line]


def _norm(rel: str) -> str:
    return rel.strip().replace("\\", "/")


def _photo_id(rel: str) -> str:
    return Path(rel).stem.split("_", 1)[-1]


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


class _AllImages:
    """Per-image web labels and tags (the NUS_WID_Tags files), looked up by image path."""

    def __init__(self, src: Path, n_concepts: int) -> None:
        tags_dir = src / "NUS_WID_Tags"
        self.tags81_path = tags_dir / "AllTags81.txt"
        self.all_tags_path = tags_dir / "All_Tags.txt"
        self.n_concepts = n_concepts
        self.tags81 = _lines(self.tags81_path) if self.tags81_path.is_file() else None
        self.all_tags = _lines(self.all_tags_path) if self.all_tags_path.is_file() else None
        image_list = src / "ImageList" / "Imagelist.txt"
        if image_list.is_file():
            self.index = {_norm(line): i for i, line in enumerate(_nonblank(image_list))}
            self.by_path = True
        elif self.all_tags is not None:
            self.index = {}
            for i, line in enumerate(self.all_tags):
                if line:
                    self.index.setdefault(line.split()[0], i)
            self.by_path = False
        else:
            self.index, self.by_path = {}, False

    def position(self, rel: str) -> int | None:
        return self.index.get(rel if self.by_path else _photo_id(rel))

    def web_labels(self, i: int) -> list[int]:
        """Concept indices whose AllTags81 bit is 1; raises ValueError on a malformed line."""
        values = self.tags81[i].split() if self.tags81 is not None and i < len(self.tags81) else []
        if len(values) != self.n_concepts or any(v not in ("0", "1") for v in values):
            raise ValueError(f"{self.tags81_path} line {i + 1}: expected {self.n_concepts} values of 0 or 1")
        return [c for c, v in enumerate(values) if v == "1"]

    def tags(self, i: int | None) -> list[str]:
        if i is None or self.all_tags is None or i >= len(self.all_tags):
            return []
        return self.all_tags[i].split()[1:]


def _ground_truth(src: Path, concepts: list[str], test_list: list[str], images: _AllImages) -> list[list[int]]:
    """Ground-truth concept indices for every test image, from TrainTestLabels or AllLabels."""
    per_image: list[list[int]] = [[] for _ in test_list]
    for c, concept in enumerate(concepts):
        split_file = src / "TrainTestLabels" / f"Labels_{concept}_Test.txt"
        all_file = src / "AllLabels" / f"Labels_{concept}.txt"
        if split_file.is_file():
            bits = _nonblank(split_file)
            if len(bits) != len(test_list):
                raise DataError(f"{split_file}: {len(bits)} lines but TestImagelist.txt lists "
                                f"{len(test_list)} images; the files must be aligned line by line")
            positive = [i for i, b in enumerate(bits) if b == "1"]
        elif all_file.is_file():
            bits = _nonblank(all_file)
            positive = [i for i, rel in enumerate(test_list)
                        if (p := images.position(rel)) is not None and p < len(bits) and bits[p] == "1"]
        else:
            raise DataError(f"{split_file}: missing (nor {all_file}); need the ground-truth labels of "
                            f"concept {concept!r} for the test split")
        for i in positive:
            per_image[i].append(c)
    return per_image


def convert(src: str | os.PathLike, out: str | os.PathLike, *, images: ImageMode = "link",
            image_dir: str | os.PathLike | None = None) -> ConvertResult:
    """Convert a NUS-WIDE directory ``src`` into a multi-label capro dataset at ``out`` (train, test).

    ``image_dir`` holds the images the lists name (default ``SRC/Flickr``).
    """
    src, out = Path(src), Path(out)
    check_src_out(src, out)
    concepts_file = _first(src / "Concepts81.txt", src / "ConceptsList" / "Concepts81.txt")
    if concepts_file is None:
        raise DataError(f"{src / 'Concepts81.txt'}: missing; is {src} a NUS-WIDE directory?")
    concepts = _nonblank(concepts_file)
    if len(set(concepts)) != len(concepts):
        raise DataError(f"{concepts_file}: a concept is listed twice; each line must be a distinct name")
    image_root = Path(image_dir) if image_dir is not None else src / "Flickr"
    all_images = _AllImages(src, len(concepts))
    writer = LayoutWriter(out, images=images)
    splits = tuple(s for s, name in LISTS.items() if (src / "ImageList" / name).is_file())
    if not splits:
        raise DataError(f"{src / 'ImageList'}: no TrainImagelist.txt or TestImagelist.txt; nothing to convert")
    if "train" in splits and all_images.tags81 is None:
        raise DataError(f"{all_images.tags81_path}: missing; the train split needs its web labels")
    for split in splits:
        listing = src / "ImageList" / LISTS[split]
        rels = [_norm(line) for line in _nonblank(listing)]
        truth = _ground_truth(src, concepts, rels, all_images) if split == "test" else None
        for i, rel in enumerate(rels):
            lineno, rid = i + 1, rel.rsplit(".", 1)[0]
            if not is_safe_relpath(rel):
                writer.skip(split, listing, lineno, rid, f"image path {rel!r} escapes the image directory")
                continue
            pos = all_images.position(rel)
            if truth is not None:
                labels, missing = truth[i], "no ground-truth label"
            elif pos is None:
                writer.skip(split, listing, lineno, rid, "image not found in Imagelist.txt / All_Tags.txt, so it has no web labels")
                continue
            else:
                try:
                    labels, missing = all_images.web_labels(pos), "no web label"
                except ValueError as exc:
                    writer.skip(split, listing, lineno, rid, str(exc))
                    continue
            if not labels:
                writer.skip(split, listing, lineno, rid, missing)
                continue
            source = image_root / rel
            if not source.is_file():
                writer.skip(split, listing, lineno, rid, "missing image file")
                continue
            row: dict = {"id": rid, "image": writer.add_image_file(source, rel),
                         "label": [concepts[c] for c in labels]}
            tags = all_images.tags(pos)
            if tags:
                row["tags"] = tags
            writer.add_row(split, row, file=str(listing), line=lineno)
    return writer.finish([ClassInfo(name=c) for c in concepts], splits)
