"""Image transforms: the weak (query) view, the strong (key) view and the deterministic test view.

docs/method.md (two views) and D7 (deterministic evaluation). Every transform takes a PIL image
already converted to ``channels`` (1 = greyscale "L", 3 = "RGB") and returns a float tensor
[channels, size, size] normalised with dataset-agnostic statistics (0.5/0.5 for greyscale, the
ImageNet mean/std for RGB).

Examples:
    >>> t = eval_transform(size=32, channels=1)
    >>> t(Image.new("L", (28, 28))).shape
    torch.Size([1, 32, 32])
"""

from __future__ import annotations

import torch
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# AlexNet "lighting" noise (FancyPCA) with the ImageNet RGB eigen-decomposition.
_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                        [-0.5808, -0.0045, -0.8140],
                        [-0.5836, -0.6948, 0.4203]])


class FancyPCA:
    """Add ``eigvec @ (alpha * eigval)`` to every pixel of an RGB tensor, alpha ~ N(0, std)."""

    def __init__(self, std: float = 0.1) -> None:
        self.std = std

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.std
        rgb = _EIGVEC @ (alpha * _EIGVAL)
        return img + rgb.view(3, 1, 1)


def _normalise(channels: int) -> T.Normalize:
    if channels == 1:
        return T.Normalize((0.5,), (0.5,))
    return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)


def _tail(channels: int, fancy_pca: bool) -> list:
    steps: list = [T.ToTensor()]
    if fancy_pca and channels == 3:
        steps.append(FancyPCA())
    steps.append(_normalise(channels))
    return steps


def weak_transform(*, size: int, channels: int, crop: float = 0.8, fancy_pca: bool = False) -> T.Compose:
    """Query / classifier view: RandomResizedCrop(scale=(crop, 1)) + horizontal flip."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(crop, 1.0)),
        T.RandomHorizontalFlip(),
        *_tail(channels, fancy_pca),
    ])


def strong_transform(*, size: int, channels: int, crop: float = 0.2, fancy_pca: bool = False) -> T.Compose:
    """Key view: RandomResizedCrop(scale=(crop, 1)), greyscale (RGB only), colour jitter, flip.

    Saturation and hue jitter only make sense for RGB; greyscale images get brightness and contrast.
    """
    steps: list = [T.RandomResizedCrop(size, scale=(crop, 1.0))]
    if channels == 3:
        steps += [T.RandomGrayscale(p=0.2), T.ColorJitter(0.4, 0.4, 0.4, 0.4)]
    else:
        steps.append(T.ColorJitter(0.4, 0.4))
    steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + _tail(channels, fancy_pca))


def eval_transform(*, size: int, channels: int) -> T.Compose:
    """Deterministic: Resize(size * 256 / 224) + CenterCrop(size) (D7: no random FancyPCA)."""
    return T.Compose([
        T.Resize(round(size * 256 / 224)),
        T.CenterCrop(size),
        *_tail(channels, False),
    ])
