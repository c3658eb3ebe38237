"""Images that could not be read at training or evaluation time: the record and the policy.

An image that passed validation can still break before it is read (rewritten, truncated or
removed on disk). The datasets then yield a placeholder with ``valid`` False (see
:mod:`capro.data.datasets`) and the engine leaves it out of training. :class:`BadImageLog`
applies ``train.on_bad_image`` to such samples: ``skip`` records every occurrence in
``RUN/<stage>/bad_images.jsonl`` with a one-line warning, ``stop`` raises :class:`DataError`.
Under DDP every rank calls it with the same all-gathered samples, so all ranks skip together or
stop together; only rank 0 writes and prints.

Rows: ``{"id", "image", "stage", "during", "epoch", "step", "reason"}``, one per occurrence.
``during`` is ``training`` (a training step: ``epoch``, ``step`` within it), ``prototypes`` (the
anchor embeddings that initialise the prototypes at the start of ``epoch``; ``step`` 0),
``features`` or ``cleaning`` (the single passes over the training split of the ``features`` and
``stage3a`` steps; ``epoch`` and ``step`` null).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from capro.data.layout import Record, escape_text, show_id
from capro.errors import DataError
from capro.utils.dist import is_dist, world_size
from capro.utils.io import read_jsonl, write_jsonl

RECORD_NAME = "bad_images.jsonl"
MAX_WARNINGS = 10
"""Warnings printed per stage; later occurrences are only recorded."""


def bad_images(index: torch.Tensor, valid: torch.Tensor, errors: Sequence[str]) -> list[tuple[int, str]]:
    """(index, reason) of the invalid samples of one batch: index [B] long, valid [B] bool,
    errors B strings (the batch's ``index``, ``valid`` and ``error``)."""
    return [(int(i), str(e)) for i, ok, e in zip(index.tolist(), valid.tolist(), errors) if not ok]


def gather_bad_images(index: torch.Tensor, valid: torch.Tensor, errors: Sequence[str]
                      ) -> list[tuple[int, str]]:
    """:func:`bad_images` of this rank's batch, gathered from every rank in rank order.

    A collective under DDP: call it on every rank or on none (decide from an all-gathered mask).
    """
    mine = bad_images(index, valid, errors)
    if not is_dist():
        return mine
    parts: list[list[tuple[int, str]] | None] = [None] * world_size()
    dist.all_gather_object(parts, mine)
    return [item for part in parts for item in part or []]


class BadImageLog:
    """The unreadable images met by one stage (or pass) of a run.

    Args:
        stage_dir: ``RUN/<stage>``; the record is ``stage_dir/bad_images.jsonl``.
        stage: the stage name written in each row.
        root: the dataset directory (image paths in messages are ``root/image``).
        records: the split's records; samples are given by their index in it.
        policy: ``skip`` or ``stop``.
        enabled: write and print (rank 0 only).
    """

    def __init__(self, stage_dir: Path, *, stage: str, root: Path, records: Sequence[Record],
                 policy: str = "skip", enabled: bool = True) -> None:
        self.path = Path(stage_dir) / RECORD_NAME
        self.stage, self.root, self.records = stage, Path(root), records
        self.policy, self.enabled = policy, enabled
        self.rows: list[dict] = []
        self.warned = 0

    def start(self, *, resume_at: tuple[int, int] | None = None) -> None:
        """Begin the stage: drop an earlier record, or on resume keep only its rows of the steps
        before ``resume_at`` = (epoch, step) (the later ones will be met again)."""
        if not self.enabled:
            return
        old = read_jsonl(self.path) if resume_at is not None and self.path.is_file() else []
        self.rows = [r for r in old if r["epoch"] is not None and (r["epoch"], r["step"]) < resume_at]
        if self.rows:
            write_jsonl(self.path, self.rows)
        else:
            self.path.unlink(missing_ok=True)

    def add(self, items: Sequence[tuple[int, str]], *, during: str, epoch: int | None = None,
            step: int | None = None) -> None:
        """Apply the policy to ``items`` = [(index into ``records``, reason)]: record and warn
        (``skip``), or raise :class:`DataError` naming the first file (``stop``)."""
        if not items:
            return
        if self.policy == "stop":
            index, reason = items[0]
            rec = self.records[index]
            more = f" and {len(items) - 1} more" if len(items) > 1 else ""
            raise DataError(f"{escape_text(str(self.root / rec.image))}: cannot read image of "
                            f"id={show_id(rec.id)} ({reason}){more}; "
                            "fix or remove the row, or set train.on_bad_image=skip to skip it")
        if not self.enabled:
            return
        rows = [{"id": self.records[i].id, "image": self.records[i].image, "stage": self.stage,
                 "during": during, "epoch": epoch, "step": step, "reason": reason} for i, reason in items]
        self.rows += rows
        write_jsonl(self.path, self.rows)
        where = f"{self.stage} ({during})" if epoch is None else f"{self.stage} epoch {epoch} step {step} ({during})"
        for row in rows:
            if self.warned < MAX_WARNINGS:
                image = escape_text(str(self.root / row["image"]))
                print(f"capro: warning: {where}: skipped unreadable image {image} "
                      f"(id={show_id(row['id'])}: {row['reason']}); recorded in {self.path}",
                      file=sys.stderr, flush=True)
            elif self.warned == MAX_WARNINGS:
                print(f"capro: warning: {self.stage}: more unreadable images; they are only recorded "
                      f"in {self.path}", file=sys.stderr, flush=True)
            self.warned += 1
