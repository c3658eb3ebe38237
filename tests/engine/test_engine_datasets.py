import numpy as np
import torch
from PIL import Image

from capro.config import load_config
from capro.data.datasets import EvalDataset, TrainDataset, label_targets
from capro.data.layout import read_split
from capro.data.transforms import eval_transform, strong_transform, weak_transform


def test_views_are_seeded_per_sample_and_epoch(tiny_web_data):
    split = read_split(tiny_web_data, "train")
    ds = TrainDataset(tiny_web_data, split.records, 10, size=16, channels=1, seed=5)
    a = ds[7]
    torch.manual_seed(999)  # the global RNG does not change the views
    b = ds[7]
    assert torch.equal(a["img"], b["img"]) and torch.equal(a["img_aug"], b["img_aug"])
    assert a["img"].shape == (1, 16, 16) and a["img_aug"].shape == (1, 16, 16)
    assert a["target"].item() == split.records[7].label and a["index"].item() == 7
    assert a["weight"].item() == 1.0 and a["anchor"].item() is False
    ds.set_epoch(1)
    assert not torch.equal(ds[7]["img_aug"], a["img_aug"])


def test_subset_keeps_split_indices_targets_and_anchors(tiny_web_data):
    split = read_split(tiny_web_data, "train")
    idx = np.array([3, 10, 42])
    ds = TrainDataset(tiny_web_data, [split.records[i] for i in idx], 10, size=16, channels=1,
                      indices=idx, targets=np.array([9, 8, 7]), domain=np.array([1, 0, 1]))
    items = [ds[i] for i in range(3)]
    assert [it["index"].item() for it in items] == [3, 10, 42]
    assert [it["target"].item() for it in items] == [9, 8, 7]
    assert [it["anchor"].item() for it in items] == [True, False, True]


def test_multilabel_targets_are_multi_hot(tiny_multilabel_data):
    split = read_split(tiny_multilabel_data, "train")
    t = label_targets(split.records, 10, multi_label=True)
    for rec, row in zip(split.records, t):
        assert set(np.flatnonzero(row)) == set(rec.labels)
    ds = TrainDataset(tiny_multilabel_data, split.records, 10, size=16, channels=1, multi_label=True)
    item = ds[0]
    assert item["target"].dtype == torch.float32 and item["target"].shape == (10,)
    assert item["domain"].shape == (10,) and item["domain"].dtype == torch.int8


def test_eval_transform_is_deterministic_and_normalised():
    img = Image.fromarray(np.full((28, 28), 255, np.uint8), mode="L")
    t = eval_transform(size=32, channels=1)
    out = t(img)
    assert out.shape == (1, 32, 32)
    assert torch.allclose(out, torch.ones_like(out))  # (1 - 0.5) / 0.5
    rgb = Image.new("RGB", (40, 30), (124, 116, 104))
    out = eval_transform(size=24, channels=3)(rgb)
    assert out.shape == (3, 24, 24)
    assert out.abs().max() < 0.02  # ImageNet mean colour -> ~0


def test_train_views_have_the_configured_size_for_both_modes():
    cfg = load_config(preset="tiny")
    for channels, mode in ((1, "L"), (3, "RGB")):
        img = Image.new(mode, (28, 28))
        for tf in (weak_transform(size=cfg.data.image_size, channels=channels),
                   strong_transform(size=cfg.data.image_size, channels=channels)):
            assert tf(img).shape == (channels, 16, 16)


def test_eval_dataset_uses_the_test_view(tiny_web_data):
    split = read_split(tiny_web_data, "test")
    ds = EvalDataset(tiny_web_data, split.records, 10, size=16, channels=1)
    a, b = ds[0], ds[0]
    assert torch.equal(a["img"], b["img"]) and a["target"].item() == split.records[0].label
