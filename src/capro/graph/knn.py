"""Inner-product kNN graphs behind a small backend interface: exact, or approximate at scale.

Every backend returns, for N L2-normalised rows, ``ids`` [N, k] int64 and ``sims`` [N, k] float32
(inner products, descending), with the node itself first: the list is the node plus its k - 1
most similar other nodes, even when duplicates tie with it. Exact backends are chosen by name with
:func:`create_knn_backend`: ``torch`` (chunked ``X @ X.T`` + ``topk``, CPU or GPU, always there),
``faiss`` (``IndexFlatIP``, when faiss is installed) and ``auto`` (faiss when installed, else torch).
Approximate ones (:func:`create_index`, faiss): ``ivf`` (an inverted file of ``nlist`` k-means
cells, ``nprobe`` of them searched per query) and ``hnsw`` (a navigable small-world graph of
``hnsw_m`` links per node, ``ef_search`` candidates per query); :func:`recall_at_k` measures what
they miss against exact search on a sample of queries.

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
            own = torch.arange(start, stop, device=self.device)
            best_s, best_i = _block_topk(xt, own, k=k, block_size=self.block_size)
            q = xt[start:stop]
            best_s[:, 0] = (q * q).sum(dim=1)
            ids[start:stop] = best_i.cpu().numpy()
            sims[start:stop] = best_s.cpu().numpy()
        return ids, sims


def _block_topk(xt: torch.Tensor, own: torch.Tensor, *, k: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k (sims, ids) [q, k] of the rows ``own`` of ``xt`` [N, F] against all of ``xt``,
    a block of ``block_size`` rows at a time with a running merge; each node itself ranks first
    (its similarity is returned as +inf)."""
    q = xt[own]
    rows = torch.arange(len(own), device=xt.device)
    best_s = torch.full((len(own), k), -torch.inf, device=xt.device)
    best_i = torch.zeros((len(own), k), dtype=torch.int64, device=xt.device)
    for b0 in range(0, xt.shape[0], block_size):
        b1 = min(b0 + block_size, xt.shape[0])
        s = q @ xt[b0:b1].T
        inside = (own >= b0) & (own < b1)  # the node itself: +inf on its own column
        s[rows[inside], own[inside] - b0] = torch.inf
        bs, bi = torch.topk(s, min(k, b1 - b0), dim=1)
        best_s, pos = torch.topk(torch.cat([best_s, bs], dim=1), k, dim=1)
        best_i = torch.gather(torch.cat([best_i, bi + b0], dim=1), 1, pos)
    return best_s, best_i


class _FaissSearch:
    """Chunked faiss search of every row against an index of all rows (built by ``build``)."""

    name = "faiss"
    setting = "graph.backend=faiss"
    fallback = "graph.backend=torch"

    def __init__(self, *, chunk_size: int = 65536, progress: bool = False) -> None:
        if importlib.util.find_spec("faiss") is None:
            raise ConfigError(f"{self.setting} needs faiss, which is not installed; "
                              f"`pip install faiss-cpu` or set {self.fallback}")
        self.chunk_size, self.progress = chunk_size, progress

    def build(self, x: np.ndarray):
        """The faiss index of the [N, d] float32 rows ``x``."""
        import faiss

        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        return index

    def search(self, x: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = x.shape[0]
        _check_k(n, k)
        index = self.build(x)
        ids = np.empty((n, k), dtype=np.int64)
        sims = np.empty((n, k), dtype=np.float32)
        for start in _progress(range(0, n, self.chunk_size), self.progress, f"kNN ({self.name})"):
            stop = min(start + self.chunk_size, n)
            s, i = index.search(x[start:stop], k)
            s = np.where(i < 0, -np.inf, s)  # an approximate index pads a short list with -1
            i, s = put_self_first(i.astype(np.int64), s, np.arange(start, stop), x[start:stop])
            ids[start:stop] = i
            sims[start:stop] = s
        return ids, sims


class FaissKnn(_FaissSearch):
    """Exact search with faiss ``IndexFlatIP`` (CPU), queried in chunks."""


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


class FaissIvf(_FaissSearch):
    """Approximate search with faiss ``IndexIVFFlat`` (inner product).

    Args:
        nlist: k-means cells (0 = ``4 * sqrt(N)``, at most N / 39 so each cell trains on 39 points).
        nprobe: cells searched per query (more: higher recall, slower).
        train_size: points the k-means is trained on (at most N; at least 39 per cell, faiss's
            minimum, so more above ~2.8M points).
        device: with a CUDA device and a faiss built with GPU support (faiss-gpu), the trained
            index is searched on that GPU; otherwise on the CPU.
    """

    name, setting, fallback = "ivf", "graph.index=ivf", "graph.index=exact"

    def __init__(self, *, nlist: int = 0, nprobe: int = 32, train_size: int = 262_144, seed: int = 0,
                 device: str = "cpu", **kw) -> None:
        super().__init__(**kw)
        self.nlist, self.nprobe, self.train_size, self.seed = nlist, nprobe, train_size, seed
        self.device, self._gpu_resources = device, None

    def cells(self, n: int) -> int:
        want = self.nlist or int(4 * np.sqrt(n))
        return int(max(1, min(want, n // 39)))

    def build(self, x: np.ndarray):
        """The faiss index of the [N, d] float32 rows ``x``."""
        import faiss

        n, d = x.shape
        nlist = self.cells(n)
        quant = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(self.seed)
        size = max(self.train_size, 39 * nlist)
        sample = x if n <= size else x[np.sort(rng.choice(n, size, replace=False))]
        index.cp.seed = self.seed
        index.train(sample)
        index.add(x)
        index.nprobe = min(self.nprobe, nlist)
        gpu = gpu_id(self.device, faiss)
        if gpu is None:
            return index
        self._gpu_resources = faiss.StandardGpuResources()  # must outlive the GPU index
        return faiss.index_cpu_to_gpu(self._gpu_resources, gpu, index)


def gpu_id(device: str, faiss_module) -> int | None:
    """The CUDA device index faiss should search on for ``device``, or None to stay on the CPU
    (a CPU device, or a faiss without GPU support or without a visible GPU)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not hasattr(faiss_module, "StandardGpuResources"):
        return None
    if faiss_module.get_num_gpus() < 1:
        return None
    return dev.index or 0


class FaissHnsw(_FaissSearch):
    """Approximate search with faiss ``IndexHNSWFlat`` (inner product).

    Args:
        m: links per node. ef_construction / ef_search: candidate list sizes when building / searching.
    """

    name, setting, fallback = "hnsw", "graph.index=hnsw", "graph.index=exact"

    def __init__(self, *, m: int = 32, ef_construction: int = 80, ef_search: int = 128, **kw) -> None:
        super().__init__(**kw)
        self.m, self.ef_construction, self.ef_search = m, ef_construction, ef_search

    def build(self, x: np.ndarray):
        """The faiss index of the [N, d] float32 rows ``x``."""
        import faiss

        index = faiss.IndexHNSWFlat(x.shape[1], self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.add(x)
        index.hnsw.efSearch = self.ef_search
        return index


INDEXES = ("auto", "exact", "ivf", "hnsw")


def resolve_index(index: str, n: int, *, exact_max: int) -> str:
    """``auto``: ``exact`` up to ``exact_max`` rows, else ``ivf`` (``exact`` without faiss)."""
    if index not in INDEXES:
        raise ConfigError(f"graph.index {index!r}; choose from {', '.join(INDEXES)}")
    if index != "auto":
        return index
    return "exact" if n <= exact_max or not faiss_available() else "ivf"


def create_index(index: str, *, nlist: int = 0, nprobe: int = 32, hnsw_m: int = 32, ef_construction: int = 80,
                 ef_search: int = 128, seed: int = 0, progress: bool = False, device: str = "cpu") -> KnnBackend:
    """An approximate backend by name: ``ivf`` (searched on ``device`` when it is a GPU and faiss
    has GPU support) or ``hnsw`` (CPU) (see :class:`FaissIvf`, :class:`FaissHnsw`)."""
    if index == "ivf":
        return FaissIvf(nlist=nlist, nprobe=nprobe, seed=seed, progress=progress, device=device)
    if index == "hnsw":
        return FaissHnsw(m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, progress=progress)
    raise ConfigError(f"approximate index {index!r}; choose ivf or hnsw")


@torch.no_grad()
def exact_neighbours(x: np.ndarray, queries: np.ndarray, *, k: int, device: str = "cpu",
                     block_size: int = 65536, query_chunk: int = 1024) -> np.ndarray:
    """[q, k] exact neighbour ids of the rows ``queries`` of ``x`` (self first), by chunks of
    ``query_chunk`` queries against blocks of ``block_size`` rows (memory: one chunk x block)."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    queries = np.asarray(queries, dtype=np.int64)
    out = np.empty((len(queries), k), dtype=np.int64)
    for q0 in range(0, len(queries), query_chunk):
        own = torch.as_tensor(queries[q0:q0 + query_chunk], device=xt.device)
        out[q0:q0 + len(own)] = _block_topk(xt, own, k=k, block_size=block_size)[1].cpu().numpy()
    return out


def recall_at_k(x: np.ndarray, ids: np.ndarray, *, queries: int = 1000, seed: int = 0,
                device: str = "cpu") -> tuple[float, int]:
    """(recall, queries used): the share of each sampled node's k - 1 exact nearest other nodes that
    its approximate list ``ids`` [N, k] (self first) also holds, averaged over ``queries`` nodes
    drawn with ``seed`` (all nodes when N is smaller)."""
    n, k = ids.shape
    if k < 2:
        return 1.0, 0
    rng = np.random.default_rng(seed)
    q = np.arange(n) if n <= queries else np.sort(rng.choice(n, queries, replace=False))
    exact = exact_neighbours(x, q, k=k, device=device)[:, 1:]
    approx = ids[q, 1:]
    hits = (approx[:, :, None] == exact[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.sum() / exact.size), len(q)


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
