"""Text enhancement: one-hop SGC smoothing of text embeddings over the visual kNN graph.

The enhanced text of sample i is ``sum_j A_ij s_j`` where A is built from each node's kept
neighbours: ``A_ij`` = edge weight clipped to [0, 1], self-loops removed, ``A = max(A, A.T)``,
rows normalised to sum 1 (self weight 0, one hop). The edge weight is decision D2:

- ``similarity`` (default): ``clip(1 - d, 0, 1)``, closer neighbours weigh more;
- ``distance``: the re-ranked distance itself, as the released code does (farther weigh more).

A node without any positive edge (isolated) keeps its own text; the released code gave it a zero
vector. ``self_weight`` w mixes the node's own text back in: ``w * s_i + (1 - w) * sum_j A_ij s_j``
(w = 0 is the paper's one-hop smoothing; D17). Everything is sparse: memory is O(N * keep), never N x N.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

EDGE_WEIGHTS = ("similarity", "distance")


def edge_weights(dist: np.ndarray, *, mode: str = "similarity") -> np.ndarray:
    """Edge weights [N, k] in [0, 1] from re-ranked distances [N, k] (decision D2)."""
    dist = np.asarray(dist, dtype=np.float64)
    if mode == "similarity":
        return np.clip(1.0 - dist, 0.0, 1.0)
    if mode == "distance":
        return np.clip(dist, 0.0, 1.0)
    raise ValueError(f"edge weight mode {mode!r}; choose from {', '.join(EDGE_WEIGHTS)}")


def smoothing_matrix(ids: np.ndarray, weights: np.ndarray, *, n: int | None = None) -> sp.csr_matrix:
    """Row-normalised, max-symmetrised adjacency [N, N] without self-loops.

    Args:
        ids: [N, k] neighbour ids (negative = missing).
        weights: [N, k] edge weights in [0, 1].
        n: number of nodes (default N).
    """
    ids = np.asarray(ids, dtype=np.int64)
    rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    cols = ids.ravel()
    data = np.clip(np.asarray(weights, dtype=np.float64).ravel(), 0.0, 1.0)
    n = ids.shape[0] if n is None else n
    keep = (cols >= 0) & (cols != rows) & (data > 0)
    adj = sp.csr_matrix((data[keep], (rows[keep], cols[keep])), shape=(n, n))
    adj = adj.maximum(adj.T).tocsr()
    total = np.asarray(adj.sum(axis=1)).ravel()
    inv = np.divide(1.0, total, out=np.zeros(n), where=total > 0)
    return (sp.diags(inv) @ adj).tocsr()


def enhance_text(ids: np.ndarray, dist: np.ndarray, text: np.ndarray, *, keep: int | None = None,
                 edge_weight: str = "similarity", self_weight: float = 0.0, out: np.ndarray | None = None,
                 chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Smooth text embeddings over the first ``keep`` entries of each re-ranked kNN list.

    Args:
        ids: [N, k] re-ranked neighbour ids (the node itself may be listed; it is dropped).
        dist: [N, k] their re-ranked distances.
        text: [N, D] text embeddings (may be memory-mapped: it is read, never copied whole).
        keep: neighbours kept per node (default all k).
        edge_weight: ``similarity`` or ``distance`` (see module docstring).
        self_weight: weight in [0, 1] of the node's own text in the result (0 = the paper).
        out: [N, D] float32 array to write into (e.g. a memory-mapped file); a new one when None.
        chunk: rows computed at a time; besides ``out`` and the N x k graph, memory holds
            ``chunk`` x D floats.

    Returns:
        enhanced [N, D] float32 (computed in float32, as released; ``out`` when given), and
        isolated [N] bool (nodes that kept their own text).
    """
    keep = ids.shape[1] if keep is None else keep
    w = edge_weights(dist[:, :keep], mode=edge_weight)
    adj = smoothing_matrix(ids[:, :keep], w, n=text.shape[0]).astype(np.float32)
    isolated = np.diff(adj.indptr) == 0
    text32 = text if text.dtype == np.float32 else np.asarray(text, dtype=np.float32)
    n = text.shape[0]
    out = np.empty((n, text.shape[1]), np.float32) if out is None else out
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = np.asarray(adj[start:stop] @ text32, dtype=np.float32)
        own = np.asarray(text32[start:stop])
        iso = isolated[start:stop]
        block[iso] = own[iso]
        if self_weight > 0:
            block = (np.float32(self_weight) * own + np.float32(1.0 - self_weight) * block).astype(np.float32)
        out[start:stop] = block
    return out, isolated
