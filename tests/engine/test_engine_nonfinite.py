"""check_finite: messages naming stage, epoch, step and term; stop vs skip; DDP agreement (gloo)."""

from __future__ import annotations

import math

import pytest
import torch
from _gloo import run_gloo

from capro.engine.nonfinite import NonFiniteLoss, check_finite, nonfinite_terms
from capro.errors import CaproError

FINITE = {"inst": torch.tensor(1.5), "proto": torch.tensor(0.25), "cls": torch.tensor([0.1, 2.0])}


def test_all_finite_returns_true_for_both_policies():
    for policy in ("stop", "skip"):
        assert check_finite(FINITE, step=1, epoch=0, stage="stage1", policy=policy) is True
    assert check_finite({}, step=0, epoch=0, stage="stage1") is True
    assert check_finite({"loss": 3.0, "n": torch.tensor(7)}, step=0, epoch=0, stage="s") is True


def test_stop_raises_with_the_exact_message():
    terms = {**FINITE, "proto": torch.tensor(float("nan"))}
    with pytest.raises(NonFiniteLoss) as info:
        check_finite(terms, step=120, epoch=3, stage="stage2", policy="stop")
    err = info.value
    assert isinstance(err, CaproError) and err.exit_code == 1
    assert str(err) == ("stage2 epoch 3 step 120: loss term 'proto' is nan; lower the learning rate, "
                        "check the data, or set train.on_nonfinite=skip")
    assert (err.stage, err.epoch, err.step, err.bad) == ("stage2", 3, 120, {"proto": "nan"})
    assert "\n" not in str(err)


def test_several_bad_terms_are_named_in_order_with_their_kind():
    terms = {"inst": torch.tensor([1.0, -math.inf]), "recn": torch.tensor(2.0),
             "cls": torch.tensor([math.inf, math.nan]), "loss": math.inf}
    assert nonfinite_terms(terms) == {"inst": "-inf", "cls": "nan", "loss": "inf"}
    with pytest.raises(NonFiniteLoss, match=r"^stage3 epoch 0 step 7: loss terms 'inst' \(-inf\), "
                                            r"'cls' \(nan\), 'loss' \(inf\) are not finite; "):
        check_finite(terms, step=7, epoch=0, stage="stage3")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_tensors(dtype):
    assert check_finite({"x": torch.ones(3, dtype=dtype)}, step=0, epoch=0, stage="s")
    big = torch.tensor([70000.0]).to(dtype)  # overflows float16 only
    expect_ok = dtype != torch.float16
    assert check_finite({"x": big}, step=0, epoch=0, stage="s", policy="skip") is expect_ok


def test_skip_returns_false_and_warns_once_with_one_line():
    lines: list[str] = []
    terms = {"inst": torch.tensor(0.5), "loss": torch.tensor(math.inf)}
    ok = check_finite(terms, step=4, epoch=2, stage="stage1", policy="skip", warn=lines.append)
    assert ok is False
    assert lines == ["stage1 epoch 2 step 4: loss term 'loss' is inf; batch skipped "
                     "(train.on_nonfinite=skip)"]
    assert check_finite(FINITE, step=5, epoch=2, stage="stage1", policy="skip",
                        warn=lines.append) is True
    assert len(lines) == 1


def test_grad_carrying_terms_are_not_modified():
    w = torch.tensor(2.0, requires_grad=True)
    loss = w * 3
    assert check_finite({"loss": loss}, step=0, epoch=0, stage="s")
    loss.backward()
    assert w.grad.item() == 3.0


def test_unknown_policy_is_a_programming_error():
    with pytest.raises(ValueError, match="policy"):
        check_finite(FINITE, step=0, epoch=0, stage="s", policy="ignore")


def _rank_check(rank: int) -> list:
    """Rank 1 alone sees a nan in 'proto'; both ranks must reach the same verdict."""
    value = math.nan if rank == 1 else 0.5
    terms = {"inst": torch.tensor(1.0), "proto": torch.tensor(value)}
    skip = check_finite(terms, step=9, epoch=1, stage="stage2", policy="skip")
    local = check_finite(terms, step=9, epoch=1, stage="stage2", policy="skip", sync=False)
    try:
        check_finite(terms, step=9, epoch=1, stage="stage2", policy="stop")
        stopped = ""
    except NonFiniteLoss as exc:
        stopped = str(exc)
    fine = check_finite({"inst": torch.tensor(1.0)}, step=10, epoch=1, stage="stage2")
    return [skip, local, stopped, fine]


def test_ddp_ranks_agree_when_only_one_rank_is_nonfinite():
    r0, r1 = run_gloo(_rank_check, world=2)
    msg = ("stage2 epoch 1 step 9: loss term 'proto' is nan; lower the learning rate, "
           "check the data, or set train.on_nonfinite=skip")
    assert r0 == [False, True, msg, True]
    assert r1 == [False, False, msg, True]
