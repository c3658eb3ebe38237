"""Exact inner-product kNN graphs behind a small backend interface.

Every backend returns, for N L2-normalised rows, ``ids`` [N, k] int64 and ``sims`` [N, k] float32
(inner products, descending), with the node itself first: the list is the node plus its k - 1
most similar other nodes, even when duplicates tie with it. Backends are chosen by name with
:func:`create_knn_backend`: ``torch`` (chunked ``X @ X.T`` + ``topk``, CPU or GPU, always there),
``faiss`` (``IndexFlatIP``, when faiss is installed) and ``auto`` (faiss when installed, else torch).

Examples:
    >>> backend = create_knn_backend("torch")
    >>> ids, sims = backend.search(normalize_rows(features), k=20)
    >>> graph = knn_to_csr(ids, sims)   # cleanlab's ``knn_graph``
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from capro.errors import ConfigError, UsageError


class KnnBackend(Protocol):
    """Exact inner-product search of every row of ``x`` against all rows of ``x``."""

    name: str

    def search(self, x: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``x`` [N, F] -> ids [N, k] int64, sims [N, k] float32; self first."""
        ...


def normalize_rows(x: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """L2-normalise each row of ``x`` [N, F] into float32; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def _check_k(n: int, k: int) -> None:
    if k < 1:
        raise UsageError(f"kNN: k must be >= 1, got {k}")
    if k > n:
        raise UsageError(f"kNN: k={k} (the node included) exceeds the number of samples {n}; lower graph.k")


class TorchKnn:
    """Exact search with chunked matrix products; memory bounded by ``chunk_size`` x ``block_size``.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        chunk_size: query rows per chunk.
        block_size: database rows per block; a running top-k is merged across blocks.
        progress: show a tqdm bar (rank 0 only).
    """

    name = "torch"

    def __init__(self, *, device: str = "cpu", chunk_size: int = 8192, block_size: int = 16384,
                 progress: bool = False) -> None:
        self.device = torch.device(device)
        self.chunk_size = chunk_size
        self.block_size = block_size
        self.progress = progress

    @torch.no_grad()
    def search(self, x: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray]:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        n = xt.shape[0]
        _check_k(n, k)
        ids = np.empty((n, k), dtype=np.int64)
        sims = np.empty((n, k), dtype=np.float32)
        for start in _progress(range(0, n, self.chunk_size), self.progress, "kNN (torch)"):
            stop = min(start + self.chunk_size, n)
            q = xt[start:stop]
            rows = torch.arange(stop - start, device=self.device)
            best_s = torch.full((stop - start, k), -torch.inf, device=self.device)
            best_i = torch.zeros((stop - start, k), dtype=torch.int64, device=self.device)
            for b0 in range(0, n, self.block_size):
                b1 = min(b0 + self.block_size, n)
                s = q @ xt[b0:b1].T
                # The node itself always ranks first: +inf on its own column, if in this block.
                own = rows + start - b0
                inside = (own >= 0) & (own < b1 - b0)
                s[rows[inside], own[inside]] = torch.inf
                kb = min(k, b1 - b0)
                bs, bi = torch.topk(s, kb, dim=1)
                cat_s = torch.cat([best_s, bs], dim=1)
                cat_i = torch.cat([best_i, bi + b0], dim=1)
                best_s, pos = torch.topk(cat_s, k, dim=1)
                best_i = torch.gather(cat_i, 1, pos)
            best_s[:, 0] = (q * q).sum(dim=1)
            ids[start:stop] = best_i.cpu().numpy()
            sims[start:stop] = best_s.cpu().numpy()
        return ids, sims


class FaissKnn:
    """Exact search with faiss ``IndexFlatIP`` (CPU), queried in chunks."""

    name = "faiss"

    def __init__(self, *, chunk_size: int = 65536, progress: bool = False) -> None:
        if importlib.util.find_spec("faiss") is None:
            raise ConfigError("graph.backend=faiss but faiss is not installed; "
                              "`pip install faiss-cpu` or set graph.backend=torch")
        self.chunk_size = chunk_size
        self.progress = progress

    def search(self, x: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        x = np.ascontiguousarray(x, dtype=np.float32)
        n, d = x.shape
        _check_k(n, k)
        index = faiss.IndexFlatIP(d)
        index.add(x)
        ids = np.empty((n, k), dtype=np.int64)
        sims = np.empty((n, k), dtype=np.float32)
        for start in _progress(range(0, n, self.chunk_size), self.progress, "kNN (faiss)"):
            stop = min(start + self.chunk_size, n)
            s, i = index.search(x[start:stop], k)
            i, s = put_self_first(i.astype(np.int64), s, np.arange(start, stop), x[start:stop])
            ids[start:stop] = i
            sims[start:stop] = s
        return ids, sims


def put_self_first(ids: np.ndarray, sims: np.ndarray, self_ids: np.ndarray,
                   x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder each row of a kNN list so the node itself comes first.

    Rows where the node is listed elsewhere (ties with duplicates) move it to the front; rows that
    miss it drop their last entry. The node's similarity is its own inner product.

    Args:
        ids, sims: [n, k] search results, sims descending.
        self_ids: [n] the node id of each row.
        x: [n, F] the query rows (for the self similarity).
    """
    is_self = ids == self_ids[:, None]
    order = np.argsort(~is_self, axis=1, kind="stable")
    has_self = is_self.any(axis=1)
    order[~has_self] = np.arange(ids.shape[1])[None, :] - 1
    ids = np.take_along_axis(ids, order, axis=1)
    sims = np.take_along_axis(sims, order, axis=1).astype(np.float32)
    ids[:, 0] = self_ids
    sims[:, 0] = np.einsum("ij,ij->i", x, x)
    return ids, sims


_BACKENDS: dict[str, Callable[..., KnnBackend]] = {"torch": TorchKnn, "faiss": FaissKnn}


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def create_knn_backend(name: str = "auto", *, device: str = "cpu", chunk_size: int = 8192,
                       progress: bool = False) -> KnnBackend:
    """Build a kNN backend by name: ``torch``, ``faiss`` or ``auto`` (faiss when installed and on CPU)."""
    if name == "auto":
        name = "faiss" if faiss_available() and torch.device(device).type == "cpu" else "torch"
    if name not in _BACKENDS:
        raise ConfigError(f"unknown kNN backend {name!r}; choose from auto, {', '.join(_BACKENDS)}")
    if name == "torch":
        return TorchKnn(device=device, chunk_size=chunk_size, progress=progress)
    return FaissKnn(progress=progress)


def knn_to_csr(ids: np.ndarray, sims: np.ndarray, *, drop_self: bool = True) -> sp.csr_matrix:
    """kNN lists as the sparse distance graph cleanlab's ``knn_graph`` argument takes.

    Args:
        ids: [N, k] neighbour ids, the node itself first (negative ids are missing entries).
        sims: [N, k] cosine similarities, descending.
        drop_self: leave the node itself out (cleanlab expects k non-self neighbours per row).

    Returns:
        CSR [N, N] float32 holding the distances 1 - sim, each row's entries sorted ascending. A
        distance of 0 (an exact duplicate) is kept as an explicit entry, so every row has the same
        number of stored neighbours.
    """
    ids = np.asarray(ids)
    sims = np.asarray(sims, dtype=np.float32)
    n, k = ids.shape
    if drop_self:
        keep = ids != np.arange(n)[:, None]
        # Rows where the node is missing keep their first k - 1 entries, so every row has k - 1.
        keep &= np.cumsum(keep, axis=1) <= k - 1
        ids = ids[keep].reshape(n, k - 1)
        sims = sims[keep].reshape(n, k - 1)
    dist = np.clip(1.0 - sims, 0.0, 2.0)
    order = np.argsort(dist, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)
    dist = np.take_along_axis(dist, order, axis=1)
    valid = ids >= 0
    indptr = np.concatenate([[0], np.cumsum(valid.sum(axis=1))])
    return sp.csr_matrix((dist[valid], ids[valid], indptr), shape=(n, n))


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm import tqdm

    from capro.utils.dist import is_main

    return tqdm(it, desc=desc, disable=not is_main())
