"""The offline graph and text-matching steps of a run, with skip-on-rerun caching.

    knn -> rerank -> enhance          (RUN/graph/)
    match -> anchors                  (RUN/match/)

Artefacts:

- ``graph/knn_ids.npy`` [N, k] int64, ``graph/knn_sims.npy`` [N, k] float32 (self first);
- ``graph/rerank_ids.npy`` [N, k] int64, ``graph/rerank_dist.npy`` [N, k] float32 ascending (without
  re-ranking: the kNN lists with distances 1 - sim);
- ``graph/enhanced.npy`` [N, D] float32 (the raw texts when ``graph.enhance`` is off, in which case
  the kNN and re-ranking steps are not run);
- ``match/text_distance.npy`` ([N] or [N, C]), ``match/text_cosine.npy`` [N, C],
  ``match/scores.jsonl``, ``match/domain.npy``, ``match/anchors.jsonl``,
  ``match/anchor_counts.json`` (per class: samples, texts with evidence, anchors, and why).

Each step records a fingerprint of its inputs (array digests), its config and the previous step's
fingerprint in ``RUN/<graph|match>/_steps/<step>/done.json`` (:mod:`capro.utils.cache`), so a
rerun with unchanged inputs and config loads the artefacts instead of recomputing them. Call on
one process (rank 0); nothing here synchronises ranks.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from capro.config import Config
from capro.data.layout import Split
from capro.errors import DataError
from capro.graph.enhance import enhance_text
from capro.graph.knn import (
    create_index,
    create_knn_backend,
    normalize_rows,
    recall_at_k,
    resolve_index,
)
from capro.graph.match import (
    ROW_BLOCK,
    anchor_counts,
    anchor_ranking,
    select_anchors,
    select_anchors_multilabel,
    text_cosine,
    text_distances,
    text_margins,
    text_margins_of,
)
from capro.graph.rerank import rerank_knn
from capro.utils.cache import fingerprint, is_done, mark_done
from capro.utils.dist import is_main
from capro.utils.io import atomic_write, open_npy, partial_npy, publish_npy, write_json, write_jsonl
from capro.utils.progress import progress as log_progress

MATCH_FILES = ("text_distance", "text_cosine", "domain")


@dataclass
class AnchorResult:
    """What the offline steps hand to stage 2.

    Attributes:
        domain: single-label [N] int8 (1 = anchor); multi-label [N, C] int8 (+1 positive anchor,
            -1 negative anchor, 0 neither).
        text_distance: single-label [N] float32 distance of the text to its web label's prototype;
            multi-label [N, C] float32, nan where c is not a web label of the sample.
        text_cosine: [N, C] float32 cosine of the text to every textual prototype.
        enhanced: [N, D] float32 the enhanced (or raw, when enhancement is off) texts.
    """

    domain: np.ndarray
    text_distance: np.ndarray
    text_cosine: np.ndarray
    enhanced: np.ndarray


def graph_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "graph"


def match_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "match"


def array_digest(a: np.ndarray) -> str:
    """Content hash of an array (shape, dtype and bytes), read in 64 MiB slices."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.shape}:{a.dtype.str}".encode())
    flat = a.reshape(-1).view(np.uint8) if a.size else np.zeros(0, np.uint8)
    step = 64 << 20
    for s in range(0, flat.size, step):
        h.update(flat[s:s + step].data)
    return h.hexdigest()


def save_npy(path: Path, a: np.ndarray) -> None:
    """Write ``a`` to ``path`` atomically; an array memory-mapped from :func:`partial_npy` of
    ``path`` is flushed and renamed instead of copied."""
    if isinstance(a, np.memmap) and a.filename is not None and Path(a.filename) == partial_npy(path):
        publish_npy(a, path)
        return
    with atomic_write(path, "wb", encoding=None) as fh:
        np.save(fh, a)


def _device(cfg: Config) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def _progress() -> bool:
    return is_main() and sys.stderr.isatty()


def _cached(base: Path, step: str, fp: str, names: tuple[str, ...],
            compute: Callable[[], dict[str, np.ndarray]], *, mmap: tuple[str, ...] = (),
            **info) -> dict[str, np.ndarray]:
    """Load ``base/<name>.npy`` (memory-mapped for the names in ``mmap``, read-only) when
    ``step`` is done with fingerprint ``fp``, else compute + save."""
    step_dir = base / "_steps" / step
    paths = {n: base / f"{n}.npy" for n in names}
    if is_done(step_dir, fp) and all(p.is_file() for p in paths.values()):
        return {n: np.load(p, mmap_mode="r" if n in mmap else None) for n, p in paths.items()}
    out = compute()
    for n, p in paths.items():
        save_npy(p, out[n])
    mark_done(step_dir, fp, **{k: v(out) if callable(v) else v for k, v in info.items()})
    return out


def _check_rows(split: Split, **arrays: np.ndarray) -> None:
    for name, a in arrays.items():
        if a.shape[0] != len(split):
            raise DataError(f"{name} has {a.shape[0]} rows but the {split.name} split has "
                            f"{len(split)} records; recompute it for this split")


def web_labels(split: Split, num_classes: int, multi_label: bool) -> np.ndarray:
    """[N] int web labels, or [N, C] bool multi-hot when ``multi_label``."""
    if not multi_label:
        return np.array([r.label for r in split.records], dtype=np.int64)
    web = np.zeros((len(split), num_classes), dtype=bool)
    for i, r in enumerate(split.records):
        web[i, list(r.labels)] = True
    return web


def graph_knn(cfg: Config, features: np.ndarray, run_dir: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """kNN lists (``graph.k`` neighbours, the node included) of the L2-normalised features.

    ``graph.index`` chooses exact or approximate search; an approximate one measures its recall
    against exact search on ``graph.recall_queries`` sampled nodes, prints it and records it in
    ``graph/_steps/knn/done.json``."""
    g = cfg.graph
    index = resolve_index(g.index, features.shape[0], exact_max=g.exact_max)
    params = {"step": "knn", "k": g.k, "features": array_digest(features)}
    if index != "exact":  # exact search keeps the fingerprint it had before the key
        params.update(index=index, **({"nlist": g.nlist, "nprobe": g.nprobe} if index == "ivf" else
                                      {"hnsw_m": g.hnsw_m, "ef_search": g.ef_search}), seed=cfg.seed)
    fp = fingerprint(params)

    def compute() -> dict[str, np.ndarray]:
        x = normalize_rows(features)
        if index == "exact":
            backend = create_knn_backend(g.backend, device=_device(cfg), chunk_size=g.chunk_size,
                                         progress=_progress())
        else:
            backend = create_index(index, nlist=g.nlist, nprobe=g.nprobe, hnsw_m=g.hnsw_m,
                                   ef_search=g.ef_search, seed=cfg.seed, progress=_progress(),
                                   device=_device(cfg))
        ids, sims = backend.search(x, k=g.k)
        out = {"knn_ids": ids, "knn_sims": sims}
        if index != "exact" and g.recall_queries > 0:
            recall, used = recall_at_k(x, ids, queries=g.recall_queries, seed=cfg.seed, device=_device(cfg))
            out.update(recall=recall, recall_queries=used)
            if is_main():
                log_progress(f"kNN ({index}): recall@{g.k - 1} {recall:.3f} against exact search on "
                             f"{used:,} sampled nodes")
        return out

    return _cached(graph_dir(run_dir), "knn", fp, ("knn_ids", "knn_sims"), compute,
                   backend=g.backend if index == "exact" else index,
                   recall=lambda o: o.get("recall"), recall_queries=lambda o: o.get("recall_queries")), fp


def graph_rerank(cfg: Config, features: np.ndarray, run_dir: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """kNN, then each list re-ordered by k-reciprocal re-ranking (when ``graph.rerank``)."""
    knn, up = graph_knn(cfg, features, run_dir)
    g = cfg.graph
    fp = fingerprint({"step": "rerank", "up": up, "rerank": g.rerank, "k1": g.k1, "k2": g.k2, "lam": g.lam})

    def compute() -> dict[str, np.ndarray]:
        if not g.rerank:
            return {"rerank_ids": knn["knn_ids"], "rerank_dist": (1.0 - knn["knn_sims"]).astype(np.float32)}
        ids, dist = rerank_knn(normalize_rows(features), knn["knn_ids"], k1=g.k1, k2=g.k2, lam=g.lam,
                               device=_device(cfg), progress=_progress())
        return {"rerank_ids": ids, "rerank_dist": dist}

    return _cached(graph_dir(run_dir), "rerank", fp, ("rerank_ids", "rerank_dist"), compute), fp


def graph_enhance(cfg: Config, features: np.ndarray, text_emb: np.ndarray,
                  run_dir: str | Path) -> tuple[np.ndarray, str]:
    """Enhanced texts [N, D]: SGC smoothing over the first ``graph.keep`` re-ranked neighbours.

    Without re-ranking the weights come from the cosine similarities (as the released
    kNN-only variant). With ``graph.enhance`` off the raw texts are returned and no graph is built.
    """
    g = cfg.graph
    text_fp = array_digest(text_emb)
    if not g.enhance:
        fp = fingerprint({"step": "enhance", "enhance": False, "text": text_fp})
        out = _cached(graph_dir(run_dir), "enhance", fp, ("enhanced",),
                      lambda: {"enhanced": np.asarray(text_emb, dtype=np.float32)}, isolated=0)
        return out["enhanced"], fp
    rr, up = graph_rerank(cfg, features, run_dir)
    mode = g.edge_weight if g.rerank else "similarity"
    params = {"step": "enhance", "up": up, "keep": g.keep, "edge_weight": mode, "text": text_fp}
    if g.self_weight:  # the paper's neighbours-only smoothing keeps its fingerprint
        params["self_weight"] = g.self_weight
    fp = fingerprint(params)

    def compute() -> dict[str, np.ndarray]:
        # written row block by row block into a file: memory holds no second N x D copy
        into = open_npy(graph_dir(run_dir) / "enhanced.npy", text_emb.shape)
        enhanced, isolated = enhance_text(rr["rerank_ids"], rr["rerank_dist"], text_emb, keep=g.keep,
                                          edge_weight=mode, self_weight=g.self_weight, out=into)
        return {"enhanced": enhanced, "isolated": isolated}

    out = _cached(graph_dir(run_dir), "enhance", fp, ("enhanced",), compute, mmap=("enhanced",),
                  isolated=lambda o: int(o["isolated"].sum()))
    return out["enhanced"], fp


def match_texts(cfg: Config, split: Split, features: np.ndarray, text_emb: np.ndarray,
                prototypes: np.ndarray, run_dir: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """Enhanced texts matched to the textual prototypes; writes ``match/scores.jsonl`` too."""
    _check_rows(split, features=features, text_emb=text_emb)
    num_classes = len(split.classes) or prototypes.shape[0]
    if prototypes.shape[0] != num_classes or prototypes.shape[1] != text_emb.shape[1]:
        raise DataError(f"prototypes have shape {prototypes.shape} but there are {num_classes} classes "
                        f"and {text_emb.shape[1]}-d texts; rebuild them with the same text encoder")
    enhanced, up = graph_enhance(cfg, features, text_emb, run_dir)
    multi = _multi_label(cfg, split)
    labels = web_labels(split, num_classes, multi)
    m, g = cfg.match, cfg.graph
    fp = fingerprint({"step": "match", "up": up, "method": m.method, "k1": g.k1, "k2": g.k2, "lam": g.lam,
                      "prototypes": array_digest(prototypes), "labels": array_digest(labels),
                      "ids": _ids_digest(split)})

    def compute() -> dict[str, np.ndarray]:
        dist = text_distances(enhanced, prototypes, labels, method=m.method, k1=g.k1, k2=g.k2,
                              lam=g.lam, device=_device(cfg), progress=_progress())
        # [N, C]: into a file, row block by row block
        cos = text_cosine(enhanced, prototypes, out=open_npy(match_dir(run_dir) / "text_cosine.npy",
                                                            (enhanced.shape[0], prototypes.shape[0])))
        out = {"text_distance": dist, "text_cosine": cos}
        write_jsonl(match_dir(run_dir) / "scores.jsonl", score_rows(split, labels, dist, cos))
        return out

    out = _cached(match_dir(run_dir), "match", fp, ("text_distance", "text_cosine"), compute,
                  mmap=("text_cosine",))
    out["enhanced"] = enhanced
    return out, fp


def build_anchors(cfg: Config, split: Split, features: np.ndarray, text_emb: np.ndarray,
                  prototypes: np.ndarray, run_dir: str | Path, *, seed: int = 0) -> AnchorResult:
    """Every offline step: kNN -> re-rank -> enhance -> match -> anchors, skipping finished ones.

    Args:
        cfg: ``cfg.graph`` and ``cfg.match`` are used (and ``cfg.method.multi_label``).
        split: the training split (web labels, ids, class names).
        features: [N, F] stage-1 visual features (any float; rows are L2-normalised here).
        text_emb: [N, D] the samples' text embeddings.
        prototypes: [C, D] textual prototypes.
        run_dir: artefacts go to ``run_dir/graph`` and ``run_dir/match``.
        seed: seeds the random-anchor ablation.
    """
    out, up = match_texts(cfg, split, features, text_emb, prototypes, run_dir)
    m = cfg.match
    multi = _multi_label(cfg, split)
    params = {"step": "anchors", "up": up, "topk": m.topk, "anchors": m.anchors,
              "negative": m.negative_anchors, "seed": seed, "multi": multi}
    if m.score != "distance":  # the paper's ranking keeps the fingerprint it had before the key
        params.update(score=m.score, temperature=m.temperature)
    if m.min_margin is not None:  # so does the fixed top-K
        params.update(min_margin=m.min_margin, min_anchors=m.min_anchors)
    fp = fingerprint(params)
    names = [c.name for c in split.classes] or [str(c) for c in range(prototypes.shape[0])]
    labels = web_labels(split, len(names), multi)

    def compute() -> dict[str, np.ndarray]:
        dist = out["text_distance"]
        key = anchor_ranking(dist, out["text_cosine"], labels, score=m.score, temperature=m.temperature)
        margins = text_margins(out["text_cosine"], labels)
        eligible = against = None
        if m.min_margin is not None and m.anchors == "text":
            margin = margins[0]
            with np.errstate(invalid="ignore"):
                eligible, against = margin >= m.min_margin, margin <= -m.min_margin
        if multi:
            domain = select_anchors_multilabel(key, labels, topk=m.topk, negative=m.negative_anchors,
                                               mode=m.anchors, seed=seed, class_names=names,
                                               eligible=eligible, against=against, min_anchors=m.min_anchors)
        else:
            domain = select_anchors(key, labels, num_classes=len(names), topk=m.topk, mode=m.anchors,
                                    seed=seed, class_names=names, eligible=eligible, min_anchors=m.min_anchors)
        write_json(match_dir(run_dir) / "anchor_counts.json",
                   {"topk": m.topk, "min_margin": m.min_margin if eligible is not None else None,
                    "min_anchors": m.min_anchors if eligible is not None else None,
                    "classes": anchor_counts(domain, labels, num_classes=len(names), topk=m.topk,
                                             eligible=eligible, min_anchors=m.min_anchors,
                                             class_names=names)})
        write_jsonl(match_dir(run_dir) / "anchors.jsonl",
                    anchor_rows(split, domain, dist, labels, names, margins=margins,
                                key=None if m.score == "distance" else key,
                                own_margins=text_margins_of(text_emb, prototypes, labels)[0],
                                text_fields=cfg.data.text_fields))
        return {"domain": domain}

    res = _cached(match_dir(run_dir), "anchors", fp, ("domain",), compute,
                  anchors=lambda o: int((o["domain"] != 0).sum()))
    return AnchorResult(domain=res["domain"], text_distance=out["text_distance"],
                        text_cosine=out["text_cosine"], enhanced=out["enhanced"])


def load_anchor_result(run_dir: str | Path) -> AnchorResult:
    """Read the artefacts :func:`build_anchors` wrote."""
    paths = {n: match_dir(run_dir) / f"{n}.npy" for n in MATCH_FILES}
    paths["enhanced"] = graph_dir(run_dir) / "enhanced.npy"
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: missing; run `capro graph RUN match` (or `capro run`) first")
    return AnchorResult(**{n: np.load(p) for n, p in paths.items()})


def _multi_label(cfg: Config, split: Split) -> bool:
    return split.multi_label if cfg.method.multi_label is None else bool(cfg.method.multi_label)


def _ids_digest(split: Split) -> str:
    return hashlib.sha256("\n".join(r.id for r in split.records).encode()).hexdigest()


def _label_names(split: Split, i: int, names: list[str]) -> str | list[str]:
    r = split.records[i]
    return [names[c] for c in r.labels] if r.multi_label else names[r.label]


def score_rows(split: Split, labels: np.ndarray, dist: np.ndarray, cos: np.ndarray, *, top: int = 5):
    """Per sample: id, web label(s), text distance(s) and the ``top`` classes by cosine."""
    names = [c.name for c in split.classes] or [str(c) for c in range(cos.shape[1])]
    for start in range(0, len(split.records), ROW_BLOCK):  # cos may be a memory-mapped [N, C]
        block = np.asarray(cos[start:start + ROW_BLOCK])
        best = np.argsort(-block, axis=1, kind="stable")[:, :top]
        for j, r in enumerate(split.records[start:start + ROW_BLOCK]):
            i = start + j
            if labels.ndim == 1:
                d: float | dict[str, float] | None = _num(dist[i])
            else:
                d = {names[c]: _num(dist[i, c]) for c in r.labels}
            yield {"id": r.id, "label": _label_names(split, i, names), "text_distance": d,
                   "top_classes": [names[c] for c in best[j]],
                   "top_cosines": [round(float(block[j, c]), 6) for c in best[j]]}


def evidence(own_margin: float | None, margin: float | None) -> str:
    """Where an anchor's evidence came from: ``own text`` (its own text already prefers the
    class), ``neighbours`` (only the enhanced text, smoothed over its visual neighbours, does more
    than its own), or ``neither`` (its text prefers another class even after enhancement)."""
    if own_margin is not None and own_margin > 0:
        return "own text"
    if margin is not None and (own_margin is None or margin > own_margin) and margin > 0:
        return "neighbours"
    return "neither"


def anchor_rows(split: Split, domain: np.ndarray, dist: np.ndarray, labels: np.ndarray,
                names: list[str], *, margins: tuple[np.ndarray, np.ndarray] | None = None,
                key: np.ndarray | None = None, own_margins: np.ndarray | None = None,
                text_fields: tuple[str, ...] | list[str] | None = None, max_chars: int = 300):
    """One row per anchor, class by class; ``rank`` 1 = first chosen (positives: the lowest
    ranking key) or farthest (negatives). ``key``: the ranking key when it is not the distance
    (``match.score=softmax``: the row's ``score`` is 1 - key). With ``margins`` (the
    :func:`capro.graph.match.text_margins` of the (enhanced) texts) each row also carries
    ``margin``, its text's cosine to the class's prototype minus the best cosine to a class it
    does not carry, and ``next_class``, that class: a small or negative margin marks a text that
    fits another class as well. With ``own_margins``, the same margins of the samples' own texts,
    each row adds ``text`` (its own web text, cut to ``max_chars``), ``own_margin`` and
    ``evidence`` (:func:`evidence`)."""
    ids = [r.id for r in split.records]
    multi = domain.ndim == 2
    for c, name in enumerate(names):
        if multi:
            col_domain, col_dist = domain[:, c], dist[:, c]
            col_key = col_dist if key is None else key[:, c]
        else:
            col_domain, col_dist = np.where(labels == c, domain, 0), dist
            col_key = col_dist if key is None else key
        for polarity, sign in (("positive", 1), ("negative", -1)):
            members = np.flatnonzero(col_domain == sign)
            k = col_key[members]
            order = np.argsort(k if sign > 0 else -k, kind="stable")
            for rank, j in enumerate(order, start=1):
                i = members[j]
                row = {"id": ids[i], "class": name, "rank": rank, "distance": _num(col_dist[i])}
                if key is not None:
                    row["score"] = _num(1.0 - k[j])
                margin = None
                if margins is not None:
                    margin = _num(margins[0][i, c] if multi else margins[0][i])
                    if margins[1][i] >= 0:
                        row.update(margin=margin, next_class=names[margins[1][i]])
                if own_margins is not None:
                    own = _num(own_margins[i, c] if multi else own_margins[i])
                    rec = split.records[i]
                    text = rec.text(tuple(text_fields)) if text_fields else rec.text()
                    row.update(text=text[:max_chars], own_margin=own, evidence=evidence(own, margin))
                if multi:
                    row["polarity"] = polarity
                yield row


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)
