"""Deterministic evaluation of a model on a split: top-1/top-5, or the multi-label metrics.

Images go through the test transform (D7) in eval mode; no randomness. N samples, C classes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from capro.eval.metrics import topk_accuracy
from capro.eval.multilabel import multilabel_metrics


@torch.no_grad()
def collect(model: nn.Module, dataset: Dataset, *, device: torch.device, batch_size: int = 256,
            workers: int = 0, amp: torch.dtype | None = None, fn: str = "logits",
            show_progress: bool = False, desc: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over ``dataset`` in eval mode; return (outputs [N, K] float32, targets).

    ``fn``: ``logits`` (forward, [N, C]) or ``features`` (``extract_features``, [N, F]).
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    outs, targets = [], []
    call = model.extract_features if fn == "features" else model
    for batch in tqdm(loader, desc=desc, leave=False, disable=not show_progress, dynamic_ncols=True):
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = call(batch["img"].to(device, non_blocking=True))
        outs.append(out.float().cpu())
        targets.append(batch["target"])
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


def evaluate_model(model: nn.Module, dataset: Dataset, *, multi_label: bool, device: torch.device,
                   batch_size: int = 256, workers: int = 0, amp: torch.dtype | None = None,
                   show_progress: bool = False, desc: str = "eval") -> dict:
    """Evaluate ``model`` (the plain module, not a DDP wrapper) on ``dataset``."""
    logits, targets = collect(model, dataset, device=device, batch_size=batch_size, workers=workers,
                              amp=amp, show_progress=show_progress, desc=desc)
    return metrics_from_logits(logits, targets, multi_label=multi_label)
