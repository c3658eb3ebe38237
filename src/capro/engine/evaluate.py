"""Deterministic evaluation of a model on a split: top-1/top-5, the multi-label metrics, or the
open-set metrics on ``openset_test.jsonl``.

Images go through the test transform (D7) in eval mode; no randomness. N samples, C classes.
An image that cannot be read (``train.on_bad_image=skip``) is left out: the metrics' ``n`` counts
the images scored, ``skipped`` (present when > 0) the others, and a warning names them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from capro.data.batched import batch_loader
from capro.data.datasets import EvalDataset
from capro.data.layout import ClassInfo, Record, escape_text
from capro.engine.signals import ignore_stop_signals
from capro.errors import DataError
from capro.eval.metrics import topk_accuracy
from capro.eval.multilabel import multilabel_metrics
from capro.eval.openset import openset_metrics
from capro.utils.dist import gather_objects, is_main, shard_range, world_size


@torch.no_grad()
def collect(model: nn.Module, dataset: Dataset, *, device: torch.device, batch_size: int = 256,
            workers: int = 0, amp: torch.dtype | None = None, fn: str = "logits",
            show_progress: bool = False, desc: str = "eval",
            skipped: list[tuple[int, str]] | None = None, rows: range | None = None,
            sharded: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over ``dataset`` in eval mode; return (outputs [N, K] float32, targets).

    ``fn``: ``logits`` (forward, [N, C]) or ``features`` (``extract_features``, [N, F]).
    Samples whose image could not be read (batch ``valid`` False) are left out of both arrays;
    their (dataset position, reason) pairs are appended to ``skipped`` when given.
    ``rows``: only these positions of ``dataset`` (all when None).
    ``sharded``: every rank must call; each scores its slice of ``dataset``
    (:func:`~capro.utils.dist.shard_range`, cut at batch boundaries) and every rank gets the
    whole result, equal to one process's.
    """
    if sharded and world_size() > 1:
        mine: list[tuple[int, str]] = []
        part = collect(model, dataset, device=device, batch_size=batch_size, workers=workers, amp=amp,
                       fn=fn, show_progress=show_progress and is_main(), desc=desc, skipped=mine,
                       rows=shard_range(len(dataset), align=batch_size))
        parts = gather_objects((*part, mine))
        if skipped is not None:
            skipped += [item for _, _, bad in parts for item in bad]
        filled = [(o, t) for o, t, _ in parts if len(t)]
        if not filled:
            return parts[0][0], parts[0][1]
        return np.concatenate([o for o, _ in filled]), np.concatenate([t for _, t in filled])
    was_training = model.training
    model.eval()
    loader = batch_loader(dataset, batch_size=batch_size, sampler=rows, workers=workers,
                          worker_init_fn=ignore_stop_signals)
    outs, targets = [], []
    call = model.extract_features if fn == "features" else model
    for batch in tqdm(loader, desc=desc, leave=False, disable=not show_progress, dynamic_ncols=True):
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = call(batch["img"].to(device, non_blocking=True))
        out, target = out.float().cpu(), batch["target"]
        valid = batch.get("valid")
        if valid is not None and not bool(valid.all()):
            if skipped is not None:
                skipped += [(int(i), str(e)) for i, ok, e in
                            zip(batch["index"].tolist(), valid.tolist(), batch["error"]) if not ok]
            out, target = out[valid], target[valid]
        outs.append(out)
        targets.append(target)
    model.train(was_training)
    if not outs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return torch.cat(outs).numpy(), torch.cat(targets).numpy()


def metrics_from_logits(logits: np.ndarray, targets: np.ndarray, *, multi_label: bool) -> dict:
    """{"top1", "top5", "n"} (fractions in [0, 1]); multi-label: C-F1, O-F1, mAPs (in %) and "n"."""
    n = int(len(targets))
    if multi_label:
        scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        out = multilabel_metrics(scores, targets)
        return {**{k: float(v) for k, v in out.items()}, "n": n}
    return {**topk_accuracy(logits, targets, ks=(1, 5)), "n": n}


def _report_skipped(dataset: Dataset, skipped: list[tuple[int, str]], desc: str) -> dict:
    """{"skipped": k} and a one-line warning naming the first file, or {} when none was skipped."""
    if not skipped:
        return {}
    records, root = getattr(dataset, "records", None), getattr(dataset, "root", None)
    pos, reason = skipped[0]
    first = escape_text(str(Path(root) / records[pos].image)) if records is not None else f"#{pos}"
    more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
    if len(skipped) == len(dataset):
        raise DataError(f"{first}: cannot read image ({reason}){more}: no image of {desc!r} could "
                        "be scored; restore the files")
    if is_main():
        print(f"capro: warning: {desc}: skipped {len(skipped)} unreadable images, scored "
              f"{len(dataset) - len(skipped)} ({first}: {reason}{more})", file=sys.stderr, flush=True)
    return {"skipped": len(skipped)}


def evaluate_model(model: nn.Module, dataset: Dataset, *, multi_label: bool, device: torch.device,
                   batch_size: int = 256, workers: int = 0, amp: torch.dtype | None = None,
                   show_progress: bool = False, desc: str = "eval", sharded: bool = False) -> dict:
    """Evaluate ``model`` (the plain module, not a DDP wrapper) on ``dataset``.

    ``n`` is the number of images scored; ``skipped`` (only when > 0) the unreadable ones.
    ``sharded``: every rank calls, scores its slice and gets the whole result (:func:`collect`).
    """
    skipped: list[tuple[int, str]] = []
    logits, targets = collect(model, dataset, device=device, batch_size=batch_size, workers=workers,
                              amp=amp, show_progress=show_progress, desc=desc, skipped=skipped,
                              sharded=sharded)
    extra = _report_skipped(dataset, skipped, desc)
    return {**metrics_from_logits(logits, targets, multi_label=multi_label), **extra}


OPENSET_FILE = "openset_test.jsonl"


def read_openset(root: str | os.PathLike, classes: list[ClassInfo]) -> tuple[list[Record], np.ndarray]:
    """``DATA/openset_test.jsonl``: its records and targets [N] (known class id, -1 for unknown).

    Rows are ``{"id", "image", "label": known class name or null}``; extra fields are ignored.
    """
    path = Path(root) / OPENSET_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found; open-set evaluation needs this manifest of known and "
                        "unseen-class images (`capro simulate --open-set` writes one)")
    index = {c.name: i for i, c in enumerate(classes)}
    records, targets = [], []
    with open(path, encoding="utf-8") as fh:
        lines = [(i, text) for i, text in enumerate(fh, start=1) if text.strip()]
    for line, text in lines:
        try:
            row = json.loads(text)
        except ValueError as exc:
            raise DataError(f"{path}:{line}: not valid JSON ({exc}); fix the row") from exc
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or "label" not in row:
            raise DataError(f"{path}:{line}: expected an object with \"image\" and \"label\" "
                            "(a known class name or null); fix the row")
        label = row["label"]
        if label is not None and label not in index:
            raise DataError(f"{path}:{line}: label {label!r} is not in classes.json; use a known "
                            "class name, or null for an unseen class")
        records.append(Record(id=str(row.get("id", line)), image=row["image"],
                              labels=(index.get(label, 0),), line=line))
        targets.append(-1 if label is None else index[label])
    return records, np.asarray(targets, dtype=np.int64)


def max_softmax(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top softmax probability [N] float64, predicted class [N]) of logits [N, C]."""
    z = logits.astype(np.float64)
    prob = np.exp(z - z.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    return prob.max(axis=1), prob.argmax(axis=1)


def openset_from_logits(logits: np.ndarray, targets: np.ndarray) -> dict:
    """Max-softmax open-set metrics of logits [N, C] over known classes, targets [N] (-1 unknown).

    {"mean_cf1" (%), "pr_auc" (fraction), "auroc" (fraction or None), "n", "n_unknown"}; see
    :func:`capro.eval.openset.openset_metrics`.
    """
    top, pred = max_softmax(logits)
    m = openset_metrics(top, pred, targets, num_known=logits.shape[1])
    return {"mean_cf1": m["mean_cf1"], "pr_auc": m["pr_auc"], "auroc": m["auroc"], "n": int(len(targets)),
            "n_unknown": int((targets < 0).sum())}


def evaluate_openset(model: nn.Module, root: str | os.PathLike, classes: list[ClassInfo], *,
                     size: int, channels: int, device: torch.device, batch_size: int = 256,
                     workers: int = 0, amp: torch.dtype | None = None,
                     on_bad_image: str = "skip") -> dict:
    """Open-set metrics of a single-label ``model`` on ``root/openset_test.jsonl``.

    An unreadable image is skipped and reported (``on_bad_image="skip"``) or stops with a
    DataError naming it (``"stop"``).
    """
    records, targets = read_openset(root, classes)
    ds = EvalDataset(root, records, len(classes), size=size, channels=channels,
                     on_bad_image=on_bad_image)
    skipped: list[tuple[int, str]] = []
    logits, _ = collect(model, ds, device=device, batch_size=batch_size, workers=workers, amp=amp,
                        desc="eval open set", skipped=skipped)
    extra = _report_skipped(ds, skipped, "eval open set")
    targets = np.delete(targets, [pos for pos, _ in skipped])
    return {**openset_from_logits(logits, targets), **extra}
