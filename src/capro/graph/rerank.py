"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), vectorised (decision D3).

For a set of n points (probes first, then the gallery) the re-ranked distance of probe q to
gallery item j is ``(1 - lam) * jaccard(q, j) + lam * original(q, j)``, where

- ``original`` is the squared Euclidean distance divided by its row maximum (over all n points);
- each point i gets the k-reciprocal set R(i) of its top-(k1 + 1) list (i is in j's list and j in
  i's), expanded by the half-size set R'(c) of every candidate c in R(i) that shares more than 2/3
  of its members with R(i); the expanded set is weighted by ``exp(-original)``, normalised to sum 1;
- with ``k2 > 1`` each weight vector is replaced by the mean over the point's k2 nearest (query
  expansion);
- ``jaccard = 1 - m / (2 - m)`` with ``m = sum_l min(V_q[l], V_j[l])``.

Two entry points:

- :func:`rerank_knn`: re-order each node's own kNN list, probe = the node, gallery = its k listed
  neighbours (the released ``rerank_knn``), batched over nodes as dense [B, 1 + k, 1 + k] tensors;
- :func:`re_ranking`: one or a few probes against a large gallery (text matching), computed
  sparsely: the k-reciprocal sets only need each point's top-(k1 + 1) neighbours, which are found
  by a chunked exact search, so memory grows as n * k1**2 instead of n**2.

Distances are float64 and rounded to 1e-9, so exact duplicates tie exactly; ties are broken by
index (stable sort), the same rule in both entry points and in the loop reference of the tests.
The released code computes in float16; every difference from it is explained by that (tested).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

_QUANT = 1e9
"""Distances are rounded to 1 / _QUANT."""
_BLOCK = 1 << 24
"""Elements per working block in the sparse path (bounds its memory)."""


def _round(d: torch.Tensor) -> torch.Tensor:
    return torch.round(d.clamp_min(0.0) * _QUANT) / _QUANT


def _sizes(k1: int, k2: int, n: int) -> tuple[int, int, int]:
    """List lengths over n points: k-reciprocal (k1 + 1), half (round(k1 / 2) + 1), expansion k2."""
    return min(k1 + 1, n), min(int(round(k1 / 2)) + 1, n), min(max(k2, 1), n)


def _dense_probe_distance(x: torch.Tensor, *, k1: int, k2: int, lam: float) -> torch.Tensor:
    """Re-ranked distance of point 0 to points 1..n-1 in each of B independent sets.

    Args:
        x: [B, n, F] float64, the probe first.

    Returns:
        [B, n - 1] float64.
    """
    b, n, _ = x.shape
    sq = (x * x).sum(-1)
    d = _round(sq[:, :, None] + sq[:, None, :] - 2.0 * (x @ x.transpose(1, 2)))
    order = torch.sort(d, dim=-1, stable=True).indices
    pos = torch.empty_like(order)
    pos.scatter_(-1, order, torch.arange(n, device=x.device).expand(b, n, n).contiguous())
    orig = d / d.amax(-1, keepdim=True).clamp_min(1.0 / _QUANT)
    kk, kh, kq = _sizes(k1, k2, n)
    top = pos < kk
    recip = top & top.transpose(1, 2)
    half = pos < kh
    recip_half = (half & half.transpose(1, 2)).double()
    inter = recip.double() @ recip_half.transpose(1, 2)
    cond = recip & (inter > (2.0 / 3.0) * recip_half.sum(-1)[:, None, :])
    expanded = recip | ((cond.double() @ recip_half) > 0)
    w = torch.where(expanded, torch.exp(-orig), torch.zeros((), dtype=x.dtype, device=x.device))
    v = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    if k2 != 1:
        v = ((pos < kq).double() @ v) / kq
    m = torch.minimum(v[:, :1, :], v).sum(-1)
    jaccard = 1.0 - m / (2.0 - m)
    final = (1.0 - lam) * jaccard + lam * orig[:, 0, :]
    return final[:, 1:]


def rerank_knn(features: np.ndarray, ids: np.ndarray, *, k1: int = 20, k2: int = 6,
               lam: float = 0.3, device: str = "cpu", batch_size: int | None = None,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Re-order every node's kNN list by k-reciprocal re-ranking.

    Node i is the probe and ``features[ids[i]]`` (its k listed neighbours, itself normally first)
    the gallery, as the released ``rerank_knn`` does.

    Args:
        features: [N, F] L2-normalised features.
        ids: [N, k] kNN lists.
        batch_size: nodes per batch (default: about 256 MB of working memory).

    Returns:
        ids [N, k] int64 re-ordered, and their re-ranked distances [N, k] float32, ascending.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n, k = ids.shape
    out_ids = np.empty_like(ids)
    out_dist = np.empty((n, k), dtype=np.float32)
    if n == 0:
        return out_ids, out_dist
    feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    width = (k + 1) * (feats.shape[1] + 12 * (k + 1))
    batch = batch_size or max(1, (256 << 20) // (8 * width))
    starts = range(0, n, batch)
    if progress:
        from tqdm import tqdm

        from capro.utils.dist import is_main

        starts = tqdm(starts, desc="re-rank", disable=not is_main())
    for start in starts:
        stop = min(start + batch, n)
        nodes = torch.arange(start, stop, device=device)
        lists = torch.from_numpy(ids[start:stop]).to(device)
        x = feats[torch.cat([nodes[:, None], lists], dim=1)].double()
        dist = _dense_probe_distance(x, k1=k1, k2=k2, lam=lam)
        dist_sorted, order = torch.sort(dist, dim=1, stable=True)
        out_ids[start:stop] = torch.gather(lists, 1, order).cpu().numpy()
        out_dist[start:stop] = dist_sorted.float().cpu().numpy()
    return out_ids, out_dist


def _neighbour_lists(x: torch.Tensor, sq: torch.Tensor, kt: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``kt`` nearest points of every point (self included) and each row's largest distance.

    Ties break by index: the search runs on the integer key ``round(d * 1e9) * n + j``.

    Returns:
        nbr [n, kt] int64 in rank order, rowmax [n] float64.
    """
    n = x.shape[0]
    rows = max(1, _BLOCK // n)
    nbr = np.empty((n, kt), dtype=np.int64)
    rowmax = np.empty(n, dtype=np.float64)
    cols = torch.arange(n, device=x.device)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        d = _round(sq[start:stop, None] + sq[None, :] - 2.0 * (x[start:stop] @ x.T))
        rowmax[start:stop] = d.amax(1).cpu().numpy()
        key = torch.round(d * _QUANT).long() * n + cols
        top = torch.topk(key, kt, dim=1, largest=False, sorted=True).values
        nbr[start:stop] = (top % n).cpu().numpy()
    return nbr, rowmax


def _reciprocal(lists: np.ndarray) -> np.ndarray:
    """[n, m] bool: whether node i is in the list of its p-th listed neighbour."""
    n, m = lists.shape
    out = np.empty((n, m), dtype=bool)
    rows = max(1, _BLOCK // (m * m))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        me = np.arange(start, stop)[:, None, None]
        out[start:stop] = (lists[lists[start:stop]] == me).any(-1)
    return out


def _expanded_pairs(top: np.ndarray, recip: np.ndarray, half: np.ndarray,
                    recip_half: np.ndarray) -> sp.csr_matrix:
    """Membership matrix [n, n] of the expanded k-reciprocal sets (entries 1)."""
    n, kk = top.shape
    kh = half.shape[1]
    size_half = recip_half.sum(1)
    rows_i: list[np.ndarray] = []
    cols_j: list[np.ndarray] = []
    step = max(1, _BLOCK // (kk * kh * kk))
    for start in range(0, n, step):
        stop = min(start + step, n)
        own = np.where(recip[start:stop], top[start:stop], -1)  # R(i), -1 = not a member
        cand_sets = np.where(recip_half[top[start:stop]], half[top[start:stop]], -2)  # R'(c) per c
        inter = (cand_sets[:, :, :, None] == own[:, None, None, :]).any(-1).sum(-1)
        cond = recip[start:stop] & (inter > (2.0 / 3.0) * size_half[top[start:stop]])
        i_idx = np.arange(start, stop)
        r_i, r_p = np.nonzero(recip[start:stop])
        rows_i.append(i_idx[r_i])
        cols_j.append(top[start:stop][r_i, r_p])
        c_i, c_p = np.nonzero(cond)
        sets = cand_sets[c_i, c_p]
        member = sets >= 0
        rows_i.append(np.repeat(i_idx[c_i], member.sum(1)))
        cols_j.append(sets[member])
    r = np.concatenate(rows_i)
    c = np.concatenate(cols_j)
    mat = sp.csr_matrix((np.ones(len(r), dtype=np.float64), (r, c)), shape=(n, n))
    mat.data[:] = 1.0
    return mat


def re_ranking(probe: np.ndarray, gallery: np.ndarray, *, k1: int = 20, k2: int = 6,
               lam: float = 0.3, device: str = "cpu") -> np.ndarray:
    """Re-ranked distances of each probe to every gallery item.

    Exact (equal to the dense all-pairs computation) but sparse: only each point's top-(k1 + 1)
    neighbours, found by a chunked search, enter the k-reciprocal sets; peak memory is about
    n * (k1 + 1)**2 booleans per chunk plus 128 MB of distance rows, n = Q + G.

    Args:
        probe: [Q, F] probe features (e.g. one textual prototype).
        gallery: [G, F] gallery features (e.g. the enhanced texts of one class).

    Returns:
        [Q, G] float64 distances.
    """
    q = probe.shape[0]
    x = torch.from_numpy(np.concatenate([probe, gallery]).astype(np.float64)).to(device)
    n = x.shape[0]
    if gallery.shape[0] == 0:
        return np.zeros((q, 0), dtype=np.float64)
    kk, kh, kq = _sizes(k1, k2, n)
    sq = (x * x).sum(1)
    nbr, rowmax = _neighbour_lists(x, sq, max(kk, kq))
    rowmax = np.maximum(rowmax, 1.0 / _QUANT)
    top, half = nbr[:, :kk], nbr[:, :kh]
    expanded = _expanded_pairs(top, _reciprocal(top), half, _reciprocal(half)).tocoo()

    rows_t = torch.from_numpy(expanded.row.astype(np.int64)).to(device)
    cols_t = torch.from_numpy(expanded.col.astype(np.int64)).to(device)
    dots = torch.empty(len(rows_t), dtype=torch.float64, device=device)
    step = max(1, _BLOCK // (4 * x.shape[1]))
    for s in range(0, len(rows_t), step):
        r, c = rows_t[s:s + step], cols_t[s:s + step]
        dots[s:s + step] = (x[r] * x[c]).sum(1)
    d = _round(sq[rows_t] + sq[cols_t] - 2.0 * dots).cpu().numpy()
    w = np.exp(-d / rowmax[expanded.row])
    v = sp.csr_matrix((w, (expanded.row, expanded.col)), shape=(n, n))
    total = np.asarray(v.sum(1)).ravel()
    v = sp.diags(np.divide(1.0, total, out=np.zeros(n), where=total > 0)) @ v
    if k2 != 1:
        qe = sp.csr_matrix((np.full(n * kq, 1.0 / kq), nbr[:, :kq].ravel(),
                            np.arange(0, n * kq + 1, kq)), shape=(n, n))
        v = (qe @ v).tocsr()
    v_csc = v.tocsc()

    out = np.empty((q, n - q), dtype=np.float64)
    for i in range(q):
        row = v.getrow(i)
        sub = v_csc[:, row.indices].tocoo()
        m = np.bincount(sub.row, weights=np.minimum(sub.data, row.data[sub.col]), minlength=n)
        jaccard = 1.0 - m / (2.0 - m)
        d_row = _round(sq[i] + sq - 2.0 * (x @ x[i])).cpu().numpy()
        out[i] = ((1.0 - lam) * jaccard + lam * d_row / rowmax[i])[q:]
    return out
