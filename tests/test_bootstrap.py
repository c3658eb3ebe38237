import math

import pytest
import torch
import torch.nn.functional as F

from capro import bootstrap


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1)


def _collective_loop(z, keys, key_probs, *, renormalise):
    """Per-sample reference over the whole queue, written with plain Python loops."""
    out = []
    for i in range(z.shape[0]):
        a = [min(max(float(z[i] @ keys[j]), 0.0), 1.0) + 1e-7 for j in range(keys.shape[0])]
        total = sum(a)
        b = [sum(a[j] / total * float(key_probs[j, c]) for j in range(keys.shape[0]))
             for c in range(key_probs.shape[1])]
        b = [min(max(v, 0.0), 1.0) for v in b]
        if renormalise:
            s = sum(b)
            b = [v / s for v in b]
        out.append(b)
    return torch.tensor(out, dtype=torch.float64)


def test_key_predictions_mix_and_uniform_when_no_prototypes(gen):
    aux = torch.randn(6, 4, generator=gen)
    proto = torch.randn(6, 4, generator=gen)
    got = bootstrap.key_predictions(aux, proto, alpha=0.3)
    assert torch.allclose(got, 0.3 * F.softmax(aux, 1) + 0.7 * F.softmax(proto, 1), atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(6))
    none = bootstrap.key_predictions(aux, None, alpha=0.5)
    assert torch.allclose(none, 0.5 * F.softmax(aux, 1) + 0.5 / 4, atol=1e-6)


def test_collective_target_matches_loop_and_is_detached(gen):
    z = F.normalize(torch.randn(5, 8, generator=gen), dim=1).requires_grad_()
    keys = F.normalize(torch.randn(12, 8, generator=gen), dim=1)
    key_probs = F.softmax(torch.randn(12, 3, generator=gen), 1)
    got = bootstrap.collective_target(z, keys, key_probs)
    ref = _collective_loop(z.detach(), keys, key_probs, renormalise=True)
    assert torch.allclose(got.double(), ref, atol=1e-6)
    assert not got.requires_grad
    assert torch.allclose(got.sum(1), torch.ones(5), atol=1e-6)


def test_collective_target_hand_case():
    # Key 0 is z itself (sim 1), key 1 is orthogonal (sim 0), key 2 is opposite (clamped to 0).
    z = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    key_probs = torch.tensor([[0.8, 0.2], [0.0, 1.0], [0.0, 1.0]])
    got = bootstrap.collective_target(z, keys, key_probs)
    a = torch.tensor([1 + 1e-7, 1e-7, 1e-7], dtype=torch.float64)
    w = a / a.sum()
    expected = (w.unsqueeze(0) @ key_probs.double()).squeeze(0)
    assert torch.allclose(got[0].double(), expected, atol=1e-6)
    assert got[0, 0].item() == pytest.approx(0.8, abs=1e-6)


def test_self_and_label_smoothing_targets(gen):
    logits = torch.randn(3, 4, generator=gen, requires_grad=True)
    st = bootstrap.self_target(logits)
    assert not st.requires_grad and torch.allclose(st, F.softmax(logits.detach(), 1))
    ls = bootstrap.label_smoothing_target(torch.tensor([2, 0]), 4, eps=0.2)
    assert torch.allclose(ls, torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]]))


def _ncr_loop(z, probs, k, temperature):
    zn = F.normalize(z, dim=1)
    n = z.shape[0]
    k = min(k, n - 1)
    out = []
    for i in range(n):
        sims = sorted(((float(zn[i] @ zn[j]), j) for j in range(n) if j != i), reverse=True)[:k]
        ex = [math.exp(s / temperature) for s, _ in sims]
        tot = sum(ex)
        out.append([sum(e / tot * float(probs[j, c]) for e, (_, j) in zip(ex, sims))
                    for c in range(probs.shape[1])])
    return torch.tensor(out)


@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_ncr_target_matches_loop(gen, k):
    z = torch.randn(9, 6, generator=gen)
    probs = F.softmax(torch.randn(9, 4, generator=gen), 1)
    got = bootstrap.ncr_target(z, probs, k=k, temperature=2.0)
    assert torch.allclose(got, _ncr_loop(z, probs, k, 2.0), atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(9), atol=1e-6)


def test_ncr_target_single_sample_returns_own_prediction():
    probs = torch.tensor([[0.2, 0.8]])
    assert torch.equal(bootstrap.ncr_target(torch.ones(1, 3), probs), probs)


def test_multilabel_key_predictions_and_target(gen):
    aux = torch.randn(10, 3, generator=gen)
    pos = torch.rand(10, 3, generator=gen)
    kp = bootstrap.key_predictions_multilabel(aux, pos, alpha=0.5)
    assert torch.allclose(kp, 0.5 * torch.sigmoid(aux) + 0.5 * pos)
    kp_none = bootstrap.key_predictions_multilabel(aux, None, alpha=0.25)
    assert torch.allclose(kp_none, 0.25 * torch.sigmoid(aux) + 0.375)
    z = F.normalize(torch.randn(4, 5, generator=gen), dim=1)
    keys = F.normalize(torch.randn(10, 5, generator=gen), dim=1)
    got = bootstrap.collective_target_multilabel(z, keys, kp)
    ref = _collective_loop(z, keys, kp, renormalise=False)
    assert torch.allclose(got.double(), ref, atol=1e-6)
    assert not torch.allclose(got.sum(1), torch.ones(4))


def test_half_precision_inputs_give_float32_targets(gen):
    z = F.normalize(torch.randn(4, 8, generator=gen), dim=1)
    keys = F.normalize(torch.randn(64, 8, generator=gen), dim=1)
    aux = torch.randn(64, 5, generator=gen)
    ref = bootstrap.collective_target(z, keys, bootstrap.key_predictions(aux, None, alpha=0.5))
    kp16 = bootstrap.key_predictions(aux.half(), None, alpha=0.5)
    got = bootstrap.collective_target(z.half(), keys.half(), kp16)
    assert kp16.dtype == torch.float32 and got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=5e-3)
    assert torch.allclose(got.sum(1), torch.ones(4), atol=1e-6)
