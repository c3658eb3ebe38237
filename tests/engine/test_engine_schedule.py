import math

import pytest
import torch

from capro.engine.schedule import epoch_lr, param_groups, set_lr


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


def _named():
    net = torch.nn.ModuleDict({"encoder_q": torch.nn.Linear(2, 2), "classifier": torch.nn.Linear(2, 3)})
    return list(net.named_parameters())


def test_param_groups_one_group_at_scale_one():
    named = _named()
    groups = param_groups(named, backbone_scale=1.0)
    assert len(groups) == 1 and [id(p) for p in groups[0]["params"]] == [id(p) for _, p in named]


def test_param_groups_backbone_at_its_share_heads_first():
    named = _named()
    opt = torch.optim.SGD(param_groups(named, backbone_scale=0.1), lr=1.0)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for k, p in named if k.startswith("encoder_q.")}
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])


def test_backbone_lr_zero_leaves_pretrained_backbone_untouched(tiny_web_data, tmp_path):
    from capro.config import load_config
    from capro.engine.checkpoint import load_checkpoint
    from capro.engine.runner import run_pipeline
    from capro.engine.stages import build_model

    ce = ["model.backbone=simple_cnn", "stage1.epochs=1", "stage2.epochs=0", "stage3.epochs=0",
          "method.bootstrap=none", "stage1.w_inst=0", "stage1.w_recn=0", "train.max_steps_per_epoch=2"]
    start = build_model(load_config(preset="tiny", overrides=[*ce, "seed=7", "data.channels=1"]), 10, multi_label=False)
    weights = tmp_path / "backbone.pt"
    torch.save(start.encoder_q.state_dict(), weights)
    for share, moved in ((0.0, False), (1.0, True)):
        run = tmp_path / f"run{share}"
        cfg = load_config(preset="tiny", overrides=[*ce, f"stage1.backbone_lr={share}",
                                                    f"model.pretrained={weights}"])
        run_pipeline(tiny_web_data, run, cfg, progress=False)
        trained = load_checkpoint(run / "stage1" / "last.pt")["model"]
        params = dict(start.encoder_q.named_parameters())
        same = [torch.equal(trained[f"encoder_q.{k}"], v) for k, v in params.items()]
        assert all(same) is not moved and any(same) is not moved
        assert not torch.equal(trained["classifier.weight"], start.classifier.weight)
