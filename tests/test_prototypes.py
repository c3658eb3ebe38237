import pytest
import torch
import torch.nn.functional as F

from capro.prototypes import (
    init_prototypes,
    init_prototypes_multilabel,
    momentum_update,
    momentum_update_multilabel,
)


def sequential_update(prototypes, z, labels, momentum):
    """The released rule, one sample at a time, then row L2-normalisation (zero rows stay zero)."""
    p = prototypes.clone()
    for i in range(z.shape[0]):
        c = int(labels[i])
        p[c] = momentum * p[c] + (1 - momentum) * z[i]
    norms = p.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, p / norms.clamp(min=1e-30), p)


def sequential_update_multilabel(prototypes, zc, target, momentum):
    p = prototypes.clone()
    for i in range(zc.shape[0]):
        for c in range(zc.shape[1]):
            v = int(target[i, c])
            if v < 0:
                continue
            p[c, v] = momentum * p[c, v] + (1 - momentum) * zc[i, c]
    norms = p.norm(dim=2, keepdim=True)
    return torch.where(norms > 0, p / norms.clamp(min=1e-30), p)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 0.999])
def test_momentum_update_equals_sequential_loop(momentum):
    g = torch.Generator().manual_seed(0)
    c, d, n = 7, 16, 300
    protos = F.normalize(torch.randn(c, d, generator=g), dim=1)
    protos[3] = 0.0  # never initialised and never updated: stays zero
    protos[5] = 0.0  # zero, but receives samples
    z = F.normalize(torch.randn(n, d, generator=g), dim=1)
    labels = torch.randint(0, c, (n,), generator=g)
    labels[labels == 3] = 5
    got = momentum_update(protos, z, labels, momentum=momentum)
    ref = sequential_update(protos, z, labels, momentum)
    assert (got - ref).abs().max().item() < 1e-6
    assert torch.equal(got[3], torch.zeros(d))
    assert torch.equal(protos[5], torch.zeros(d))  # input not modified


def test_momentum_update_long_single_class_run_and_float64():
    g = torch.Generator().manual_seed(1)
    protos = F.normalize(torch.randn(2, 8, generator=g, dtype=torch.float64), dim=1)
    z = F.normalize(torch.randn(2000, 8, generator=g, dtype=torch.float64), dim=1)
    labels = torch.zeros(2000, dtype=torch.long)
    got = momentum_update(protos, z, labels, momentum=0.999)
    ref = sequential_update(protos, z, labels, 0.999)
    assert got.dtype == torch.float64
    assert (got - ref).abs().max().item() < 1e-12
    assert torch.allclose(got[1], protos[1])


def test_momentum_update_without_samples_only_normalises():
    protos = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    got = momentum_update(protos, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), momentum=0.9)
    assert torch.allclose(got, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


def test_init_prototypes_mean_and_missing_classes():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, -3.0]])
    labels = torch.tensor([0, 0, 2, 2])
    p, present = init_prototypes(z, labels, 4)
    s = 2**-0.5
    assert torch.allclose(p, torch.tensor([[s, s], [0.0, 0.0], [2 / 13**0.5, -3 / 13**0.5], [0, 0]]))
    assert present.tolist() == [True, False, True, False]


def test_multilabel_init_and_update_match_loops():
    g = torch.Generator().manual_seed(2)
    n, c, d = 40, 5, 6
    zc = F.normalize(torch.randn(n, c, d, generator=g), dim=2)
    target = torch.randint(-1, 2, (n, c), generator=g).float()
    target[:, 4] = torch.where(target[:, 4] == 0, torch.tensor(1.0), target[:, 4])  # no neg for c4

    p, present = init_prototypes_multilabel(zc, target)
    assert p.shape == (c, 2, d) and present.shape == (c, 2)
    for k in range(c):
        for v in (0, 1):
            rows = zc[target[:, k] == v, k]
            assert bool(present[k, v]) == (rows.shape[0] > 0)
            if rows.shape[0]:
                assert torch.allclose(p[k, v], F.normalize(rows.mean(0), dim=0), atol=1e-6)
            else:
                assert torch.equal(p[k, v], torch.zeros(d))

    zc2 = F.normalize(torch.randn(n, c, d, generator=g), dim=2)
    target2 = torch.randint(-1, 2, (n, c), generator=g).float()
    got = momentum_update_multilabel(p, zc2, target2, momentum=0.9)
    ref = sequential_update_multilabel(p, zc2, target2, 0.9)
    assert (got - ref).abs().max().item() < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    from capro.bootstrap import collective_target, key_predictions
    from capro.cleaning import clean_batch

    g = torch.Generator().manual_seed(4)
    protos = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    z = F.normalize(torch.randn(100, 8, generator=g), dim=1)
    labels = torch.randint(0, 6, (100,), generator=g)
    cpu = momentum_update(protos, z, labels, momentum=0.99)
    gpu = momentum_update(protos.cuda(), z.cuda(), labels.cuda(), momentum=0.99)
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-6)
    kp = key_predictions(torch.randn(50, 6, generator=g), None, alpha=0.5)
    keys = z[:50]
    b_cpu = collective_target(z, keys, kp)
    b_gpu = collective_target(z.cuda(), keys.cuda(), kp.cuda())
    assert torch.allclose(b_gpu.cpu(), b_cpu, atol=1e-5)
    r_cpu = clean_batch(b_cpu, labels, pseudo_th=0.3)
    r_gpu = clean_batch(b_cpu.cuda(), labels.cuda(), pseudo_th=0.3)
    assert torch.equal(r_gpu.target.cpu(), r_cpu.target)
    assert torch.equal(r_gpu.clean.cpu(), r_cpu.clean)
