"""Predictions of a finished run's model on image files, and re-evaluation / re-cleaning of a run.

Examples:
    >>> predict_images("runs/demo", ["shoe.png"], topk=3)
    [{"image": "shoe.png", "top": [{"label": "Sneaker", "score": 0.91}, ...], "prediction": "Sneaker"}]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from capro.config import Config
from capro.data.batched import make_eval_dataset
from capro.data.transforms import eval_transform
from capro.engine.distributed import resolve_device
from capro.errors import DataError

UNKNOWN = "unknown"


def _open(path: Path, channels: int) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("L" if channels == 1 else "RGB")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file not found") from exc
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc}); pass a PNG/JPEG file") from exc


def predict_images(run_dir: str | os.PathLike, images: list[str | os.PathLike], *, topk: int = 5,
                   threshold: float | None = None, open_set: bool = False, device: str = "auto",
                   batch_size: int = 64) -> list[dict]:
    """Top-``topk`` classes with scores (softmax; sigmoid for multi-label) for each image.

    With ``threshold``, a single-label prediction whose top score is below it is ``"unknown"``;
    ``open_set`` without ``threshold`` uses the run's ``openset.threshold``. A multi-label
    prediction lists the classes scoring at least ``threshold`` (default 0.5).
    """
    from capro.engine.runner import load_run_model

    dev = resolve_device(device)
    model, classes, cfg, multi = load_run_model(run_dir, dev)
    if open_set and threshold is None and not multi:
        threshold = cfg.openset.threshold
    if open_set and not multi:
        warn_strict_rule_for_open_set(run_dir)
    return predict_paths(model, [c.name for c in classes], cfg, images, multi_label=multi, topk=topk,
                         threshold=threshold, batch_size=batch_size)


def image_batch(images: list[str | os.PathLike], cfg: Config) -> torch.Tensor:
    """[N, channels, S, S] test views of image files, as the run's model expects them."""
    tf = eval_transform(size=cfg.data.image_size, channels=cfg.data.channels)
    return torch.stack([tf(_open(Path(p), cfg.data.channels)) for p in images])


@torch.no_grad()
def predict_paths(model: torch.nn.Module, names: list[str], cfg: Config, images: list[str | os.PathLike], *,
                  multi_label: bool, topk: int = 5, threshold: float | None = None,
                  batch_size: int = 64) -> list[dict]:
    """:func:`predict_images` with a loaded model (eval mode), its class ``names`` and config."""
    dev = next(model.parameters()).device
    paths = [Path(p) for p in images]
    k = max(1, min(topk, len(names)))
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        logits = model(image_batch(chunk, cfg).to(dev)).float()
        scores = torch.sigmoid(logits) if multi_label else logits.softmax(dim=1)
        top = scores.topk(k, dim=1)
        for p, vals, idx, row in zip(chunk, top.values.tolist(), top.indices.tolist(), scores):
            entry = {"image": str(p), "top": [{"label": names[i], "score": round(v, 6)}
                                              for v, i in zip(vals, idx)]}
            if multi_label:
                th = 0.5 if threshold is None else threshold
                entry["prediction"] = [names[i] for i in np.flatnonzero(row.cpu().numpy() >= th)]
            else:
                unknown = threshold is not None and vals[0] < threshold
                entry["prediction"] = UNKNOWN if unknown else names[idx[0]]
            results.append(entry)
    return results


def evaluate_run(run_dir: str | os.PathLike, *, data: str | os.PathLike | None = None,
                 split: str = "test", device: str = "auto") -> dict:
    """Metrics of a run's final model on ``split`` of its dataset (or of ``data``)."""
    from capro.data.validate import load_split_for_run
    from capro.engine.evaluate import evaluate_model
    from capro.engine.runner import load_run_model
    from capro.report.rundir import resolve_data_root

    root = resolve_data_root(run_dir, data)
    dev = resolve_device(device)
    model, classes, cfg, multi = load_run_model(run_dir, dev)
    _check_classes(root, classes)
    sp = load_split_for_run(root, split, run_dir=None, skip_bad=cfg.data.skip_bad,
                            check_images=cfg.data.check_images, classes=classes)
    ds = make_eval_dataset(cfg, root, sp.records, len(classes), multi_label=multi,
                           cache_dir=Path(run_dir) / "cache")
    out = evaluate_model(model, ds, multi_label=multi, device=dev, batch_size=cfg.train.eval_batch_size,
                         workers=cfg.data.workers)
    return {"split": split, "data": str(root), **out}


def evaluate_openset_run(run_dir: str | os.PathLike, *, data: str | os.PathLike | None = None,
                         device: str = "auto") -> dict:
    """Open-set metrics of a run's final model on ``openset_test.jsonl`` of its dataset (or of
    ``data``); also recorded under ``"openset"`` in ``RUN/metrics.json``."""
    from capro.engine.evaluate import evaluate_openset
    from capro.engine.runner import load_run_model
    from capro.errors import UsageError
    from capro.report.rundir import resolve_data_root
    from capro.utils.io import read_json, write_json

    root = resolve_data_root(run_dir, data)
    dev = resolve_device(device)
    model, classes, cfg, multi = load_run_model(run_dir, dev)
    if multi:
        raise UsageError(f"{run_dir}: a multi-label run; open-set evaluation needs a single-label run")
    _check_classes(root, classes)
    warn_strict_rule_for_open_set(run_dir)
    out = {"data": str(root), **evaluate_openset(
        model, root, classes, size=cfg.data.image_size, channels=cfg.data.channels, device=dev,
        batch_size=cfg.train.eval_batch_size, workers=cfg.data.workers,
        on_bad_image=cfg.train.on_bad_image)}
    path = Path(run_dir) / "metrics.json"
    metrics = read_json(path) if path.is_file() else {}
    write_json(path, {**metrics, "openset": {k: v for k, v in out.items() if k != "data"}})
    return out


def warn_strict_rule_for_open_set(run_dir: str | os.PathLike) -> bool:
    """Warn (and return True) when the run's stage 2 kept a stricter keep rule than the paper's
    (D21, ``metrics.json`` → ``online_rule``): on the open-set demo (2026-12-05) such a model
    ranked unknown images worse (AUROC 0.72 against 0.84 for the paper's rule at the same epoch)."""
    import warnings

    from capro.utils.io import read_json

    path = Path(run_dir) / "metrics.json"
    chosen = ((read_json(path) if path.is_file() else {}).get("online_rule") or {}).get("chosen")
    if chosen in (None, "paper"):
        return False
    warnings.warn(f"{run_dir}: stage 2 kept the {chosen!r} keep rule (method.keep_rules, D21); with it "
                  "the open-set demo ranked unknown images worse (AUROC 0.72 against 0.84 with the "
                  "paper's rule): for open-set rejection retrain with method.keep_rules=[]",
                  stacklevel=2)
    return True


def _check_classes(root: Path, classes) -> None:
    from capro.data.layout import read_classes

    theirs = [c.name for c in read_classes(root)]
    ours = [c.name for c in classes]
    if theirs != ours:
        raise DataError(f"{root / 'classes.json'}: its classes differ from the run's ({len(theirs)} vs "
                        f"{len(ours)}, first difference at index "
                        f"{next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))}); "
                        "evaluate on data with the same classes.json")


def run_config(run_dir: str | os.PathLike) -> Config:
    """The resolved config saved in ``RUN/config.yaml``."""
    from capro.config import config_from_dict, read_yaml

    return config_from_dict(read_yaml(Path(run_dir) / "config.yaml"))
