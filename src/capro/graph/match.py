"""Text matching and anchor selection.

Per class c, the gallery is the (enhanced) texts of the samples whose web label is c and the
probe is the class's textual prototype; each sample's text distance is the k-reciprocal
re-ranked distance to that prototype (``method="rerank"``) or ``1 - cosine`` (``"cosine"``).
Texts and prototypes are L2-normalised first. The K best-ranked samples of each class become its
anchors (D_K); multi-label data also gets the farthest ones as negative anchors. With a margin
floor (``min_margin``, D16) only texts that prefer their own class by at least that much may
become anchors: K is then a cap, and each class's count follows its evidence.

Examples:
    >>> dist = text_distances(enhanced, prototypes, labels, method="rerank")
    >>> domain = select_anchors(dist, labels, num_classes=C, topk=50)
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import numpy as np

from capro.graph.knn import normalize_rows
from capro.graph.rerank import re_ranking

METHODS = ("rerank", "cosine")
ANCHOR_MODES = ("text", "random")
SCORES = ("distance", "softmax")


ROW_BLOCK = 16_384
"""Rows the [N, C] computations below handle at a time: their temporaries stay ROW_BLOCK x C
(float64), whatever N (at 2.4M images and 1,000 classes a whole-N float64 copy is 19 GB)."""


def _in_row_blocks(fn: Callable) -> Callable:
    """Apply the row-wise ``fn(cos [N, C], labels [N] | [N, C], **kw)`` to ROW_BLOCK rows at a time
    and concatenate its outputs (an array, or a tuple of arrays, with N rows). Row-wise, so the
    result is the one-block result."""
    @functools.wraps(fn)
    def blocks(cos: np.ndarray, labels: np.ndarray, **kw):
        n = cos.shape[0]
        if n <= ROW_BLOCK:
            return fn(cos, labels, **kw)
        labels = np.asarray(labels)
        parts = [fn(cos[s:s + ROW_BLOCK], labels[s:s + ROW_BLOCK], **kw) for s in range(0, n, ROW_BLOCK)]
        if isinstance(parts[0], tuple):
            return tuple(np.concatenate(p) for p in zip(*parts))
        return np.concatenate(parts)
    return blocks


def text_cosine(text: np.ndarray, prototypes: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Cosine [N, C] float32 between every text [N, D] and every prototype [C, D], ROW_BLOCK rows
    at a time into ``out`` (e.g. a memory-mapped file; a new array when None)."""
    protos = normalize_rows(prototypes).T
    n = text.shape[0]
    out = np.empty((n, prototypes.shape[0]), np.float32) if out is None else out
    for s in range(0, n, ROW_BLOCK):
        out[s:s + ROW_BLOCK] = normalize_rows(np.asarray(text[s:s + ROW_BLOCK])) @ protos
    return out


def _class_members(labels: np.ndarray, c: int) -> np.ndarray:
    if labels.ndim == 1:
        return np.flatnonzero(labels == c)
    return np.flatnonzero(labels[:, c])


def text_distances(text: np.ndarray, prototypes: np.ndarray, labels: np.ndarray, *,
                   method: str = "rerank", k1: int = 20, k2: int = 6, lam: float = 0.3,
                   device: str = "cpu", progress: bool = False) -> np.ndarray:
    """Distance of each sample's text to the prototype of each of its web labels.

    Args:
        text: [N, D] (enhanced) text embeddings.
        prototypes: [C, D] textual prototypes.
        labels: [N] int web labels (single-label) or [N, C] bool multi-hot web labels.
        method: ``rerank`` (per class: probe = prototype, gallery = that class's samples) or
            ``cosine`` (1 - cosine).

    Returns:
        [N] float32 (single-label; nan for a label outside 0..C-1), or [N, C] float32 with nan
        where c is not a web label of the sample.
    """
    if method not in METHODS:
        raise ValueError(f"text matching method {method!r}; choose from {', '.join(METHODS)}")
    text = normalize_rows(text)
    protos = normalize_rows(prototypes)
    labels = np.asarray(labels)
    num_classes = protos.shape[0]
    out = np.full(labels.shape, np.nan, dtype=np.float32)
    classes = range(num_classes)
    if progress:
        from tqdm import tqdm

        from capro.utils.dist import is_main

        classes = tqdm(classes, desc="text matching", disable=not is_main())
    for c in classes:
        members = _class_members(labels, c)
        if len(members) == 0:
            continue
        if method == "cosine":
            dist = 1.0 - text[members] @ protos[c]
        else:
            dist = re_ranking(protos[c:c + 1], text[members], k1=k1, k2=k2, lam=lam, device=device)[0]
        if labels.ndim == 1:
            out[members] = dist
        else:
            out[members, c] = dist
    return out


def _web_mask(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """([N] bool rows with a valid label, [N, C] bool web-label mask) of [N] int or [N, C] labels."""
    n = labels.shape[0]
    if labels.ndim == 1:
        valid = (labels >= 0) & (labels < num_classes)
        web = np.zeros((n, num_classes), dtype=bool)
        web[np.flatnonzero(valid), labels[valid]] = True
        return valid, web
    return np.ones(n, dtype=bool), labels.astype(bool)


@_in_row_blocks
def prototype_softmax(cos: np.ndarray, labels: np.ndarray, *, temperature: float = 0.05) -> np.ndarray:
    """How much closer each text is to its web label's prototype than to the others.

    For sample i and each of its web labels c: ``exp(cos_ic / T) / (exp(cos_ic / T) +
    sum_{c' not a web label of i} exp(cos_ic' / T))`` — for single-label data the softmax over
    the prototypes at c. A text that fits another class's prototype as well as its own scores
    about 1/2 or less, however close it is to its own.

    Args:
        cos: [N, C] cosine of each (enhanced) text to each textual prototype.
        labels: [N] int web labels, or [N, C] bool multi-hot web labels.
        temperature: T > 0.

    Returns:
        [N] float32 (single-label; nan for a label outside 0..C-1) or [N, C] float32 with nan
        where c is not a web label of the sample.
    """
    cos = np.asarray(cos, dtype=np.float64)
    labels = np.asarray(labels)
    n, num_classes = cos.shape
    valid, web = _web_mask(labels, num_classes)
    z = cos / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    others = np.where(web, 0.0, z).sum(axis=1, keepdims=True)
    out = np.where(web, z / (z + others), np.nan).astype(np.float32)
    if labels.ndim == 1:
        single = np.full(n, np.nan, dtype=np.float32)
        single[valid] = out[np.flatnonzero(valid), labels[valid]]
        return single
    return out


@_in_row_blocks
def text_margins(cos: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How much more each text fits its web label's prototype than any class it does not carry.

    Args:
        cos: [N, C] cosine of each (enhanced) text to each textual prototype.
        labels: [N] int web labels, or [N, C] bool multi-hot web labels.

    Returns:
        (margin, next_class): single-label [N] float32 ``cos[i, y_i] - max_{c != y_i} cos[i, c]``
        and [N] int64 that c; multi-label [N, C] float32 ``cos[i, c] - max_{c' not carried by i}
        cos[i, c']`` where c is a web label of i (nan elsewhere, and where i carries every
        class) and [N] int64 the best class not carried (-1 if none). nan / -1 for a label
        outside 0..C-1.
    """
    cos = np.asarray(cos, dtype=np.float64)
    labels = np.asarray(labels)
    n, num_classes = cos.shape
    valid, web = _web_mask(labels, num_classes)
    others = np.where(web, -np.inf, cos)
    nxt = np.argmax(others, axis=1)
    best_other = others[np.arange(n), nxt]
    nxt = np.where(np.isfinite(best_other) & valid, nxt, -1)
    if labels.ndim == 1:
        own = cos[np.arange(n), np.clip(labels, 0, num_classes - 1)]
        margin = np.where(valid & np.isfinite(best_other), own - best_other, np.nan)
        return margin.astype(np.float32), nxt.astype(np.int64)
    margin = np.where(web & np.isfinite(best_other)[:, None], cos - best_other[:, None], np.nan)
    return margin.astype(np.float32), nxt.astype(np.int64)


def text_margins_of(text: np.ndarray, prototypes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``text_margins(text_cosine(text, prototypes), labels)`` one row block at a time (never an
    N x C array); text [N, D], prototypes [C, D]."""
    labels = np.asarray(labels)
    parts = [text_margins(text_cosine(text[s:s + ROW_BLOCK], prototypes), labels[s:s + ROW_BLOCK])
             for s in range(0, max(text.shape[0], 1), ROW_BLOCK)]
    return np.concatenate([m for m, _ in parts]), np.concatenate([c for _, c in parts])


def anchor_ranking(distance: np.ndarray, cos: np.ndarray, labels: np.ndarray, *,
                   score: str = "distance", temperature: float = 0.05) -> np.ndarray:
    """The key anchors are ranked by, ascending, with the shape of ``distance``.

    ``distance``: the paper's ranking, the text distance to the web label's prototype.
    ``softmax``: ``1 - prototype_softmax(cos, labels)``, the margin-aware ranking.
    """
    if score not in SCORES:
        raise ValueError(f"anchor score {score!r}; choose from {', '.join(SCORES)}")
    if score == "distance":
        return np.asarray(distance, dtype=np.float32)
    return (1.0 - prototype_softmax(cos, labels, temperature=temperature)).astype(np.float32)


def _warn_small(small: list[tuple[int, int]], topk: int, class_names: list[str] | None) -> None:
    if not small:
        return
    shown = ", ".join(f"{class_names[c] if class_names else c} ({n})" for c, n in small[:10])
    more = f" and {len(small) - 10} more" if len(small) > 10 else ""
    warnings.warn(f"{len(small)} class(es) have fewer than K={topk} samples with that web label, so "
                  f"all of them become anchors: {shown}{more}", UserWarning, stacklevel=3)


def _warn_weak(weak: list[tuple[int, int, int]], class_names: list[str] | None) -> None:
    if not weak:
        return
    shown = ", ".join(f"{class_names[c] if class_names else c} ({e} of {n})" for c, e, n in weak[:10])
    more = f" and {len(weak) - 10} more" if len(weak) > 10 else ""
    warnings.warn(f"{len(weak)} class(es) have fewer texts that prefer them than match.min_anchors, "
                  f"so their best-ranked texts become anchors anyway (texts with evidence of how "
                  f"many with that label): {shown}{more}. Check their names, concept texts and web "
                  "text (RUN/match/anchors.jsonl)", UserWarning, stacklevel=3)


def _take(ranked: np.ndarray, eligible: np.ndarray | None, topk: int, min_anchors: int) -> tuple[np.ndarray, bool]:
    """The first ``topk`` of ``ranked`` that are ``eligible`` (all when None); when fewer than
    ``min(min_anchors, topk, len(ranked))`` are, that many of the best-ranked instead; and whether
    that replacement was needed."""
    if eligible is None:
        return ranked[:topk], False
    ok = ranked[eligible[ranked]][:topk]
    floor = min(min_anchors, topk, len(ranked))
    if len(ok) >= floor:
        return ok, False
    return ranked[:floor], True


def select_anchors(distance: np.ndarray, labels: np.ndarray, *, num_classes: int, topk: int = 50,
                   mode: str = "text", seed: int = 0, class_names: list[str] | None = None,
                   eligible: np.ndarray | None = None, min_anchors: int = 0) -> np.ndarray:
    """Single-label anchors: per class, the ``topk`` samples of that web label ranked first.

    With ``eligible`` (D16: the texts whose margin clears the floor) only eligible samples are
    taken, up to ``topk``; a class with fewer than ``min_anchors`` eligible samples takes its
    ``min_anchors`` best-ranked ones instead, with one warning naming such classes. Without it,
    classes with fewer than ``topk`` samples take all of them, with one warning naming them.
    ``mode="random"`` draws ``topk`` per class with a seeded generator instead (the random-anchor
    ablation; ``eligible`` is ignored). Ties in the key go to the lower index.

    Args:
        distance: [N] ranking key (ascending), e.g. the text distance to the own web label's
            prototype.
        labels: [N] int web labels.
        eligible: [N] bool, or None (the paper's fixed top-K).

    Returns:
        domain [N] int8: 1 = anchor, 0 = not.
    """
    if mode not in ANCHOR_MODES:
        raise ValueError(f"anchor mode {mode!r}; choose from {', '.join(ANCHOR_MODES)}")
    rng = np.random.default_rng(seed)
    domain = np.zeros(len(labels), dtype=np.int8)
    small: list[tuple[int, int]] = []
    weak: list[tuple[int, int, int]] = []
    gate = None if mode == "random" or eligible is None else np.asarray(eligible, dtype=bool)
    for c in range(num_classes):
        members = _class_members(np.asarray(labels), c)
        if len(members) < topk and gate is None:
            small.append((c, len(members)))
        if mode == "random":
            chosen = rng.choice(members, size=min(topk, len(members)), replace=False)
        else:
            ranked = members[np.argsort(distance[members], kind="stable")]
            chosen, topped = _take(ranked, gate, topk, min_anchors)
            if topped:
                weak.append((c, int(gate[members].sum()), len(members)))
        domain[chosen] = 1
    _warn_small(small, topk, class_names)
    _warn_weak(weak, class_names)
    return domain


def anchor_counts(domain: np.ndarray, labels: np.ndarray, *, num_classes: int, topk: int,
                  eligible: np.ndarray | None = None, min_anchors: int = 0,
                  class_names: list[str] | None = None) -> list[dict]:
    """Per class: how many samples carry it, how many texts have the evidence (``eligible``), how
    many became (positive) anchors and why that many.

    ``why``: ``cap`` (K reached), ``evidence`` (every text with evidence, fewer than K),
    ``minimum`` (too few texts with evidence: the ``min_anchors`` best-ranked taken anyway),
    ``class size`` (fewer samples than K, all taken; fixed top-K only), ``none`` (no samples).

    Args:
        domain: [N] or [N, C] int8 as :func:`select_anchors` / :func:`select_anchors_multilabel`.
        labels: [N] int or [N, C] bool web labels.
        eligible: [N] or [N, C] bool, or None.
    """
    labels = np.asarray(labels)
    multi = labels.ndim == 2
    out = []
    for c in range(num_classes):
        members = _class_members(labels, c)
        col = domain[members, c] if multi else domain[members]
        taken = int((col > 0).sum())
        ev = None
        if eligible is not None:
            ev = int((eligible[members, c] if multi else eligible[members]).sum())
        if len(members) == 0:
            why = "none"
        elif ev is None:
            why = "cap" if taken >= topk else "class size"
        elif ev >= topk and taken >= topk:
            why = "cap"
        elif ev >= min(min_anchors, topk, len(members)):
            why = "evidence"
        else:
            why = "minimum"
        out.append({"class": class_names[c] if class_names else str(c), "samples": int(len(members)),
                    "with_evidence": ev, "anchors": taken, "why": why})
    return out


def select_anchors_multilabel(distance: np.ndarray, web: np.ndarray, *, topk: int = 50,
                              negative: bool = True, mode: str = "text", seed: int = 0,
                              class_names: list[str] | None = None, eligible: np.ndarray | None = None,
                              against: np.ndarray | None = None, min_anchors: int = 0) -> np.ndarray:
    """Multi-label anchors: per class, positives = the ``topk`` closest samples carrying that web
    label; negatives = the last ``min(n - topk, topk)`` of them (the farthest).

    With ``eligible`` [N, C] (D16) positives are only eligible samples, up to ``topk``, topped up to
    ``min_anchors`` from the ranking (with a warning); with ``against`` [N, C] negatives are only
    samples whose text shows it does not fit the class, the farthest first, up to ``topk``.
    ``mode="random"`` draws the positives at random and the negatives at random from the rest.

    Args:
        distance: [N, C] ranking key (nan where c is not a web label).
        web: [N, C] bool multi-hot web labels.

    Returns:
        domain [N, C] int8: +1 positive anchor, -1 negative anchor, 0 neither.
    """
    if mode not in ANCHOR_MODES:
        raise ValueError(f"anchor mode {mode!r}; choose from {', '.join(ANCHOR_MODES)}")
    web = np.asarray(web, dtype=bool)
    rng = np.random.default_rng(seed)
    domain = np.zeros(web.shape, dtype=np.int8)
    small: list[tuple[int, int]] = []
    weak: list[tuple[int, int, int]] = []
    gated = mode != "random" and eligible is not None
    for c in range(web.shape[1]):
        members = np.flatnonzero(web[:, c])
        n = len(members)
        if n < topk and not gated:
            small.append((c, n))
        if mode == "random":
            ranked = rng.permutation(members)
        else:
            ranked = members[np.argsort(distance[members, c], kind="stable")]
        if not gated:
            n_pos = min(topk, n)
            domain[ranked[:n_pos], c] = 1
            n_neg = min(n - n_pos, topk) if negative else 0
            if n_neg > 0:
                domain[ranked[n - n_neg:], c] = -1
            continue
        pos, topped = _take(ranked, np.asarray(eligible[:, c], dtype=bool), topk, min_anchors)
        if topped:
            weak.append((c, int(eligible[members, c].sum()), n))
        domain[pos, c] = 1
        if negative:
            rest = ranked[::-1][domain[ranked[::-1], c] == 0]  # farthest first, never a positive
            if against is not None:
                rest = rest[np.asarray(against[rest, c], dtype=bool)]
            domain[rest[:min(topk, len(rest))], c] = -1
    _warn_small(small, topk, class_names)
    _warn_weak(weak, class_names)
    return domain
