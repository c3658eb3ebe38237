import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats

from capro.data.batch_views import (
    colour_jitter,
    crop_boxes,
    crop_resize,
    eval_views,
    strong_views,
    uniforms,
    view_keys,
    weak_views,
)
from capro.data.transforms import eval_transform


def test_draws_depend_on_seed_epoch_index_only_and_are_uniform():
    keys = view_keys(3, 7, np.arange(5000))
    u = uniforms(keys, 1, 4)
    assert u.shape == (5000, 4) and u.min() >= 0 and u.max() < 1
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
    # a sample's draws do not depend on the batch it comes in
    sub = view_keys(3, 7, torch.tensor([4321, 12]))
    np.testing.assert_array_equal(uniforms(sub, 1, 4), u[[4321, 12]])
    # another seed, epoch or stream draws something else
    for other in (uniforms(view_keys(4, 7, np.arange(5000)), 1, 4),
                  uniforms(view_keys(3, 8, np.arange(5000)), 1, 4), uniforms(keys, 2, 4)):
        assert abs(np.corrcoef(other.ravel(), u.ravel())[0, 1]) < 0.05


def _reference_box(u_row, h, w, scale, ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params, one sample, with the given uniforms."""
    area = h * w
    for t in range(10):
        a, r, top_u, left_u = u_row[4 * t: 4 * t + 4]
        target = area * (scale[0] + (scale[1] - scale[0]) * a)
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * r)
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = math.floor(top_u * (h - ch + 1)), math.floor(left_u * (w - cw + 1))
            return left, top, left + cw, top + ch
    cw, ch = w, h  # square inputs: ratio 1 is within range
    return (w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch


@pytest.mark.parametrize("scale", [(0.2, 1.0), (0.8, 1.0)])
def test_crop_boxes_follow_torchvision_rule(scale):
    u = uniforms(view_keys(0, 0, np.arange(300)), 1, 40)
    boxes = crop_boxes(u, 28, 28, scale=scale)
    for row, box in zip(u, boxes):
        assert tuple(box) == _reference_box(row, 28, 28, scale)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 28**2
    assert area.min() >= scale[0] - 0.05 and area.max() <= 1.0
    # no try fits a 1-px-high image: torchvision's central crop at the widest ratio (1 x 1 here)
    wide = crop_boxes(u[:3], 1, 40, scale=(0.9, 1.0))
    assert (wide == [[19, 0, 20, 1]] * 3).all()


def test_crop_resize_is_exact_on_identity_and_averages_on_downscale():
    x = torch.rand(3, 2, 8, 8)
    full = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 3)
    assert torch.allclose(crop_resize(x, full, 8), x, atol=1e-6)
    half = crop_resize(x, full, 4)  # 2x2 box filter
    assert torch.allclose(half, F.avg_pool2d(x, 2), atol=1e-6)
    box = torch.tensor([[2.0, 4.0, 6.0, 8.0]] * 3)  # x0, y0, x1, y1
    assert torch.allclose(crop_resize(x, box, 4), x[..., 4:8, 2:6], atol=1e-6)


def test_colour_jitter_matches_torchvision_in_the_drawn_order():
    x = torch.rand(2, 3, 6, 6)
    u = np.array([[0.9, 0.1, 0.7, 0.3, 0.1, 0.2, 0.3, 0.4],    # order b, c, s, h
                  [0.2, 0.8, 0.4, 0.9, 0.9, 0.5, 0.1, 0.3]])   # order s, h, c, b
    y = colour_jitter(x, u, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i, order in enumerate(([0, 1, 2, 3], [2, 3, 1, 0])):
        f = [0.6 + 0.8 * u[i, 0], 0.6 + 0.8 * u[i, 1], 0.6 + 0.8 * u[i, 2], (2 * u[i, 3] - 1) * 0.4]
        ref = x[i]
        for k in order:
            ref = ops[k](ref, f[k])
        assert torch.allclose(y[i], ref, atol=1e-4)
    grey = torch.rand(2, 1, 6, 6)  # greyscale: brightness and contrast only
    g = colour_jitter(grey, u, brightness=0.4, contrast=0.4)
    ref = TF.adjust_contrast(TF.adjust_brightness(grey[0], 0.6 + 0.8 * 0.9), 0.6 + 0.8 * 0.1)
    assert torch.allclose(g[0], ref, atol=1e-5)


def test_test_view_matches_the_per_image_transform():
    rng = np.random.default_rng(0)
    for shape, size, channels in (((28, 28), 16, 1), ((30, 40, 3), 24, 3)):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        ref = eval_transform(size=size, channels=channels)(Image.fromarray(a))
        raw = torch.from_numpy(a)[None, None] if channels == 1 else torch.from_numpy(a).permute(2, 0, 1)[None]
        ours = eval_views(raw, size=size)[0]
        assert ours.shape == ref.shape
        # PIL rounds to uint8 after resizing: one grey level, normalised
        assert (ours - ref).abs().max() < 1.5 / 255 / (0.5 if channels == 1 else 0.224)


@pytest.mark.parametrize("channels", [1, 3])
def test_views_of_a_sample_do_not_depend_on_its_batch(channels):
    raw = torch.randint(0, 256, (6, channels, 28, 28), dtype=torch.uint8)
    index = torch.tensor([5, 9, 11, 40, 41, 100])
    for fn in (weak_views, strong_views):
        full = fn(raw, keys=view_keys(1, 2, index), size=16, fancy_pca=True)
        part = fn(raw[[4, 1]], keys=view_keys(1, 2, index[[4, 1]]), size=16, fancy_pca=True)
        assert full.shape == (6, channels, 16, 16)
        assert torch.allclose(part, full[[4, 1]], atol=1e-6)
        again = fn(raw, keys=view_keys(1, 3, index), size=16)  # another epoch
        assert not torch.allclose(again, full)


def test_weak_view_of_a_constant_image_is_that_constant():
    raw = torch.full((4, 1, 28, 28), 204, dtype=torch.uint8)
    out = weak_views(raw, keys=view_keys(0, 0, np.arange(4)), size=16)
    assert torch.allclose(out, torch.full_like(out, (0.8 - 0.5) / 0.5), atol=1e-5)
