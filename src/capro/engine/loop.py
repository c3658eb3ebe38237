"""One epoch of training: sampling, mixed precision, non-finite checks, cleaning state, logs.

The sampler gives every global batch to the ranks as contiguous slices (rank r takes rows
[r*b, (r+1)*b) of it), so the all-gathered keys and embeddings arrive in the same order as in a
single process with the same global batch. Batches already trained in an interrupted epoch are
skipped on resume (``skip``).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from capro.data.batched import batch_loader, finish_batch
from capro.engine.bad_images import gather_bad_images
from capro.engine.nonfinite import check_finite
from capro.engine.signals import ignore_stop_signals
from capro.model.capro import StepFlags
from capro.utils.dist import concat_all_gather
from capro.utils.io import atomic_write
from capro.utils.progress import progress


class EpochSampler(Sampler[int]):
    """This rank's sample indices for one epoch: a seeded permutation cut into global batches.

    The permutation and its cut depend on (N, global batch, steps, seed, epoch) only, never on
    ``world``: the ranks' slices of step s together are the same global batch s for any number of
    processes. So a checkpoint taken after step s resumes with ``skip=s`` under another world
    size, as long as the global batch is unchanged (see
    :func:`capro.engine.checkpoint.check_resume_batch`).

    Args:
        n: dataset size N.
        global_batch: samples per step over all ranks (a multiple of ``world``).
        steps: steps per epoch (at most N // global_batch).
    """

    def __init__(self, n: int, *, global_batch: int, steps: int, rank: int = 0, world: int = 1,
                 seed: int = 0, shuffle: bool = True) -> None:
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not a multiple of {world} processes")
        if steps * global_batch > n:
            raise ValueError(f"{steps} steps of {global_batch} exceed {n} samples")
        self.n, self.global_batch, self.steps = n, global_batch, steps
        self.rank, self.world, self.seed, self.shuffle = rank, world, seed, shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        b = self.local_batch
        for step in range(self.skip, self.steps):
            start = step * self.global_batch + self.rank * b
            yield from order[start:start + b].tolist()

    def __len__(self) -> int:
        return (self.steps - self.skip) * self.local_batch


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive NumPy and Python seeds from the worker's torch seed;
    the worker ignores stop signals (:func:`~capro.engine.signals.ignore_stop_signals`)."""
    import random

    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)
    ignore_stop_signals(worker_id)


@dataclass
class CleaningState:
    """The last online-cleaning verdict of every training sample (N samples, C classes)."""

    clean: torch.Tensor       # [N] bool
    relabeled: torch.Tensor   # [N] bool
    target: torch.Tensor      # [N] long (multi-label [N, C] float in {1, 0, -1})

    @classmethod
    def fresh(cls, targets: np.ndarray) -> CleaningState:
        t = torch.as_tensor(np.asarray(targets))
        n = t.shape[0]
        return cls(torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool), t.clone())

    def update(self, index: torch.Tensor, clean: torch.Tensor, relabeled: torch.Tensor,
               target: torch.Tensor) -> None:
        idx = index.cpu()
        self.clean[idx] = clean.cpu()
        self.relabeled[idx] = relabeled.cpu()
        self.target[idx] = target.cpu().to(self.target.dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"clean": self.clean, "relabeled": self.relabeled, "target": self.target}

    def counts(self) -> dict[str, int]:
        """Samples kept with their label, relabelled and removed by the last verdicts."""
        return {"kept": int((self.clean & ~self.relabeled).sum()), "relabeled": int(self.relabeled.sum()),
                "removed": int((~self.clean).sum())}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> CleaningState:
        return cls(state["clean"], state["relabeled"], state["target"])


@dataclass
class EpochStats:
    """Running sums of one epoch (kept in checkpoints so a resumed epoch logs the whole epoch)."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    skipped: int = 0
    samples: int = 0
    """Samples trained on (unreadable images excluded)."""
    clean: int = 0
    relabeled: int = 0
    seconds: float = 0.0
    bad_images: int = 0
    """Samples whose image could not be read (placeholders left out of training)."""
    input_seconds: float = 0.0
    """Time spent waiting for batches and building their views (the input path)."""
    step_seconds: float = 0.0
    """Time spent in the model step (forward, backward, update)."""

    def row(self) -> dict[str, float]:
        out = {f"loss_{k}" if k != "loss" else k: v / max(self.steps, 1) for k, v in self.sums.items()}
        out.update(steps=self.steps, skipped=self.skipped,
                   clean_frac=self.clean / max(self.samples, 1),
                   relabel_frac=self.relabeled / max(self.samples, 1), seconds=self.seconds,
                   bad_images=self.bad_images, input_img_s=_rate(self.samples, self.input_seconds),
                   step_img_s=_rate(self.samples, self.step_seconds))
        return out

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "steps": self.steps, "skipped": self.skipped,
                "samples": self.samples, "clean": self.clean, "relabeled": self.relabeled,
                "seconds": self.seconds, "bad_images": self.bad_images,
                "input_seconds": self.input_seconds, "step_seconds": self.step_seconds}


def _rate(samples: int, seconds: float) -> float:
    """Images per second (0 when nothing was timed)."""
    return round(samples / seconds, 1) if seconds > 0 else 0.0


def _sync(device: torch.device) -> None:
    """Wait for queued device work, so that the input and step timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_loader(dataset, sampler: EpochSampler, *, workers: int, epoch: int, seed: int,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose worker seeds depend only on (seed, epoch), never on the global RNG."""
    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    return batch_loader(dataset, batch_size=sampler.local_batch, sampler=sampler, workers=workers,
                        worker_init_fn=seed_worker, generator=g, pin_memory=pin_memory)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


BadImageHook = Callable[[int, list[tuple[int, str]]], None]
"""``hook(step, [(split index, reason), ...])``: the unreadable images of one global batch."""


def train_epoch(*, model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                flags: StepFlags, device: torch.device, amp: torch.dtype | None = None,
                scaler: torch.amp.GradScaler | None = None, stats: EpochStats | None = None,
                start_step: int = 0, cleaning: CleaningState | None = None,
                on_nonfinite: str = "stop", stage: str = "", epoch: int = 0, where: str = "",
                show_progress: bool = False, warn: Callable[[str], None] | None = None,
                log_every: int = 0, after_step: Callable[[int, EpochStats], None] | None = None,
                on_bad_image: BadImageHook | None = None) -> EpochStats:
    """Train ``model`` (the CAPro module, or DDP around it) over ``loader`` once.

    ``after_step(step_in_epoch_done, stats)`` runs after every optimiser step (checkpointing).
    Without a progress bar, ``log_every > 0`` prints a line to stderr every that many steps.
    A non-finite loss term stops the run naming the stage, epoch, step and term
    (``on_nonfinite="stop"``, :mod:`capro.engine.nonfinite`) or skips the batch on every rank.
    Samples whose image could not be read (batch ``valid`` False, see
    :mod:`capro.data.datasets`) are trained on by no one: the step ignores them, they count in
    ``stats.bad_images`` instead of ``stats.samples``, their online-cleaning verdict becomes
    "removed", and ``on_bad_image`` gets them with their reasons on every rank before the
    step (it may raise to stop the run on every rank at once).
    """
    stats = stats or EpochStats()
    model.train()
    bar = tqdm(total=start_step + len(loader), initial=start_step, desc=where, leave=False,
               disable=not show_progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    step = start_step
    views = getattr(loader, "dataset", None)
    t_in = time.perf_counter()
    for batch in loader:
        errors = batch.pop("error", None)
        batch = finish_batch(views, _to_device(batch, device))
        _sync(device)
        t_step = time.perf_counter()
        stats.input_seconds += t_step - t_in
        n_bad = 0
        if "valid" in batch:
            n_bad = int((~concat_all_gather(batch["valid"])).sum())
            if n_bad and on_bad_image is not None:
                errors = errors or [""] * len(batch["valid"])
                on_bad_image(step, gather_bad_images(batch["index"], batch["valid"], errors))
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(batch, flags)
        loss = out.loss.float()
        if not check_finite({**out.terms, "loss": loss.detach()}, step=step, epoch=epoch,
                            stage=stage, policy=on_nonfinite, warn=warn):
            optimizer.zero_grad(set_to_none=True)
            stats.skipped += 1
        else:
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            stats.sums["loss"] = stats.sums.get("loss", 0.0) + loss.item()
            for k, v in out.terms.items():
                stats.sums[k] = stats.sums.get(k, 0.0) + float(v)
        _sync(device)
        stats.step_seconds += time.perf_counter() - t_step
        index = concat_all_gather(batch["index"])
        clean, relabeled = concat_all_gather(out.clean), concat_all_gather(out.relabeled)
        stats.samples += index.numel() - n_bad
        stats.bad_images += n_bad
        stats.clean += int(clean.sum())
        stats.relabeled += int(relabeled.sum())
        if cleaning is not None and flags.clean:
            cleaning.update(index, clean, relabeled, concat_all_gather(out.target.contiguous()))
        step += 1
        stats.steps += 1
        bar.update(1)
        if show_progress:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        elif log_every > 0 and step % log_every == 0:
            progress(f"{where}: step {step}/{start_step + len(loader)} loss {loss.item():.4f}")
        if after_step is not None:
            stats.seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            after_step(step, stats)
        t_in = time.perf_counter()
    stats.seconds += time.perf_counter() - t0
    bar.close()
    return stats


class EpochLog:
    """``log.csv`` (one row per epoch, rewritten atomically) and TensorBoard scalars when installed."""

    def __init__(self, stage_dir: Path, *, enabled: bool = True) -> None:
        self.path = stage_dir / "log.csv"
        self.enabled = enabled
        self.rows: list[dict] = []
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self.writer = SummaryWriter(log_dir=str(stage_dir / "tb"))

    def restore(self, upto_epoch: int) -> None:
        """Keep the rows of epochs before ``upto_epoch`` (on resume)."""
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8", newline="") as fh:
            self.rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < upto_epoch]

    def append(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        with atomic_write(self.path) as fh:
            fh.write(buf.getvalue())
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(k, v, int(row["epoch"]))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def stderr_isatty() -> bool:
    try:
        return os.isatty(2)
    except OSError:
        return False
