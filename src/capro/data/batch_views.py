"""The weak, strong and test views of a whole uint8 batch at once, on the batch's device.

The batched counterpart of :mod:`capro.data.transforms` (``data.augment=batch``). Every random
parameter of a sample (crop box, flip, jitter factors and order, greyscale) is drawn from a
counter-based hash of (seed, epoch, sample index, view), never from a global RNG, so a sample's
views do not depend on which batch, process or loader worker it comes through, nor on a resume.
The kernels are torchvision's ``roi_align`` (crop and resize; adaptive sampling averages the
pixels under each output pixel, so a downscale is antialiased) and kornia's colour adjustments
(the ones behind ``kornia.augmentation.ColorJitter``, with torchvision's semantics).

Shapes: B samples, ch channels (1 or 3), stored side H = W, output side S.

Examples:
    >>> raw = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    >>> weak_views(raw, keys=view_keys(0, 0, torch.arange(4)), size=16).shape
    torch.Size([4, 1, 16, 16])
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from capro.data.transforms import _EIGVAL, _EIGVEC, IMAGENET_MEAN, IMAGENET_STD

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
WEAK, STRONG = 1, 2
"""View streams: the weak and strong views of a sample draw from independent streams."""
_RRC_TRIES = 10


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (a bijective, well-mixing hash)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(_GOLDEN)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def view_keys(seed: int, epoch: int, index: torch.Tensor | np.ndarray) -> np.ndarray:
    """[B] uint64 keys, one per (seed, epoch, split index): the root of a sample's random draws."""
    idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
    k = _splitmix64(np.full(idx.shape, seed & _MASK64, dtype=np.uint64))
    k = _splitmix64(k ^ np.uint64(epoch & _MASK64))
    return _splitmix64(k ^ idx.astype(np.uint64))


def uniforms(keys: np.ndarray, stream: int, n: int) -> np.ndarray:
    """[B, n] float64 uniforms in [0, 1): draw j of ``stream`` for each key."""
    base = _splitmix64(keys ^ np.uint64((stream * 0x632BE59BD9B4E019) & _MASK64))
    with np.errstate(over="ignore"):
        ctr = base[:, None] + np.arange(1, n + 1, dtype=np.uint64)[None, :] * np.uint64(_GOLDEN)
    return (_splitmix64(ctr) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def crop_boxes(u: np.ndarray, height: int, width: int, *, scale: tuple[float, float],
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """[B, 4] float boxes (x0, y0, x1, y1) in pixels: torchvision's RandomResizedCrop rule.

    ``u`` [B, 4 * 10] uniforms: up to ten (area, log-ratio, top, left) tries; a sample whose ten
    tries all fall outside the image gets the central crop of the clamped ratio, as torchvision.
    """
    area = height * width
    tries = u[:, : 4 * _RRC_TRIES].reshape(len(u), _RRC_TRIES, 4)
    target = area * (scale[0] + (scale[1] - scale[0]) * tries[..., 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * tries[..., 1]
    aspect = np.exp(log_r)
    w = np.rint(np.sqrt(target * aspect))
    h = np.rint(np.sqrt(target / aspect))
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = np.where(fits.any(axis=1), fits.argmax(axis=1), -1)
    rows = np.arange(len(u))
    pick = np.maximum(first, 0)
    w, h = w[rows, pick], h[rows, pick]
    top = np.floor(tries[rows, pick, 2] * (height - h + 1))
    left = np.floor(tries[rows, pick, 3] * (width - w + 1))
    # fallback: central crop at the ratio clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), float(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = float(round(height * ratio[1])), float(height)
    else:
        fw, fh = float(width), float(height)
    miss = first < 0
    w, h = np.where(miss, fw, w), np.where(miss, fh, h)
    top = np.where(miss, (height - fh) // 2, top)
    left = np.where(miss, (width - fw) // 2, left)
    return np.stack([left, top, left + w, top + h], axis=1)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop box b of sample b and resize it to ``size`` × ``size`` (bilinear, antialiased down).

    x [B, ch, H, W] float, boxes [B, 4] (x0, y0, x1, y1) pixel edges → [B, ch, size, size].
    """
    rois = torch.cat([torch.arange(len(x), device=x.device, dtype=x.dtype)[:, None],
                      boxes.to(device=x.device, dtype=x.dtype)], dim=1)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                     aligned=True)


def _flip(x: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    m = torch.as_tensor(mask, device=x.device).view(-1, 1, 1, 1)
    return torch.where(m, x.flip(-1), x)


def _factors(u: np.ndarray, strength: float, device: torch.device) -> torch.Tensor:
    """[B] factors uniform in [max(0, 1 - strength), 1 + strength]."""
    lo = max(0.0, 1.0 - strength)
    return torch.as_tensor(lo + (1.0 + strength - lo) * u, dtype=torch.float32, device=device)


def colour_jitter(x: torch.Tensor, u: np.ndarray, *, brightness: float, contrast: float,
                  saturation: float = 0.0, hue: float = 0.0) -> torch.Tensor:
    """torchvision's ColorJitter on x [B, ch, H, W] in [0, 1], per-sample factors and order.

    ``u`` [B, 8]: four factors (brightness, contrast, saturation, hue) and four keys whose
    ranking gives each sample its order of the four adjustments. Saturation and hue apply to RGB.
    """
    from kornia import enhance

    dev = x.device
    ops = []
    if brightness > 0:
        f = _factors(u[:, 0], brightness, dev)
        ops.append(lambda t, f=f: enhance.adjust_brightness_accumulative(t, f).clamp(0, 1))
    if contrast > 0:
        f = _factors(u[:, 1], contrast, dev)
        ops.append(lambda t, f=f: _adjust_contrast(t, f))
    if saturation > 0 and x.shape[1] == 3:
        f = _factors(u[:, 2], saturation, dev)
        ops.append(lambda t, f=f: enhance.adjust_saturation_with_gray_subtraction(t, f).clamp(0, 1))
    if hue > 0 and x.shape[1] == 3:
        f = torch.as_tensor((2 * u[:, 3] - 1) * hue * 2 * math.pi, dtype=torch.float32, device=dev)
        ops.append(lambda t, f=f: enhance.adjust_hue(t, f).clamp(0, 1))
    if not ops:
        return x
    order = torch.as_tensor(np.argsort(u[:, 4:4 + len(ops)], axis=1), device=dev)  # [B, n_ops]
    for pos in range(len(ops)):
        step = x
        for k, op in enumerate(ops):
            chosen = (order[:, pos] == k).view(-1, 1, 1, 1)
            if bool(chosen.any()):
                step = torch.where(chosen, op(x), step)
        x = step
    return x


def _adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean grey level of each image (torchvision's adjust_contrast)."""
    grey = x.mean(dim=1, keepdim=True) if x.shape[1] == 1 else (
        0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def _random_grey(x: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
    return torch.where(torch.as_tensor(mask, device=x.device).view(-1, 1, 1, 1), grey, x)


def _fancy_pca(x: torch.Tensor, u: np.ndarray, std: float = 0.1) -> torch.Tensor:
    """AlexNet lighting noise with alpha ~ N(0, std) per sample (Box-Muller from ``u`` [B, 6])."""
    r = np.sqrt(-2.0 * np.log1p(-u[:, :3]))
    alpha = torch.as_tensor(std * r * np.cos(2 * np.pi * u[:, 3:6]), dtype=torch.float32)
    rgb = (alpha * _EIGVAL) @ _EIGVEC.t()  # [B, 3]
    return x + rgb.to(x.device).view(-1, 3, 1, 1)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """0.5 / 0.5 for greyscale, the ImageNet statistics for RGB (as :mod:`capro.data.transforms`)."""
    if x.shape[1] == 1:
        return (x - 0.5) / 0.5
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _crop(raw: torch.Tensor, u: np.ndarray, size: int, scale: float) -> torch.Tensor:
    boxes = crop_boxes(u, raw.shape[-2], raw.shape[-1], scale=(scale, 1.0))
    return crop_resize(raw.float() / 255.0, torch.from_numpy(boxes), size)


def weak_views(raw: torch.Tensor, *, keys: np.ndarray, size: int, crop: float = 0.8,
               fancy_pca: bool = False) -> torch.Tensor:
    """Query / classifier views: random resized crop (scale ``crop``..1) and horizontal flip.

    raw [B, ch, H, W] uint8 → [B, ch, size, size] float, normalised.
    """
    u = uniforms(keys, WEAK, 4 * _RRC_TRIES + 8)
    x = _flip(_crop(raw, u, size, crop), u[:, 40] < 0.5)
    if fancy_pca and x.shape[1] == 3:
        x = _fancy_pca(x, u[:, 41:47])
    return normalise(x)


def strong_views(raw: torch.Tensor, *, keys: np.ndarray, size: int, crop: float = 0.2,
                 fancy_pca: bool = False) -> torch.Tensor:
    """Key views: random resized crop, random greyscale (p 0.2) and colour jitter 0.4 (RGB; greyscale
    images get brightness and contrast), horizontal flip. raw [B, ch, H, W] uint8 → float normalised.
    """
    u = uniforms(keys, STRONG, 4 * _RRC_TRIES + 20)
    x = _crop(raw, u, size, crop)
    if x.shape[1] == 3:
        x = _random_grey(x, u[:, 40] < 0.2)
        x = colour_jitter(x, u[:, 41:49], brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4)
    else:
        x = colour_jitter(x, u[:, 41:49], brightness=0.4, contrast=0.4)
    x = _flip(x, u[:, 49] < 0.5)
    if fancy_pca and x.shape[1] == 3:
        x = _fancy_pca(x, u[:, 50:56])
    return normalise(x)


def eval_views(raw: torch.Tensor, *, size: int) -> torch.Tensor:
    """The deterministic view: resize the shorter side to ``size * 256 / 224`` (antialiased
    bilinear), centre-crop ``size``. raw [B, ch, H, W] uint8 → [B, ch, size, size] float."""
    h, w = raw.shape[-2:]
    short = round(size * 256 / 224)
    nh, nw = (short, max(1, round(w * short / h))) if h <= w else (max(1, round(h * short / w)), short)
    x = raw.float() / 255.0
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))  # as CenterCrop
    return normalise(x[..., top:top + size, left:left + size].clamp(0, 1))
