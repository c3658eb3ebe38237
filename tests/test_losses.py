import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from capro import losses


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def _ce_loop(logits, target):
    """Per-sample CE by hand: logsumexp - logit of the target."""
    out = []
    for i in range(logits.shape[0]):
        row = logits[i].tolist()
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        out.append(lse - row[int(target[i])])
    return out


def test_classification_loss_matches_cross_entropy(gen):
    logits = torch.randn(7, 5, generator=gen)
    target = torch.randint(0, 5, (7,), generator=gen)
    got = losses.classification_loss(logits, target)
    assert torch.allclose(got, F.cross_entropy(logits, target), atol=1e-6)


def test_classification_loss_weight_is_per_sample_not_outer_product(gen):
    logits = torch.randn(6, 4, generator=gen)
    target = torch.randint(0, 4, (6,), generator=gen)
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 0.0, 3.0])
    per = _ce_loop(logits, target)
    expected = sum(wi * li for wi, li in zip(w.tolist(), per)) / 6
    got = losses.classification_loss(logits, target, weight=w)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    quirk = np.mean(per) * w.mean().item()
    assert abs(got.item() - quirk) > 1e-3


@pytest.mark.parametrize(
    "call",
    [
        lambda lg, t: losses.classification_loss(lg, t),
        lambda lg, t: losses.soft_target_loss(lg, F.softmax(lg.detach(), 1)),
        lambda lg, t: losses.auxiliary_loss(lg, t, F.softmax(lg.detach(), 1), beta=0.3),
        lambda lg, t: losses.prototype_loss(lg, torch.eye(3), t, temperature=0.1),
        lambda lg, t: losses.reconstruction_loss(lg, torch.zeros_like(lg)),
        lambda lg, t: losses.mixup_loss(lg, t, t, 0.3),
        lambda lg, t: losses.instance_loss(lg, lg.detach(), torch.ones(4, 3), temperature=0.1),
        lambda lg, t: losses.multilabel_bce(lg, torch.ones_like(lg)),
        lambda lg, t: losses.soft_bce(lg, torch.ones_like(lg)),
    ],
)
def test_empty_batch_gives_zero_with_gradient(call):
    logits = torch.zeros(0, 3, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long)
    loss = call(logits, target)
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.shape == (0, 3)


def test_soft_target_loss_hand_and_no_grad_through_soft(gen):
    logits = torch.randn(5, 4, generator=gen, requires_grad=True)
    soft = F.softmax(torch.randn(5, 4, generator=gen), 1).requires_grad_()
    w = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.5])
    got = losses.soft_target_loss(logits, soft, weight=w)
    logp = F.log_softmax(logits.detach(), 1)
    expected = sum(-(soft[i].detach() * logp[i]).sum().item() * w[i].item() for i in range(5)) / 5
    assert got.item() == pytest.approx(expected, abs=1e-6)
    got.backward()
    assert soft.grad is None and logits.grad is not None


def test_soft_target_with_one_hot_equals_ce(gen):
    logits = torch.randn(8, 6, generator=gen)
    target = torch.randint(0, 6, (8,), generator=gen)
    soft = F.one_hot(target, 6).float()
    assert torch.allclose(losses.soft_target_loss(logits, soft), F.cross_entropy(logits, target))


def test_auxiliary_loss_mixes_ce_and_soft(gen):
    logits = torch.randn(5, 3, generator=gen)
    target = torch.randint(0, 3, (5,), generator=gen)
    soft = F.softmax(torch.randn(5, 3, generator=gen), 1)
    w = torch.tensor([1.0, 2.0, 0.0, 1.0, 1.0])
    beta = 0.1
    ce = _ce_loop(logits, target)
    sl = [-(soft[i] * F.log_softmax(logits[i], 0)).sum().item() for i in range(5)]
    expected = sum(w[i].item() * ((1 - beta) * ce[i] + beta * sl[i]) for i in range(5)) / 5
    got = losses.auxiliary_loss(logits, target, soft, beta=beta, weight=w)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    plain = losses.auxiliary_loss(logits, target, None, beta=beta)
    assert plain.item() == pytest.approx(np.mean(ce), abs=1e-6)


def test_instance_loss_loop_reference(gen):
    b, d, q = 4, 8, 10
    qv = F.normalize(torch.randn(b, d, generator=gen), dim=1)
    kv = F.normalize(torch.randn(b, d, generator=gen), dim=1)
    queue = F.normalize(torch.randn(q, d, generator=gen), dim=1)
    t = 0.2
    total = 0.0
    for i in range(b):
        row = [float(qv[i] @ kv[i]) / t] + [float(qv[i] @ queue[j]) / t for j in range(q)]
        m = max(row)
        total += m + math.log(sum(math.exp(v - m) for v in row)) - row[0]
    got = losses.instance_loss(qv, kv, queue, temperature=t)
    assert got.item() == pytest.approx(total / b, abs=1e-5)


def test_prototype_loss_matches_cross_entropy(gen):
    z = F.normalize(torch.randn(6, 5, generator=gen), dim=1)
    protos = F.normalize(torch.randn(3, 5, generator=gen), dim=1)
    target = torch.randint(0, 3, (6,), generator=gen)
    w = torch.arange(6, dtype=torch.float32)
    got = losses.prototype_loss(z, protos, target, temperature=0.1, weight=w)
    per = F.cross_entropy(z @ protos.t() / 0.1, target, reduction="none")
    assert got.item() == pytest.approx((per * w).sum().item() / 6, abs=1e-5)


def test_reconstruction_loss_and_detached_features(gen):
    recon = torch.randn(4, 6, generator=gen, requires_grad=True)
    feats = torch.randn(4, 6, generator=gen, requires_grad=True)
    got = losses.reconstruction_loss(recon, feats)
    assert torch.allclose(got, F.mse_loss(recon, feats))
    got.backward()
    assert feats.grad is None
    w = torch.tensor([0.0, 1.0, 3.0, 1.0])
    per = ((recon.detach() - feats.detach()) ** 2).mean(1)
    weighted = losses.reconstruction_loss(recon, feats, weight=w)
    assert weighted.item() == pytest.approx((per * w).sum().item() / 4, abs=1e-6)


def test_mixup_loss(gen):
    logits = torch.randn(5, 4, generator=gen)
    a = torch.randint(0, 4, (5,), generator=gen)
    b = torch.randint(0, 4, (5,), generator=gen)
    got = losses.mixup_loss(logits, a, b, 0.3)
    expected = 0.3 * np.mean(_ce_loop(logits, a)) + 0.7 * np.mean(_ce_loop(logits, b))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_multilabel_bce_hand_case():
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    target = torch.tensor([[1.0, -1.0], [0.0, 1.0]])
    pw = torch.tensor([3.0, 2.0])
    got = losses.multilabel_bce(logits, target, pos_weight=pw)
    s0 = 3.0 * math.log(2.0)
    s1 = (math.log(1 + math.exp(2.0)) + 2.0 * math.log(1 + math.exp(1.0))) / 2
    assert got.item() == pytest.approx((s0 + s1) / 2, abs=1e-6)


def test_multilabel_bce_without_mask_matches_torch_and_loop(gen):
    logits = torch.randn(6, 5, generator=gen)
    target = (torch.rand(6, 5, generator=gen) > 0.5).float()
    pw = torch.rand(5, generator=gen) * 3
    ref = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)
    assert torch.allclose(losses.multilabel_bce(logits, target, pos_weight=pw), ref, atol=1e-6)
    target[0, :2] = -1
    target[3] = -1
    w = torch.tensor([1.0, 2.0, 0.5, 4.0, 1.0, 0.0])
    total = 0.0
    for i in range(6):
        vals = []
        for c in range(5):
            if target[i, c] < 0:
                continue
            sig = torch.sigmoid(logits[i, c]).item()
            y = target[i, c].item()
            vals.append(-(pw[c].item() * y * math.log(sig) + (1 - y) * math.log(1 - sig)))
        total += w[i].item() * (np.mean(vals) if vals else 0.0)
    got = losses.multilabel_bce(logits, target, pos_weight=pw, weight=w)
    assert got.item() == pytest.approx(total / 6, abs=1e-5)


def test_soft_bce_has_both_terms_and_masks(gen):
    assert losses.soft_bce(torch.tensor([[1.5]]), torch.tensor([[0.0]])).item() == pytest.approx(
        math.log(1 + math.exp(1.5)), abs=1e-6
    )
    logits = torch.randn(4, 3, generator=gen)
    soft = torch.rand(4, 3, generator=gen)
    mask = torch.rand(4, 3, generator=gen) > 0.3
    w = torch.tensor([1.0, 0.5, 2.0, 1.0])
    num, den = 0.0, 0
    for i in range(4):
        for c in range(3):
            if not mask[i, c]:
                continue
            s = torch.sigmoid(logits[i, c]).item()
            b = soft[i, c].item()
            num += w[i].item() * -(b * math.log(s) + (1 - b) * math.log(1 - s))
            den += 1
    got = losses.soft_bce(logits, soft, mask=mask, weight=w)
    assert got.item() == pytest.approx(num / den, abs=1e-5)


def test_multilabel_prototype_loss_loop(gen):
    b, c = 5, 4
    pl = torch.randn(b, c, 2, generator=gen)
    target = torch.randint(-1, 2, (b, c), generator=gen).float()
    cw = torch.tensor([1.0, 2.5])
    w = torch.tensor([1.0, 2.0, 0.0, 1.0, 3.0])
    num, den = 0.0, 0
    for i in range(b):
        for k in range(c):
            y = int(target[i, k])
            if y < 0:
                continue
            ce = -F.log_softmax(pl[i, k], 0)[y].item()
            num += w[i].item() * cw[y].item() * ce
            den += 1
    got = losses.multilabel_prototype_loss(pl, target, class_weight=cw, weight=w)
    assert got.item() == pytest.approx(num / den, abs=1e-5)


def test_pos_weights_hand_values():
    got = losses.pos_weights(np.array([1, 4, 0, 10]), 10)
    expected = [math.sqrt(9), math.sqrt(6 / 4), math.sqrt(10), 0.0]
    assert got.dtype == torch.float32
    assert np.allclose(got.numpy(), expected)
    assert torch.allclose(losses.pos_weights(torch.tensor([1, 4, 0, 10]), 10), got)


def test_float64_inputs_stay_float64(gen):
    logits = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    out = losses.auxiliary_loss(logits, target, F.softmax(logits, 1), beta=0.5)
    assert out.dtype == torch.float64


def test_fully_masked_multilabel_losses_are_zero_with_gradient():
    logits = torch.randn(3, 4, requires_grad=True)
    target = -torch.ones(3, 4)
    total = losses.multilabel_bce(logits, target) + losses.multilabel_prototype_loss(
        torch.randn(3, 4, 2), target
    ) + losses.soft_bce(logits, torch.rand(3, 4), mask=torch.zeros(3, 4, dtype=torch.bool))
    assert total.item() == 0.0
    total.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 4))
