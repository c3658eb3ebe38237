"""The public Python API: train on a crawl, load a finished run, read its verdicts, predict.

Examples:
    >>> import capro
    >>> run = capro.run("data/crawl", "runs/crawl", preset="cpu", overrides={"stage1.epochs": 2})
    >>> run = capro.load_run("runs/crawl")
    >>> issues = run.verdicts().query("is_label_issue")     # a pandas DataFrame, one row per sample
    >>> run.predict(["shoe.png"])[0]["prediction"]
    'Sneaker'
    >>> run.export("cleaned/", format="imagefolder")

The command line (``capro run``, ``capro predict``, ...) is a thin layer over the same calls.
See docs/api.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from capro.config import Config, load_config
from capro.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

    from capro.data.validate import ValidationReport
    from capro.report.export import ExportSummary

__all__ = ["Run", "config_overrides", "load_run", "run", "validate"]


def config_overrides(overrides: Mapping[str, Any] | Sequence[str] | None = None,
                     **keys: Any) -> list[str]:
    """Dotted ``KEY=VALUE`` strings from a mapping (``{"stage1.epochs": 2}``), a list of such
    strings, and keyword arguments whose ``__`` stands for a dot (``stage1__epochs=2``)."""
    import yaml

    out: list[str] = []
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    else:
        out += [str(o) for o in overrides or ()]
        pairs = []
    pairs += [(k.replace("__", "."), v) for k, v in keys.items()]
    for key, value in pairs:
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
        out.append(f"{key}={text.removesuffix('...').strip()}")
    return out


def run(data: str | os.PathLike, out: str | os.PathLike, *, preset: str | None = None,
        config: str | os.PathLike | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None,
        resume: bool = False, progress: bool | None = None, **keys: Any) -> Run:
    """Run every step of CAPro on the dataset ``data`` into the run directory ``out`` (what
    ``capro run`` does) and return the finished :class:`Run`.

    The config is built as by the CLI: defaults <- ``preset`` <- ``config`` (a YAML file) <-
    ``overrides`` and ``keys`` (``stage1__epochs=2`` means ``stage1.epochs=2``). Finished steps
    with an unchanged config are skipped; ``resume`` continues an interrupted stage.
    """
    from capro.engine.runner import run_pipeline

    cfg = load_config(config, preset=preset, overrides=config_overrides(overrides, **keys))
    run_pipeline(data, out, cfg, resume=resume, progress=progress)
    return load_run(out)


def load_run(path: str | os.PathLike, *, device: str = "auto") -> Run:
    """A finished run directory (the ``--out`` of ``capro run``)."""
    from capro.report.rundir import check_run_dir

    run_dir = check_run_dir(path)
    if not (run_dir / "model.pt").is_file():
        raise UsageError(f"{run_dir}: holds no model.pt; finish the run first "
                         f"(`capro run DATA --out {run_dir} --resume`)")
    return Run(run_dir, device=device)


def validate(data: str | os.PathLike, *, check_images: bool = True) -> ValidationReport:
    """Check a dataset directory; the report's ``problems`` list every bad row (``.ok`` when none)."""
    from capro.data.validate import validate_dataset

    return validate_dataset(data, check_images=check_images)


@dataclass
class Run:
    """A finished run: its config, metrics, model, per-sample verdicts and predictions."""

    path: Path
    device: str = "auto"
    _loaded: tuple | None = field(default=None, repr=False)

    def _load(self) -> tuple:
        if self._loaded is None:
            from capro.engine.distributed import resolve_device
            from capro.engine.runner import load_run_model

            self._loaded = load_run_model(self.path, resolve_device(self.device))
        return self._loaded

    @property
    def model(self) -> torch.nn.Module:
        """The final classifier (a :class:`capro.model.capro.CAPro` in eval mode);
        ``run.model(x)`` gives logits [N, C] of images x [N, channels, S, S]."""
        return self._load()[0]

    @property
    def config(self) -> Config:
        """The resolved config the run was trained with."""
        return self._load()[2]

    @property
    def classes(self) -> list[str]:
        """Class names, index = class id."""
        return [c.name for c in self._load()[1]]

    @property
    def multi_label(self) -> bool:
        return bool(self._load()[3])

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """``RUN/metrics.json``: evaluation, cleaning counts, stage times, choices made on validation."""
        from capro.utils.io import read_json

        path = self.path / "metrics.json"
        return read_json(path) if path.is_file() else {}

    def verdicts(self) -> pd.DataFrame:
        """One row per training sample (``RUN/stage3a/samples.jsonl``), in cleanlab's vocabulary:
        ``is_label_issue``, ``label_quality`` (the score of the given label, low = probably
        wrong), ``suggested_label`` (cleanlab's ``predicted_label``), ``web_label`` (the given
        label), ``label`` (after cleaning; None when removed), ``kept`` / ``relabeled`` /
        ``removed``, ``anchor``, ``text_distance``, ``nearest_prototype``. Indexed by ``id``."""
        import pandas as pd

        from capro.report.verdicts import VERDICT_FIELDS, load_verdicts

        frame = pd.DataFrame(load_verdicts(self.path), columns=list(VERDICT_FIELDS))
        return frame.set_index("id")

    def label_issues(self) -> pd.DataFrame:
        """The verdicts judged wrong (relabelled or removed), lowest ``label_quality`` first."""
        frame = self.verdicts()
        return frame[frame["is_label_issue"]].sort_values("label_quality")

    def predict(self, images: Sequence[str | os.PathLike] | torch.Tensor | np.ndarray, *, topk: int = 5,
                threshold: float | None = None, batch_size: int = 64) -> list[dict] | np.ndarray:
        """Predictions of the final model.

        ``images``: image files, each answered by ``{"image", "top": [{"label", "score"}...],
        "prediction"}`` (``"unknown"`` when the top score is below ``threshold``; multi-label: the
        classes scoring at least ``threshold``, default 0.5); or a tensor / array [N, channels, S, S]
        already transformed as the run's test view, answered by the class probabilities [N, C]
        (softmax; sigmoid for multi-label).
        """
        from capro.engine.predict import predict_paths

        model, classes, cfg, multi = self._load()
        if isinstance(images, (torch.Tensor, np.ndarray)):
            x = torch.as_tensor(images, dtype=torch.float32)
            if x.dim() != 4 or x.shape[1] != cfg.data.channels:
                raise UsageError(f"images: expected a batch [N, {cfg.data.channels}, S, S], got shape "
                                 f"{tuple(x.shape)}")
            dev = next(model.parameters()).device
            with torch.no_grad():
                logits = torch.cat([model(x[i:i + batch_size].to(dev)).float().cpu()
                                    for i in range(0, len(x), batch_size)]) if len(x) else torch.zeros(0, len(classes))
            return (torch.sigmoid(logits) if multi else logits.softmax(dim=1)).numpy()
        if isinstance(images, (str, os.PathLike)):
            raise UsageError("images: pass a list of image paths (or a batch tensor), not one path")
        return predict_paths(model, [c.name for c in classes], cfg, list(images), multi_label=multi,
                             topk=topk, threshold=threshold, batch_size=batch_size)

    def evaluate(self, split: str = "test", *, data: str | os.PathLike | None = None) -> dict[str, Any]:
        """Metrics of the final model on ``split`` of the run's dataset (or of ``data``)."""
        from capro.engine.predict import evaluate_run

        return evaluate_run(self.path, data=data, split=split, device=self.device)

    def export(self, out: str | os.PathLike, *, format: str = "jsonl", copy: bool = False,
               data: str | os.PathLike | None = None) -> ExportSummary:
        """The cleaned dataset into the new directory ``out`` (``jsonl``, ``imagefolder``, ``csv``
        or ``parquet``): relabelled rows carry their new label, removed rows are listed apart."""
        from capro.report.export import export_run

        return export_run(self.path, out, format=format, data_root=data, copy=copy)

    def export_model(self, out: str | os.PathLike, *, format: str = "torchscript") -> dict[str, Any]:
        """The classifier alone (``torchscript``, ``onnx`` or ``state-dict``) plus ``model.json``."""
        from capro.deploy import export_model

        return export_model(self.path, out, fmt=format)

    def report(self) -> Path:
        """Write ``RUN/report.html`` (one self-contained file) and return its path."""
        from capro.report.html import write_report

        return write_report(self.path)
