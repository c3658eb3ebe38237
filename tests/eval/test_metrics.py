import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from capro.eval.metrics import confusion_matrix, topk_accuracy


def test_topk_accuracy_matches_torch_topk_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 20, generator=g)
    target = torch.randint(0, 20, (500,), generator=g)
    top = logits.topk(5, dim=1).indices
    ref = {k: (top[:, :k] == target[:, None]).any(1).double().mean().item() for k in (1, 3, 5)}
    got = topk_accuracy(logits, target, ks=(1, 3, 5))
    assert got == pytest.approx({f"top{k}": v for k, v in ref.items()}, abs=1e-12)
    assert topk_accuracy(logits.numpy(), target.numpy(), ks=(1, 3, 5)) == got


def test_topk_accuracy_hand_case_ties_and_clipping():
    logits = np.array([[0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    target = np.array([1, 0, 1, 0])
    # row 1: tie, target 0 has the lower index -> rank 0; row 2: target 1 -> rank 1.
    got = topk_accuracy(logits, target, ks=(1, 2, 5))
    assert got == {"top1": 0.5, "top2": 0.75, "top5": 1.0}


def test_topk_accuracy_empty_is_nan():
    got = topk_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int))
    assert np.isnan(got["top1"]) and np.isnan(got["top5"])


def test_confusion_matrix_matches_sklearn():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 6, 300)
    pred = rng.integers(0, 6, 300)
    pred[:3] = 5  # make sure a class can be predicted but absent from targets
    got = confusion_matrix(torch.from_numpy(pred), target, 7)
    assert np.array_equal(got, sk_confusion_matrix(target, pred, labels=np.arange(7)))
