"""Regression test: the instance loss must not collapse the embedding z to one direction.

With the key computed by the query's own projection head (``key_head="shared"``, the released
code) and a stop-gradient key, each step pulls every query towards a key made by the same head,
and z collapses to a constant within a few steps (mean pairwise cosine > 0.9999, loss_inst
climbing to ln(Q + 1)). The momentum key head (``key_head="momentum"``, the default) must not.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from capro.errors import ConfigError
from capro.model.capro import CAPro, StepFlags

C, B, Q, D, STEPS = 4, 32, 256, 16, 60
FILLED = Q // B  # steps after which the random initial queue has been replaced by real keys


def _view(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random shift of up to 2 px plus pixel noise."""
    shift = torch.randint(-2, 3, (2,), generator=g).tolist()
    return torch.roll(x, shifts=shift, dims=(-2, -1)) + 0.3 * torch.randn(x.shape, generator=g)


def _train(key_head: str, seed: int = 0) -> tuple[list[float], list[float]]:
    """STEPS CAPro steps (lr 0.1, as the cpu preset) on 4 noisy 16 px class patterns.

    Returns per-step loss_inst and the mean pairwise cosine of the batch's query embeddings.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    patterns = F.avg_pool2d(torch.randn(C, 1, 20, 20, generator=g), 5, stride=1)
    model = CAPro(num_classes=C, backbone="simple_cnn", in_chans=1, low_dim=D, queue_size=Q,
                  key_head=key_head)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    flags = StepFlags()
    inst, cos = [], []
    for _ in range(STEPS):
        y = torch.randint(0, C, (B,), generator=g)
        x = patterns[y] + 0.5 * torch.randn(B, 1, 16, 16, generator=g)
        batch = {"img": _view(x, g), "img_aug": _view(x, g), "target": y,
                 "anchor": torch.zeros(B, dtype=torch.bool)}
        out = model.training_step(batch, flags)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        inst.append(float(out.terms["inst"]))
        with torch.no_grad():
            z = model.embed(batch["img"])
        cos.append(float(((z @ z.t()).sum() - B) / (B * (B - 1))))
    return inst, cos


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[list[float], list[float]]]:
    return {head: _train(head) for head in ("momentum", "shared")}


def test_momentum_key_head_does_not_collapse(runs):
    inst, cos = runs["momentum"]
    # The first steps start near-collapsed (cos ~0.99: pooled ReLU features are all positive);
    # a working contrastive loss spreads the embeddings out again. Measured: 0.42 over the last
    # 10 steps, against > 0.9999 for the collapsed head.
    assert _mean(cos[-10:]) < 0.7
    # Once the queue holds real keys, loss_inst must go down (measured 5.27 -> 4.92), not climb
    # to ln(Q + 1) = 5.55.
    assert _mean(inst[-10:]) < _mean(inst[FILLED:FILLED + 10]) - 0.15
    assert _mean(inst[-10:]) < math.log(Q + 1) - 0.4


def test_shared_key_head_collapses(runs):
    """The released head collapses here: the bounds above do discriminate."""
    inst, cos = runs["shared"]
    assert _mean(cos[-10:]) > 0.999
    assert _mean(inst[-10:]) > math.log(Q + 1) - 0.1


def test_momentum_key_head_follows_query_head():
    torch.manual_seed(0)
    m = CAPro(num_classes=C, backbone="simple_cnn", in_chans=1, low_dim=D, queue_size=Q,
              moco_m=0.9)
    assert not any(p.requires_grad for p in m.projection_k.parameters())
    with torch.no_grad():
        for p in m.projection.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.projection_k.parameters()]
    m._momentum_update_key_encoder()
    for pk, pk0, pq in zip(m.projection_k.parameters(), before, m.projection.parameters(),
                           strict=True):
        assert torch.allclose(pk, 0.9 * pk0 + 0.1 * pq)
    shared = CAPro(num_classes=C, backbone="simple_cnn", in_chans=1, low_dim=D, queue_size=Q,
                   key_head="shared")
    assert not hasattr(shared, "projection_k")


def test_unknown_key_head():
    with pytest.raises(ConfigError, match="key_head"):
        CAPro(num_classes=C, backbone="simple_cnn", in_chans=1, key_head="frozen")
