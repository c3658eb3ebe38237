import numpy as np
import torch

from capro.data.batched import BatchTrainDataset, StoredImages
from capro.data.image_cache import decode_stored, open_store
from capro.data.layout import read_split


def _images(root, records, tmp_path, mode="disk"):
    store = open_store(root, records, channels=1, side=16, mode=mode, cache_dir=tmp_path / "cache")
    return StoredImages(root, records, channels=1, side=16, store=store)


def test_fetch_returns_the_asked_order_and_subsets_read_the_same_store(tiny_web_data, tmp_path):
    recs = read_split(tiny_web_data, "train").records
    full = _images(tiny_web_data, recs, tmp_path)
    assert isinstance(full.store.images, np.memmap)
    ask = np.array([17, 3, 150, 3, 42])
    raw, valid, reasons = full.fetch(ask, "skip")
    for j, p in enumerate(ask):
        np.testing.assert_array_equal(raw[j].numpy(), decode_stored(tiny_web_data, recs[p], 1, 16))
    assert valid.all() and reasons == [""] * 5
    # a subset of a subset maps back to the same rows of the one store; nothing is copied
    sub = full.subset(np.array([150, 3, 42, 17]))
    subsub = sub.subset(np.array([2, 0]))
    assert sub.store is full.store and subsub.store is full.store
    assert [r.id for r in subsub.records] == [recs[42].id, recs[150].id]
    np.testing.assert_array_equal(subsub.fetch(np.array([1, 0]), "skip")[0].numpy(),
                                  full.fetch(np.array([150, 42]), "skip")[0].numpy())


def test_batch_dataset_subset_keeps_split_indices_targets_and_anchors(tiny_web_data, tmp_path):
    recs = read_split(tiny_web_data, "train").records
    idx = np.array([3, 10, 42])
    images = _images(tiny_web_data, recs, tmp_path, mode="ram").subset(idx)
    ds = BatchTrainDataset(images, 10, size=16, indices=idx, targets=np.array([9, 8, 7]),
                           domain=np.array([1, 0, 1]))
    batch = ds[[2, 0, 1]]
    assert batch["index"].tolist() == [42, 3, 10] and batch["target"].tolist() == [7, 9, 8]
    assert batch["anchor"].tolist() == [True, True, False] and batch["raw"].dtype == torch.uint8
    views = ds.finish_batch(dict(batch))
    assert views["img"].shape == (3, 1, 16, 16) and views["img_aug"].shape == (3, 1, 16, 16)
    # a sample's views come from its split index, not from its place in the subset or batch
    again = ds.finish_batch(dict(ds[[0]]))
    assert torch.allclose(again["img"][0], views["img"][1]) and "raw" not in again
