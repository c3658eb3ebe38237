"""A plain per-sample loop implementation of k-reciprocal re-ranking, the reference for tests and
benchmarks. It follows Zhong et al. (CVPR 2017) step by step, in float64, with distances rounded
to 1e-9 and stable sorting (capro's tie rule).

``half_precision=True`` instead keeps every intermediate in float16 and sorts with NumPy's
default (unstable) sort, as the released CAPro function does: the tests use it to tell the
released outputs' float16 error apart from a real difference."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist


def re_ranking_loop(probe: np.ndarray, gallery: np.ndarray, k1: int = 20, k2: int = 6,
                    lam: float = 0.3, *, half_precision: bool = False) -> np.ndarray:
    """[Q, F] probes, [G, F] gallery -> [Q, G] re-ranked distances."""
    ft = np.float16 if half_precision else np.float64
    feats = np.concatenate([probe, gallery]).astype(ft)
    nq, n = len(probe), len(feats)
    if half_precision:
        dist = np.square(cdist(feats, feats).astype(ft)).astype(ft)
        original = np.transpose(dist / dist.max(axis=0))
        rank = np.argsort(original, axis=1)
    else:
        dist = np.round(np.clip(cdist(feats, feats, "sqeuclidean"), 0, None) * 1e9) / 1e9
        original = np.transpose(dist / np.maximum(dist.max(axis=0), 1e-9))
        rank = np.argsort(original, axis=1, kind="stable")
    half = int(round(k1 / 2))

    v = np.zeros((n, n), dtype=ft)
    for i in range(n):
        forward = rank[i, :k1 + 1]
        reciprocal = [j for j in forward if i in rank[j, :k1 + 1]]
        expansion = list(reciprocal)
        for c in reciprocal:
            c_forward = rank[c, :half + 1]
            c_reciprocal = [j for j in c_forward if c in rank[j, :half + 1]]
            shared = len(set(c_reciprocal) & set(reciprocal))
            if shared > 2 / 3 * len(c_reciprocal):
                expansion.extend(c_reciprocal)
        members = np.unique(np.array(expansion, dtype=np.int64))
        if len(members):
            weight = np.exp(-original[i, members])
            v[i, members] = weight / weight.sum()
    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = v[rank[i, :k2]].mean(axis=0, dtype=ft)
        v = v_qe

    out = np.zeros((nq, n - nq), dtype=ft)
    for i in range(nq):
        overlap = np.zeros(n, dtype=ft)
        for col in np.nonzero(v[i])[0]:
            holders = np.nonzero(v[:, col])[0]
            overlap[holders] += np.minimum(v[i, col], v[holders, col])
        jaccard = (1 - overlap / (2 - overlap)).astype(ft)
        out[i] = (jaccard * (1 - lam) + original[i] * lam)[nq:]
    return out.astype(np.float64)


def rerank_knn_loop(features: np.ndarray, ids: np.ndarray, k1: int = 20, k2: int = 6,
                    lam: float = 0.3, *, half_precision: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per node: probe = the node, gallery = its listed neighbours; lists re-sorted ascending."""
    feats = np.asarray(features, dtype=np.float32)
    out_ids = np.empty_like(ids, dtype=np.int64)
    out_dist = np.empty(ids.shape, dtype=np.float64)
    for i in range(len(ids)):
        dist = re_ranking_loop(feats[i:i + 1], feats[ids[i]], k1, k2, lam, half_precision=half_precision)[0]
        order = np.argsort(dist, kind="stable")
        out_ids[i] = ids[i][order]
        out_dist[i] = dist[order]
    return out_ids, out_dist
