"""The text steps of a run: clean + encode the samples' web texts, build the textual prototypes.

Artefacts under ``RUN/text/`` (``<split>`` suffix only for splits other than ``train``):

- ``cleaned[_<split>].jsonl``: ``{"id", "text"}`` per record, the cleaned text that was encoded;
- ``texts[_<split>].npy``: float32 ``[N, D]`` L2-normalised embeddings aligned with the records;
- ``concepts.jsonl``: ``{"class", "name", "source", "synsets", "text"}`` per class;
- ``prototypes.npy``: float32 ``[C, D]`` textual prototypes.

Each step records a fingerprint of its inputs and config in ``RUN/text/_steps/<step>/done.json``
(:mod:`capro.utils.cache`) and is skipped on rerun when nothing changed. Text encoding is
resumable chunk by chunk (:func:`capro.text.encode.encode_to_file`). In a distributed run every
rank calls :func:`encode_split_texts` (the chunks are shared among the ranks, rank 0 writes the
files); :func:`class_prototypes` runs on one process (rank 0) and does not synchronise ranks.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from capro.config import Config
from capro.data.layout import TEXT_FIELDS, ClassInfo, Split
from capro.errors import ConfigError
from capro.text.clean import record_text
from capro.text.concepts import concept_texts
from capro.text.encode import (
    chunk_rows,
    create_encoder,
    encode_to_file,
    encoder_identity,
    texts_digest,
)
from capro.utils.cache import fingerprint, is_done, mark_done
from capro.utils.dist import broadcast_object, is_main
from capro.utils.io import atomic_write, write_jsonl

CLEAN_VERSION = 1
"""Bumped when the cleaning rules change, so cached cleaned texts are recomputed."""


def text_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "text"


def _suffix(split_name: str) -> str:
    return "" if split_name == "train" else f"_{split_name}"


def texts_path(run_dir: str | Path, split_name: str = "train") -> Path:
    """Where :func:`encode_split_texts` writes the embeddings of ``split_name``."""
    return text_dir(run_dir) / f"texts{_suffix(split_name)}.npy"


def cleaned_path(run_dir: str | Path, split_name: str = "train") -> Path:
    return text_dir(run_dir) / f"cleaned{_suffix(split_name)}.jsonl"


def prototypes_path(run_dir: str | Path) -> Path:
    return text_dir(run_dir) / "prototypes.npy"


def concepts_path(run_dir: str | Path) -> Path:
    return text_dir(run_dir) / "concepts.jsonl"


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _truncate(text: str, max_chars: int) -> str:
    return text[:max_chars] if max_chars > 0 else text


def _step_dir(run_dir: str | Path, step: str) -> Path:
    return text_dir(run_dir) / "_steps" / step


def encode_split_texts(cfg: Config, split: Split, run_dir: str | Path, *,
                       subset_of: Split | None = None) -> np.ndarray:
    """Clean and encode the web text of every record of ``split``.

    ``subset_of``: a split already encoded in ``run_dir`` with the same settings that holds every
    record of ``split`` (the training rows before a held-out split was drawn): its rows are
    taken instead of encoding again.

    Returns:
        float32 ``[N, D]`` L2-normalised embeddings, row ``i`` for ``split.records[i]``
        (memory-mapped from ``RUN/text/texts.npy``).
    """
    fields = list(cfg.data.text_fields)
    unknown = [f for f in fields if f not in TEXT_FIELDS]
    if unknown:
        raise ConfigError(f"config key 'data.text_fields': unknown field(s) {', '.join(unknown)}; "
                          f"choose from {', '.join(TEXT_FIELDS)}")
    ids = [r.id for r in split.records]
    fp = fingerprint(_split_params(cfg, split))
    out = texts_path(run_dir, split.name)
    step = _step_dir(run_dir, f"texts{_suffix(split.name)}")
    if broadcast_object(is_done(step, fp) and out.is_file()):
        return np.load(out, mmap_mode="r")
    if subset_of is not None and broadcast_object(_is_encoded(cfg, subset_of, run_dir)):
        return _take_rows(cfg, split, subset_of, run_dir, step, fp)
    cleaned = [record_text(r, fields) for r in split.records]
    if is_main():
        write_jsonl(cleaned_path(run_dir, split.name),
                    ({"id": i, "text": t} for i, t in zip(ids, cleaned)))
    encoder = create_encoder(cfg.text.encoder, device=_device(cfg.device))
    emb = encode_to_file(encoder, [_truncate(t, cfg.text.max_chars) for t in cleaned], out,
                         batch_size=cfg.text.batch_size,
                         chunk_size=chunk_rows(len(cleaned), cfg.text.chunk_size, cfg.text.batch_size))
    if is_main():
        mark_done(step, fp, rows=len(ids), dim=int(emb.shape[1]), encoder=encoder.name)
    return emb


def _split_params(cfg: Config, split: Split) -> dict:
    fields = list(cfg.data.text_fields)
    return {"step": "texts", "split": split.name, "clean_version": CLEAN_VERSION, "fields": fields,
            "encoder": encoder_identity(cfg.text.encoder), "max_chars": cfg.text.max_chars,
            "ids": texts_digest([r.id for r in split.records]),
            "raw": texts_digest([r.text(fields) for r in split.records])}


def _is_encoded(cfg: Config, split: Split, run_dir: str | Path) -> bool:
    """Whether ``split``'s texts are in ``run_dir`` under the current settings."""
    step = _step_dir(run_dir, f"texts{_suffix(split.name)}")
    return is_done(step, fingerprint(_split_params(cfg, split))) and texts_path(run_dir, split.name).is_file()


def _take_rows(cfg: Config, split: Split, whole: Split, run_dir: str | Path, step: Path, fp: str) -> np.ndarray:
    """``split``'s rows of the encoded ``whole`` (which holds all of them), written as ``split``'s
    texts and cleaned texts (rank 0), and returned memory-mapped."""
    from capro.utils.dist import barrier

    where = {r.id: i for i, r in enumerate(whole.records)}
    rows = np.array([where[r.id] for r in split.records], dtype=np.int64)
    out = texts_path(run_dir, split.name)
    if is_main():
        emb = np.load(texts_path(run_dir, whole.name), mmap_mode="r")
        with atomic_write(out, "wb", encoding=None) as fh:
            np.save(fh, np.asarray(emb[rows], dtype=np.float32))
        cleaned = {}
        with open(cleaned_path(run_dir, whole.name), encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                cleaned[row["id"]] = row["text"]
        write_jsonl(cleaned_path(run_dir, split.name), ({"id": r.id, "text": cleaned[r.id]} for r in split.records))
        mark_done(step, fp, rows=len(rows), dim=int(emb.shape[1]), taken_from=whole.name)
    barrier()
    return np.load(out, mmap_mode="r")


def class_prototypes(cfg: Config, classes: list[ClassInfo], run_dir: str | Path) -> np.ndarray:
    """Textual prototypes: the encoded concept text of every class.

    Returns:
        float32 ``[C, D]`` L2-normalised, row ``c`` for ``classes[c]``; also writes
        ``RUN/text/concepts.jsonl`` and ``RUN/text/prototypes.npy``.
    """
    params = {
        "step": "prototypes", "classes": [asdict(c) for c in classes],
        "source": cfg.text.concept_source, "encoder": encoder_identity(cfg.text.encoder),
        "max_chars": cfg.text.max_chars,
    }
    fp = fingerprint(params)
    out = prototypes_path(run_dir)
    step = _step_dir(run_dir, "prototypes")
    if is_done(step, fp) and out.is_file():
        return np.load(out)
    concepts = concept_texts(classes, source=cfg.text.concept_source)
    write_jsonl(concepts_path(run_dir), (
        {"class": i, "name": c.name, "source": c.source, "synsets": c.synsets, "text": c.text}
        for i, c in enumerate(concepts)
    ))
    encoder = create_encoder(cfg.text.encoder, device=_device(cfg.device))
    protos = encoder.encode([_truncate(c.text, cfg.text.max_chars) for c in concepts],
                            batch_size=cfg.text.batch_size)
    with atomic_write(out, "wb", encoding=None) as fh:
        np.save(fh, protos)
    mark_done(step, fp, classes=len(classes), dim=int(protos.shape[1]), encoder=encoder.name)
    return protos
