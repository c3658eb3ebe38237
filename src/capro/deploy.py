"""The trained classifier alone, for serving without capro: TorchScript, ONNX or a state dict.

A run's ``model.pt`` holds the whole CAPro module (key encoder, queue, prototypes, heads). What a
service needs is the query encoder and the main classifier: images [B, C, H, W] (already
preprocessed) in, logits [B, K] out. :func:`export_model` writes that network and
``model.json`` — class names, input size, channels, the resize and centre crop, the normalisation
mean and std, and whether outputs are softmax (single-label) or sigmoid (multi-label) scores —
so that any runtime can reproduce ``capro predict``.

Examples:
    >>> export_model("runs/web", "deploy/", fmt="torchscript")        # doctest: +SKIP
    >>> net = torch.jit.load("deploy/model.ts"); logits = net(x)       # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from capro.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from capro.errors import CaproError
from capro.utils.io import atomic_write, write_json

FORMATS = ("torchscript", "onnx", "state-dict")
FILES = {"torchscript": "model.ts", "onnx": "model.onnx", "state-dict": "model_state.pt"}


class Classifier(nn.Module):
    """Backbone + main classifier of a CAPro model: x [B, C, H, W] -> logits [B, K]."""

    def __init__(self, encoder: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))


def deployable(model: nn.Module) -> Classifier:
    """A standalone copy of ``model``'s query encoder and main classifier, in eval mode."""
    net = Classifier(copy.deepcopy(model.encoder_q), copy.deepcopy(model.classifier)).float().cpu()
    return net.eval()


def preprocessing(size: int, channels: int) -> dict[str, Any]:
    """What ``capro predict`` does to an image before the network (the test transform, D7)."""
    mean, std = ((0.5,), (0.5,)) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    return {"mode": "L" if channels == 1 else "RGB", "resize_shorter_side": round(size * 256 / 224),
            "center_crop": size, "scale": 1 / 255, "mean": list(mean), "std": list(std),
            "layout": "NCHW"}


def export_model(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, fmt: str = "torchscript"
                 ) -> dict[str, Any]:
    """Write ``RUN``'s final classifier to ``out_dir`` in ``fmt`` plus ``model.json``; return the
    JSON's content (with ``file``, the network's file name)."""
    from capro.engine.runner import load_run_model

    if fmt not in FORMATS:
        raise CaproError(f"unknown model format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model, classes, cfg, multi = load_run_model(run_dir)
    net = deployable(model)
    size, channels = cfg.data.image_size, cfg.data.channels
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILES[fmt]
    example = torch.zeros(2, channels, size, size)
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            # deprecated in torch 2.x in favour of torch.export, yet the one format that loads
            # with torch alone (no Python class needed): what the user asked for
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(net, example, check_trace=True)
            with atomic_write(path, "wb", encoding=None) as fh:
                torch.jit.save(traced, fh)
    elif fmt == "onnx":
        _export_onnx(net, example, path)
    else:
        with atomic_write(path, "wb", encoding=None) as fh:
            torch.save({"encoder": net.encoder.state_dict(), "classifier": net.classifier.state_dict(),
                        "backbone": cfg.model.backbone}, fh)
    meta = {"file": path.name, "format": fmt, "classes": [c.name for c in classes],
            "multi_label": multi, "output": "sigmoid" if multi else "softmax",
            "backbone": cfg.model.backbone, "input": {"size": size, "channels": channels},
            "preprocessing": preprocessing(size, channels), "run": str(Path(run_dir).resolve())}
    write_json(out / "model.json", meta)
    return meta


def _export_onnx(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX (torch.export-based exporter) with a dynamic batch axis, one self-contained file
    written atomically; needs the ``onnx`` and ``onnxscript`` packages."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise CaproError("ONNX export needs the onnx and onnxscript packages: "
                         "pip install 'capro[deploy]'") from None
    tmp = path.with_name(f".{path.name}.tmp.onnx")
    try:
        torch.onnx.export(net, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True,
                          external_data=False, verbose=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
