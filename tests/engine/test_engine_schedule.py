import math

import pytest
import torch

from capro.engine.schedule import epoch_lr, set_lr


@pytest.mark.parametrize(("epoch", "expected"), [
    (0, 0.01), (1, 0.01), (5, 0.05), (10, 0.1),
    (65, 0.1 * 0.5 * (1 + math.cos(math.pi * 55 / 110))),
    (119, 0.1 * 0.5 * (1 + math.cos(math.pi * 109 / 110))),
])
def test_warmup_then_cosine_as_released(epoch, expected):
    # WebVision stage 1: 120 epochs, base 0.1, 10 warm-up epochs (capro-method.md §4.1)
    assert epoch_lr(epoch, base_lr=0.1, warmup=10, epochs=120) == pytest.approx(expected, rel=1e-12)


def test_no_warmup_starts_at_base_and_decays():
    lrs = [epoch_lr(e, base_lr=1e-4, warmup=0, epochs=15) for e in range(15)]
    assert lrs[0] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi * 14 / 15)))


def test_set_lr_updates_every_group():
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                           {"params": [torch.zeros(1, requires_grad=True)], "lr": 5.0}], lr=1.0)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]
