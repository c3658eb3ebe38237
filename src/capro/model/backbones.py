"""Backbone registry: image encoders that map images [B, in_chans, H, W] to pooled features [B, F].

``create_backbone(name)`` returns ``(module, F)``. Built-in names are in ``BACKBONES``; any other
name is passed to ``timm.create_model(name, num_classes=0)`` when timm is installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18, resnet50

from capro.errors import ConfigError

__all__ = ["BACKBONES", "SimpleCNN", "create_backbone"]


def _resnet(
    factory: Callable[..., nn.Module], *, in_chans: int, stem: str
) -> tuple[nn.Module, int]:
    """A torchvision ResNet without its fc layer (randomly initialised).

    ``stem``: ``imagenet`` (7x7 stride-2 conv + max-pool), ``tiny`` (3x3 stride-1 conv + max-pool:
    /2 before layer1, for 16-32 px images) or ``small`` (CIFAR: 3x3 stride-1 conv, no max-pool).
    """
    net = factory(weights=None)
    feature_dim = net.fc.in_features
    if stem == "imagenet":
        if in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        if stem == "small":
            net.maxpool = nn.Identity()
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    return net, feature_dim


class SimpleCNN(nn.Module):
    """Four 3x3 conv-BN-ReLU blocks (32-64-128-256 channels), three 2x2 max-pools, global average pool.

    Maps [B, in_chans, H, W] -> [B, 256]; for fast tests on tiny images.
    """

    def __init__(self, in_chans: int = 3, width: int = 32) -> None:
        super().__init__()
        chans = [in_chans, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def _simple_cnn(*, in_chans: int) -> tuple[nn.Module, int]:
    net = SimpleCNN(in_chans)
    return net, net.out_dim


BACKBONES: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "resnet18": lambda *, in_chans: _resnet(resnet18, in_chans=in_chans, stem="imagenet"),
    "resnet50": lambda *, in_chans: _resnet(resnet50, in_chans=in_chans, stem="imagenet"),
    "resnet18_tiny": lambda *, in_chans: _resnet(resnet18, in_chans=in_chans, stem="tiny"),
    "resnet50_tiny": lambda *, in_chans: _resnet(resnet50, in_chans=in_chans, stem="tiny"),
    "resnet18_small": lambda *, in_chans: _resnet(resnet18, in_chans=in_chans, stem="small"),
    "resnet50_small": lambda *, in_chans: _resnet(resnet50, in_chans=in_chans, stem="small"),
    "simple_cnn": _simple_cnn,
}
"""Built-in backbones: name -> factory(*, in_chans) -> (module, feature_dim)."""


def _timm_backbone(name: str, *, in_chans: int) -> tuple[nn.Module, int]:
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"unknown backbone {name!r}: choose one of {', '.join(sorted(BACKBONES))} "
            "(or install timm for its models)"
        ) from None
    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    except RuntimeError as exc:  # timm raises RuntimeError for unknown model names
        raise ConfigError(
            f"unknown backbone {name!r}: not built in ({', '.join(sorted(BACKBONES))}) "
            f"and timm says: {exc}"
        ) from None
    return net, int(net.num_features)


def load_backbone_weights(module: nn.Module, path: str | Path) -> None:
    """Load a state dict file into ``module`` non-strictly.

    Accepts a bare state dict or one nested under ``state_dict``/``model``; strips ``module.``
    prefixes. Keys with a mismatched shape (e.g. conv1 adapted to another channel count), missing
    keys and unexpected keys are skipped and reported with ``warnings.warn``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: pretrained backbone weights not found; fix model.pretrained")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad user file
        raise ConfigError(
            f"{path}: not a loadable state dict ({exc}); fix model.pretrained"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a state dict (name -> tensor); fix model.pretrained")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = module.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in mismatched}
    result = module.load_state_dict(state, strict=False)
    if mismatched:
        warnings.warn(f"{path}: skipped keys with another shape: {mismatched}", stacklevel=2)
    if result.missing_keys:
        warnings.warn(f"{path}: keys missing from the file: {result.missing_keys}", stacklevel=2)
    if result.unexpected_keys:
        warnings.warn(f"{path}: unused keys in the file: {result.unexpected_keys}", stacklevel=2)


def create_backbone(
    name: str, *, in_chans: int = 3, pretrained: str | None = None
) -> tuple[nn.Module, int]:
    """Build backbone ``name`` for ``in_chans``-channel images.

    Returns ``(module, F)``: the module maps images [B, in_chans, H, W] to pooled features [B, F].
    ``pretrained`` is an optional path to a state dict file (loaded non-strictly, see
    ``load_backbone_weights``), or weights in an installable package's format
    (``package:efficientnet-lite0``, see :mod:`capro.model.pretrained`). Unknown names go to timm if it is installed, else ``ConfigError``.
    """
    factory = BACKBONES.get(name)
    module, feature_dim = (
        factory(in_chans=in_chans)
        if factory is not None
        else _timm_backbone(name, in_chans=in_chans)
    )
    if pretrained:
        from capro.model import pretrained as converted

        if converted.is_efficientnet_lite_file(pretrained):
            missing = converted.load_converted(module, pretrained, name)
            if missing:
                warnings.warn(f"{pretrained}: model keys the weights did not cover: {missing}",
                              stacklevel=2)
        else:
            load_backbone_weights(module, pretrained)
    return module, feature_dim
