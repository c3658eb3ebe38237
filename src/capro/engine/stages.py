"""The pipeline's stages (docs/method.md): vanilla training, the stage-1 feature dump, anchors
from the text and graph steps, CAPro training, offline cleaning and the fine-tune.

Every training stage goes through :func:`train_stage`: SGD (momentum, weight decay) with the
per-epoch warm-up + cosine rate, the backbone frozen for epochs < ``frozen_encoder_epoch`` (D1),
prototypes initialised from the anchors at the start of ``init_proto_epoch``, a full-state
checkpoint (``RUN/<stage>/last.pt``) at every epoch end and every ``train.checkpoint_every_steps``
steps, and ``RUN/<stage>/checkpoint.pt`` with the final weights. Only rank 0 writes files.

Images that cannot be read any more (``train.on_bad_image``, :mod:`capro.engine.bad_images`):
training stages skip them (recorded in ``RUN/<stage>/bad_images.jsonl``, counted in the
``bad_images`` column of ``log.csv``), the feature dump gives them zero features
(``RUN/features/bad_images.jsonl``) and offline cleaning removes them
(``RUN/stage3a/bad_images.jsonl``).
"""

from __future__ import annotations

import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from capro.cleaning import class_log_prior, clean_batch, clean_batch_multilabel
from capro.config import Config, StageConfig
from capro.data.batched import (
    BatchEvalDataset,
    BatchTrainDataset,
    StoredImages,
    batch_loader,
    finish_batch,
    make_eval_dataset,
    stored_images,
)
from capro.data.datasets import EvalDataset, TrainDataset, label_targets
from capro.data.layout import ClassInfo, Split
from capro.engine.averaging import WeightAverage, ema_decay, ema_horizon
from capro.engine.bad_images import BadImageLog, bad_images
from capro.engine.checkpoint import (
    check_resume_batch,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from capro.engine.distributed import DistInfo
from capro.engine.evaluate import collect
from capro.engine.loop import (
    CleaningState,
    EpochLog,
    EpochSampler,
    EpochStats,
    make_loader,
    train_epoch,
)
from capro.engine.schedule import epoch_lr, param_groups, set_lr
from capro.engine.selection import BestEpoch, EpochScorer
from capro.engine.shards import write_sharded
from capro.engine.signals import (
    GracefulStop,
    Preempted,
    ignore_stop_signals,
    stop_requested_anywhere,
)
from capro.errors import CaproError, DataError
from capro.losses import pos_weights
from capro.model.capro import CAPro, StepFlags
from capro.report.verdicts import verdict_row, write_verdicts
from capro.utils.dist import barrier, gather_objects, shard_range
from capro.utils.io import atomic_write
from capro.utils.progress import epoch_line, progress, stage_line

STAGE_SEED = {"stage1": 1, "stage2": 2, "stage3b": 3}


def _warn(message: str) -> None:
    print(f"capro: warning: {message}", file=sys.stderr, flush=True)


@dataclass
class RunContext:
    """What every stage needs: config, directories, process info, the training split."""

    cfg: Config
    data_root: Path
    run_dir: Path
    dist: DistInfo
    classes: list[ClassInfo]
    train: Split
    multi_label: bool
    amp: torch.dtype | None = None
    resume: bool = False
    progress: bool = False
    log_steps: bool = False
    """Print a line every ``train.log_every`` steps when there is no progress bar."""
    _train_images: StoredImages | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.cfg.data.channels is None:  # a config not resolved by a run: follow the images, in place
            from capro.data.channels import image_channels

            self.cfg.data.channels = image_channels(self.data_root, self.train.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def web_targets(self) -> np.ndarray:
        """[N] int64 web labels (multi-label [N, C] float32 multi-hot)."""
        return label_targets(self.train.records, self.num_classes, multi_label=self.multi_label)

    def cleaning_log_prior(self, web: np.ndarray | None = None) -> torch.Tensor | None:
        """[C] ``method.logit_adjust`` times the log of the web labels' class shares (``web``: the
        caller's :meth:`web_targets`, read here when not given), which single-label cleaning takes
        out of the classifier's scores; None when off or multi-label."""
        tau = self.cfg.method.logit_adjust
        if self.multi_label or not tau:
            return None
        web = self.web_targets() if web is None else web
        return class_log_prior(torch.from_numpy(web), self.num_classes, tau=tau).to(self.dist.device)

    def stored_images(self, records: list | None = None) -> StoredImages:
        """The decoded images of the training split (or of ``records``), built once per run."""
        if records is None:
            if self._train_images is None:
                self._train_images = stored_images(self.cfg, self.data_root, self.train.records,
                                                   cache_dir=self.run_dir / "cache")
            return self._train_images
        return stored_images(self.cfg, self.data_root, records, cache_dir=self.run_dir / "cache")

    def train_dataset(self, **kwargs) -> TrainDataset | BatchTrainDataset:
        """Training views; unreadable images always come as placeholders, so that every rank
        applies ``train.on_bad_image`` to the same samples (:func:`bad_image_log`).

        ``records`` (a subset) comes with ``indices``, their positions in the training split."""
        cfg = self.cfg
        records = kwargs.pop("records", self.train.records)
        if records is not self.train.records and kwargs.get("indices") is None:
            raise ValueError("a subset of the training split needs its indices in the split")
        if cfg.data.augment == "batch":
            images = self.stored_images()
            if kwargs.get("indices") is not None:
                images = images.subset(np.asarray(kwargs["indices"]))
            return BatchTrainDataset(images, self.num_classes, size=cfg.data.image_size,
                                     multi_label=self.multi_label, weak_crop=cfg.data.weak_crop,
                                     strong_crop=cfg.data.strong_crop, seed=cfg.seed,
                                     on_bad_image="skip", **kwargs)
        return TrainDataset(self.data_root, records, self.num_classes,
                            size=cfg.data.image_size, channels=cfg.data.channels,
                            multi_label=self.multi_label, weak_crop=cfg.data.weak_crop,
                            strong_crop=cfg.data.strong_crop, seed=cfg.seed, on_bad_image="skip",
                            **kwargs)

    def eval_dataset(self, records=None) -> EvalDataset | BatchEvalDataset:
        """Test views (one process reads them); ``train.on_bad_image=stop`` raises in the dataset."""
        if self.cfg.data.augment == "batch" and records is None:
            return BatchEvalDataset(self.stored_images(), self.num_classes, size=self.cfg.data.image_size,
                                    multi_label=self.multi_label,
                                    on_bad_image=self.cfg.train.on_bad_image)
        return make_eval_dataset(self.cfg, self.data_root, self.train.records if records is None else records,
                                 self.num_classes, multi_label=self.multi_label,
                                 cache_dir=self.run_dir / "cache")

    def bad_image_log(self, name: str) -> BadImageLog:
        """The record of unreadable training images for stage or pass ``name``."""
        return BadImageLog(self.run_dir / name, stage=name, root=self.data_root, records=self.train.records,
                           policy=self.cfg.train.on_bad_image, enabled=self.is_main)


def model_parts(cfg: Config) -> dict[str, bool]:
    """Which optional parts of :class:`CAPro` a run of ``cfg`` uses: ``momentum_keys`` (the key
    encoder and queue: an instance loss, collective bootstrapping or a stage 2) and
    ``reconstructor`` (a reconstruction loss). A plain cross-entropy run needs neither."""
    trained = [st for st in (cfg.stage1, cfg.stage2, cfg.stage3) if st.epochs > 0]
    keys = (cfg.stage2.epochs > 0 or cfg.method.bootstrap == "collective"
            or any(st.w_inst > 0 for st in trained))
    return {"momentum_keys": keys, "reconstructor": any(st.w_recn > 0 for st in trained)}


def build_model(cfg: Config, num_classes: int, *, multi_label: bool) -> CAPro:
    m = cfg.model
    return CAPro(num_classes=num_classes, backbone=m.backbone, in_chans=cfg.data.channels or 3,
                 low_dim=m.low_dim, queue_size=m.queue, moco_m=m.moco_m, proto_m=m.proto_m,
                 temperature=m.temperature, multi_label=multi_label, pretrained=m.pretrained,
                 key_head=m.key_head, **model_parts(cfg))


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model``; entries whose shape changed (e.g. the queue) keep their init."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CaproError(f"checkpoint lacks {len(missing)} model entries (first: {missing[0]}); it was "
                         "written by another model config — rerun the earlier stage")
    model.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape},
                          strict=False)


def stage_flags(name: str, st: StageConfig, cfg: Config, epoch: int, *, prototypes_ready: bool,
                log_prior: torch.Tensor | None = None) -> StepFlags:
    """What a step of ``name`` does in ``epoch`` (strict ">" gates: cleaning starts the epoch after start_clean_epoch)."""
    m = cfg.method
    common = dict(bootstrap=m.bootstrap, alpha=m.alpha, beta=m.beta, pseudo_th=m.pseudo_th,
                  keep_th=m.keep_th, keep_top=m.keep_top, log_prior=log_prior,
                  protect_anchors=m.protect_anchors, w_inst=st.w_inst, w_recn=st.w_recn,
                  w_proto=st.w_proto, mixup=st.mixup, mixup_alpha=st.mixup_alpha)
    clean = st.start_clean_epoch is not None and epoch > st.start_clean_epoch
    if name == "stage2" and m.prototypes == "all":
        return StepFlags(use_prototypes=True, proto_loss=True, update_prototypes=True, clean=clean,
                         prototypes_mode="all", **common)
    after_init = prototypes_ready and st.init_proto_epoch is not None and epoch > st.init_proto_epoch
    return StepFlags(use_prototypes=prototypes_ready, proto_loss=after_init,
                     update_prototypes=after_init, clean=clean, **common)


def _wrap(model: CAPro, info: DistInfo) -> nn.Module:
    """DDP around ``model`` for gradient sync (rebuilt whenever the set of trained params changes)."""
    if info.world_size == 1:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def anchor_mask(domain: np.ndarray) -> np.ndarray:
    """[N] bool: the sample is an anchor (multi-label: of any class, positive or negative)."""
    return (domain != 0).any(axis=1) if domain.ndim == 2 else domain > 0


@torch.no_grad()
def initialise_prototypes(ctx: RunContext, model: CAPro, domain: np.ndarray, epoch: int,
                          bad: BadImageLog | None = None) -> int:
    """Prototypes from the momentum-encoder embeddings of every anchor (weak view, eval mode).

    Every rank embeds its slice of the anchors (cut at batch boundaries) and the embeddings are
    gathered in order, so all ranks set identical prototypes, equal to one process's. An anchor
    whose image cannot be read is left out (and given to ``bad``). Returns the number of anchors
    used.
    """
    idx = np.flatnonzero(anchor_mask(domain))
    if idx.size == 0:
        warnings.warn("no anchors: prototypes were not initialised", stacklevel=2)
        return 0
    targets = ctx.web_targets()[idx]
    ds = ctx.train_dataset(records=[ctx.train.records[i] for i in idx], indices=idx, targets=targets)
    ds.set_epoch(epoch)
    batch_size = ctx.cfg.train.eval_batch_size
    loader = batch_loader(ds, batch_size=batch_size, sampler=shard_range(len(ds), align=batch_size),
                          workers=ctx.cfg.data.workers, worker_init_fn=ignore_stop_signals)
    was_training = model.training
    model.eval()
    z, valid, errors = [], [], []
    for b in loader:
        b = finish_batch(ds, b, strong=False)
        z.append(model.anchor_embeddings(b["img"].to(ctx.dist.device), shuffle=False).cpu())
        valid.append(b["valid"])
        errors += b["error"]
    model.train(was_training)
    parts = [part for part in gather_objects((z, valid, errors)) if part[0]]
    z = [t for part in parts for t in part[0]]
    ok = torch.cat([t for part in parts for t in part[1]])
    errors = [e for part in parts for e in part[2]]
    if bad is not None and not bool(ok.all()):
        bad.add([(int(idx[j]), errors[j] or "unreadable") for j in np.flatnonzero(~ok.numpy())],
                during="prototypes", epoch=epoch, step=0)
    if not bool(ok.any()):
        warnings.warn("no anchor image could be read: prototypes were not initialised", stacklevel=2)
        return 0
    ok = ok.to(ctx.dist.device)
    device = ctx.dist.device
    model.initialise_prototypes(torch.cat(z).to(device)[ok], torch.as_tensor(targets).to(device)[ok])
    return int(ok.sum())


def train_stage(ctx: RunContext, name: str, st: StageConfig, *, model: CAPro, dataset: TrainDataset,
                fingerprint: str, domain: np.ndarray | None = None,
                scorer: EpochScorer | None = None,
                stop_after: int | None = None) -> tuple[CleaningState, BestEpoch]:
    """Train ``model`` in place for stage ``name``; return the online-cleaning state and the best
    epoch by validation.

    ``stop_after``: pause once epoch ``stop_after - 1`` is done, as an interruption would (the
    stage's ``last.pt`` holds everything a resume needs, no ``checkpoint.pt`` is written), with
    the weights the stage would score (its average, D22) left in ``model``; a later call with
    ``ctx.resume`` goes on from there exactly as the uninterrupted stage would (D21's probe).

    Resumes from ``RUN/<name>/last.pt`` when ``ctx.resume`` and the checkpoint's fingerprint matches.
    ``domain`` (anchors) is needed when the stage initialises prototypes. With ``scorer`` (on every rank),
    every due epoch is scored into ``log.csv`` and the best one is kept in ``RUN/<name>/best.pt``;
    with ``train.keep=best`` the model and cleaning state end as at that epoch
    (:mod:`capro.engine.selection`).
    """
    cfg, info = ctx.cfg, ctx.dist
    stage_dir = ctx.run_dir / name
    device = info.device
    n = len(dataset)
    global_batch = min(st.batch_size, n)
    global_batch -= global_batch % info.world_size
    if global_batch == 0:
        raise CaproError(f"{name}: {n} training samples are too few for {info.world_size} processes")
    steps = n // global_batch
    if cfg.train.max_steps_per_epoch > 0:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    sampler = EpochSampler(n, global_batch=global_batch, steps=steps, rank=info.rank,
                           world=info.world_size, seed=cfg.seed + STAGE_SEED[name])
    named = [(k, p) for k, p in model.named_parameters() if not k.startswith("encoder_k.")]
    optimizer = torch.optim.SGD(param_groups(named, backbone_scale=st.backbone_lr), lr=st.lr,
                                momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay)
    scaler = torch.amp.GradScaler(device.type) if ctx.amp == torch.float16 else None
    web = ctx.web_targets()
    if ctx.multi_label:
        model.set_class_weights(pos_weights(web.sum(axis=0), len(web)))
    cleaning = CleaningState.fresh(web)
    log_prior = ctx.cleaning_log_prior(web)
    stats, start_epoch, start_step, global_step, elapsed = EpochStats(), 0, 0, 0, 0.0
    log = EpochLog(stage_dir, enabled=ctx.is_main)
    bad = ctx.bad_image_log(name)
    last, best_path = stage_dir / "last.pt", stage_dir / "best.pt"
    window = scorer.window_for(st.epochs) if scorer is not None else 1
    best = BestEpoch(window=window)
    ck: dict | None = None  # the checkpoint resumed from
    if ctx.resume and last.is_file():
        ck = load_checkpoint(last)
        if ck.get("fingerprint") != fingerprint:
            raise CaproError(f"{last}: written with another config or dataset; rerun without --resume "
                             "to restart this stage")
        check_resume_batch(ck, last, global_batch=global_batch, world_size=info.world_size)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_epoch, start_step, global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        elapsed = float(ck.get("elapsed", 0.0))
        cleaning = CleaningState.from_state(ck["cleaning"])
        stats = EpochStats(**ck["stats"])
        best = BestEpoch.from_state(ck.get("best"), window)
        set_rng_state(ck["rng"])
        log.restore(start_epoch)
        bad.start(resume_at=(start_epoch, start_step))
    else:
        seed_everything(cfg.seed + STAGE_SEED[name])
        bad.start()
        if ctx.is_main:
            best_path.unlink(missing_ok=True)
    model.to(device)
    horizon = ema_horizon(st.ema_epochs, st.epochs, st.ema_max_share)
    average = WeightAverage(model, ema_decay(horizon, steps)) if horizon > 0 else None
    if average is not None and ck is not None:
        average.load_state_dict(ck["average"])
    if average is not None and ctx.is_main and start_epoch < st.epochs:
        why = f"{name}.ema_epochs, D22" if horizon == st.ema_epochs else (
            f"{name}.ema_epochs={st.ema_epochs:g}, capped at {name}.ema_max_share={st.ema_max_share:g} "
            f"of its {st.epochs} epochs; D22, D24")
        progress(f"{name}: scores and hands on its weights averaged over about {horizon:.3g} epochs ({why})")
    t_start = time.perf_counter()

    def save(epoch: int, step: int, epoch_stats: EpochStats) -> None:
        if ctx.is_main:
            save_checkpoint(last, {
                "fingerprint": fingerprint, "stage": name, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                "epoch": epoch, "step_in_epoch": step, "global_step": global_step,
                "lr": optimizer.param_groups[0]["lr"], "rng": rng_state(),
                "cleaning": cleaning.state_dict(), "stats": epoch_stats.state_dict(),
                "elapsed": elapsed + time.perf_counter() - t_start,
                "global_batch": global_batch, "world_size": info.world_size,
                "best": best.state_dict(), "average": average.state_dict() if average else None,
            })

    def score(epoch: int) -> dict[str, float]:
        """The epoch's scores (every rank scores its slice); rank 0 writes a new best to ``best.pt``."""
        if scorer is None or not scorer.due(epoch, st.epochs):
            return {}
        with average.applied(model) if average else nullcontext(model) as scored:
            scores = scorer(scored)
            raw = scores.get(scorer.column) if scorer.column else None
            value = best.judge(raw)
            if window > 1 and value is not None:
                scores[f"{scorer.column}_mean{window}"] = value
            if best.improves(value):
                best.update(epoch, value)
                if ctx.is_main:
                    save_checkpoint(best_path, {"fingerprint": fingerprint, "stage": name, "epoch": epoch,
                                                "score": value, "raw_score": raw, "metric": scorer.column,
                                                "window": window,
                                                "model": scored.state_dict(), "cleaning": cleaning.state_dict()})
        return scores

    frozen_now: bool | None = None
    wrapped: nn.Module = model
    totals = np.zeros(3)  # input seconds, step seconds, samples (this process's epochs)
    end = st.epochs if stop_after is None else min(stop_after, st.epochs)
    with GracefulStop() as stop:
        for epoch in range(start_epoch, end):
            frozen = epoch < st.frozen_encoder_epoch
            if frozen != frozen_now:
                model.freeze_backbone(frozen)
                wrapped, frozen_now = _wrap(model, info), frozen
            lr = epoch_lr(epoch, base_lr=st.lr, warmup=st.warmup_epochs, epochs=st.epochs)
            set_lr(optimizer, lr)
            if (start_step == 0 and domain is not None and st.init_proto_epoch == epoch
                    and cfg.method.prototypes == "anchors"):
                initialise_prototypes(ctx, model, domain, epoch, bad)
            flags = stage_flags(name, st, cfg, epoch, prototypes_ready=bool(model.prototypes_ready),
                                log_prior=log_prior)
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch, skip=start_step)
            loader = make_loader(dataset, sampler, workers=cfg.data.workers, epoch=epoch,
                                 seed=cfg.seed + STAGE_SEED[name], pin_memory=device.type == "cuda")

            def after_step(step_done: int, epoch_stats: EpochStats, epoch: int = epoch) -> None:
                nonlocal global_step
                global_step += 1
                if average is not None:
                    average.update(model)
                every = cfg.train.checkpoint_every_steps
                if stop_requested_anywhere(stop.should_stop, device):
                    save(epoch, step_done, epoch_stats)
                    by = stop.signal_name or "a signal to another process"
                    raise Preempted(f"{name}: stopped by {by} at epoch {epoch} step "
                                    f"{step_done}; checkpoint written to {last}; rerun with --resume")
                if every > 0 and global_step % every == 0 and step_done < steps:
                    save(epoch, step_done, epoch_stats)

            stats = train_epoch(model=wrapped, loader=loader, optimizer=optimizer, flags=flags,
                                device=device, amp=ctx.amp, scaler=scaler, stats=stats,
                                start_step=start_step, cleaning=cleaning,
                                on_nonfinite=cfg.train.on_nonfinite, stage=name, epoch=epoch,
                                warn=_warn if ctx.is_main else None,
                                where=f"{name} epoch {epoch + 1}/{st.epochs}",
                                show_progress=ctx.progress, after_step=after_step,
                                log_every=cfg.train.log_every if ctx.is_main and ctx.log_steps else 0,
                                on_bad_image=lambda step, items, epoch=epoch: bad.add(
                                    items, during="training", epoch=epoch, step=step))
            row = {"epoch": epoch, "lr": lr, "frozen": int(frozen), **stats.row(), **score(epoch)}
            log.append(row)
            totals += [stats.input_seconds, stats.step_seconds, stats.samples]
            if ctx.is_main and not ctx.progress:
                progress(epoch_line(name, epoch, st.epochs, row))
            start_step, stats = 0, EpochStats()
            save(epoch + 1, 0, stats)
            barrier()
    log.close()
    if ctx.is_main and end > start_epoch:
        progress(stage_line(name, end - start_epoch, time.perf_counter() - t_start, *totals))
    model.freeze_backbone(False)
    if average is not None:
        average.copy_to(model)
    if end < st.epochs:
        barrier()
        return cleaning, best
    kept_epoch = st.epochs - 1
    if cfg.train.keep == "best" and best_path.is_file():  # every rank reads the same file
        ck = load_checkpoint(best_path)
        if ck.get("fingerprint") == fingerprint:
            model.load_state_dict(ck["model"])
            cleaning = CleaningState.from_state(ck["cleaning"])
            kept_epoch = int(ck["epoch"])
            best = BestEpoch(kept_epoch, float(ck["score"]), window)
    if ctx.is_main:
        save_checkpoint(stage_dir / "checkpoint.pt", {
            "fingerprint": fingerprint, "stage": name, "model": model.state_dict(),
            "cleaning": cleaning.state_dict(), "epochs": st.epochs, "kept_epoch": kept_epoch,
            "best": best.state_dict(), "elapsed": elapsed + time.perf_counter() - t_start,
        })
    barrier()
    return cleaning, best


def dump_features(ctx: RunContext, model: CAPro, out: Path, *, tag: str) -> np.ndarray:
    """Write the [N, F] float32 ``encoder_q`` features of the training split (test transform, eval
    mode) to ``out`` (``.npy``); return them memory-mapped.

    Every rank must call: each extracts its slice into a file under ``tag`` (resumed slice by slice,
    :mod:`capro.engine.shards`) and rank 0 assembles them. An image that cannot be read gets a
    zero row (no similarity to any sample in the kNN graph) and a row in
    ``RUN/features/bad_images.jsonl``.
    """
    batch = ctx.cfg.train.eval_batch_size
    dataset = ctx.eval_dataset()

    def extract(rows: range) -> tuple[np.ndarray, list[tuple[int, str]]]:
        bad: list[tuple[int, str]] = []
        feats, _ = collect(model, dataset, device=ctx.dist.device, batch_size=batch, workers=ctx.cfg.data.workers,
                           amp=ctx.amp, fn="features", show_progress=ctx.progress, desc="features",
                           skipped=bad, rows=rows)
        if not bad:
            return feats, bad
        full = np.zeros((len(rows), feats.shape[1]), np.float32)
        full[np.setdiff1d(np.arange(len(rows)), [i - rows.start for i, _ in bad])] = feats
        return full, bad

    skipped = write_sharded(out, len(ctx.train), align=batch, tag=tag, compute=extract)
    log = ctx.bad_image_log("features")
    log.start()
    log.add(skipped, during="features")
    if len(skipped) == len(ctx.train):
        raise DataError(f"{ctx.data_root}: none of the {len(ctx.train)} training images could be read "
                        f"(see {log.path}); restore the files")
    return np.load(out, mmap_mode="r")


@dataclass
class OfflineCleaning:
    """Stage 3a verdicts over the N training samples."""

    target: np.ndarray      # [N] int64 final label (-1 removed); multi-label [N, C] float {1, 0, -1}
    clean: np.ndarray       # [N] bool, kept or relabelled
    relabeled: np.ndarray   # [N] bool

    def counts(self) -> dict[str, int]:
        return {"kept": int((self.clean & ~self.relabeled).sum()),
                "relabeled": int(self.relabeled.sum()), "removed": int((~self.clean).sum())}


@torch.no_grad()
def _cleaning_scores(ctx: RunContext, model: CAPro) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor],
                                                             list[tuple[int, str]]] | None:
    """Stage 3a's pass over the training split: scores s [N, C], readable [N] bool, the nearest
    prototype per batch (single-label) and the unreadable (position, reason) pairs. Every rank
    scores its slice (cut at batch boundaries); rank 0 gets the whole result, the other ranks
    None (the [N, C] scores are not copied to every rank)."""
    cfg, device = ctx.cfg, ctx.dist.device
    model.eval()
    loader = batch_loader(ctx.eval_dataset(), batch_size=cfg.train.eval_batch_size,
                          sampler=shard_range(len(ctx.train), align=cfg.train.eval_batch_size),
                          workers=cfg.data.workers, worker_init_fn=ignore_stop_signals)
    scores, nearest, valid, skipped = [], [], [], []
    protos = model.prototypes
    log_prior = ctx.cleaning_log_prior()
    for batch in loader:
        out = model.analyse(batch["img"].to(device), alpha=cfg.method.alpha, log_prior=log_prior)
        scores.append(out["scores"].float().cpu())
        valid.append(batch["valid"])
        skipped += bad_images(batch["index"], batch["valid"], batch["error"])
        if not ctx.multi_label:
            nearest.append((out["embedding"] @ protos.t()).argmax(dim=1).cpu())
    model.train()
    parts = [part for part in gather_objects((scores, valid, nearest, skipped), to_main=True) if part[0]]
    if not ctx.is_main:
        return None
    return (torch.cat([t for part in parts for t in part[0]]), torch.cat([t for part in parts for t in part[1]]),
            [t for part in parts for t in part[2]], [item for part in parts for item in part[3]])


@torch.no_grad()
def offline_clean(ctx: RunContext, model: CAPro, domain: np.ndarray | None,
                  text_distance: np.ndarray | None) -> OfflineCleaning | None:
    """Stage 3a: score every training image with the stage-2 model and apply the
    keep/relabel rules once; write ``RUN/stage3a/samples.jsonl``.

    In a distributed run every rank calls and scores its slice of the images; rank 0 applies
    the rules, writes the files and returns the verdicts (the other ranks return None).

    Unlike the released code (training transform, random), this uses the deterministic test
    transform in eval mode (D7), so the verdicts are reproducible.
    """
    cfg = ctx.cfg
    scored = _cleaning_scores(ctx, model)
    if scored is None:  # not rank 0
        return None
    s, ok, nearest, skipped = scored
    bad = ctx.bad_image_log("stage3a")
    bad.start()
    bad.add(skipped, during="cleaning")
    # an unreadable image carries no evidence: uniform scores (0.5 per class if multi-label), removed
    s[~ok] = 0.5 if ctx.multi_label else 1.0 / ctx.num_classes
    with atomic_write(ctx.run_dir / "stage3a" / "probs.npy", "wb") as fh:
        np.save(fh, s.numpy().astype(np.float32))  # [N, C] scores s_i: cleanlab's pred_probs
    web = torch.as_tensor(ctx.web_targets())
    tau = cfg.clean.pseudo_th if cfg.clean.pseudo_th is not None else cfg.method.pseudo_th
    dom = torch.as_tensor(domain if domain is not None else np.zeros(web.shape, np.int8))
    names = [c.name for c in ctx.classes]
    rows = []
    if ctx.multi_label:
        res = clean_batch_multilabel(s, web.float(), pseudo_th=tau, num_classes=ctx.num_classes,
                                     anchor=dom if cfg.clean.protect_anchors else None)
        relabeled = res.flipped.any(dim=1) & ok
        target = torch.where(ok[:, None], res.target, torch.full_like(res.target, -1))
        verdict = OfflineCleaning(target.numpy(), (res.clean & ok).numpy(), relabeled.numpy())
        for i, rec in enumerate(ctx.train.records):
            web_names = [names[c] for c in rec.labels]
            final = [names[c] for c in np.flatnonzero(verdict.target[i] == 1)]
            pos = s[i]
            action = "removed" if not verdict.clean[i] else "relabeled" if verdict.relabeled[i] else "kept"
            final_idx = np.flatnonzero(verdict.target[i] == 1)
            rows.append(verdict_row(
                sample_id=rec.id, web_label=web_names, action=action, label=final,
                suggested_label=[names[c] for c in np.flatnonzero(pos.numpy() >= 0.5)],
                anchor=bool((dom[i] != 0).any()),
                score=float(pos[final_idx].mean()) if final_idx.size else float(pos.max()),
                label_quality=float(pos[list(rec.labels)].min()) if rec.labels else 1.0 - float(pos.max()),
                text_distance=None))
    else:
        res = clean_batch(s, web, pseudo_th=tau, anchor=dom.bool() if cfg.clean.protect_anchors else None,
                          keep_th=cfg.method.keep_th, keep_top=cfg.method.keep_top)
        clean = res.clean & ok
        target = torch.where(clean, res.target, torch.full_like(res.target, -1))
        verdict = OfflineCleaning(target.numpy(), clean.numpy(), (res.relabeled & ok).numpy())
        suggested = s.argmax(dim=1)
        near = torch.cat(nearest) if nearest else suggested
        td = text_distance
        has_protos = bool(model.prototypes_ready) or cfg.method.prototypes == "all"
        for i, rec in enumerate(ctx.train.records):
            action = "removed" if not verdict.clean[i] else "relabeled" if verdict.relabeled[i] else "kept"
            shown = int(suggested[i]) if action == "removed" else int(res.target[i])
            rows.append(verdict_row(
                sample_id=rec.id, web_label=names[rec.label], action=action,
                label=names[int(res.target[i])] if action != "removed" else None,
                suggested_label=names[int(suggested[i])], anchor=bool(dom[i] > 0),
                score=float(s[i, shown]), label_quality=float(s[i, rec.label]),
                text_distance=None if td is None else float(td[i]),
                nearest_prototype=names[int(near[i])] if has_protos else None))
    write_verdicts(ctx.run_dir / "stage3a" / "samples.jsonl", rows)
    return verdict
