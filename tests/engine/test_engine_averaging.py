"""D22: the stage weight average (``stage*.ema_epochs``) against a reference loop, and in a run:
scored, kept in ``best.pt``, handed on, and resumed after SIGKILL."""

import csv

import pytest
import torch
from test_engine_resume import TINY_RUN_OVERRIDES, kill_in
from torch import nn

from capro.engine.averaging import WeightAverage, averaged_keys, ema_decay, ema_horizon


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder_q = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
        self.encoder_k = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
        self.projection_k = nn.Linear(2, 2)
        self.register_buffer("queue", torch.zeros(4, 2))


def test_averaged_keys_are_the_inference_weights_and_bn_statistics():
    keys = averaged_keys(_Toy())
    assert keys == ["encoder_q.0.weight", "encoder_q.0.bias", "encoder_q.1.weight", "encoder_q.1.bias",
                    "encoder_q.1.running_mean", "encoder_q.1.running_var"]


def test_ema_horizon_is_capped_at_a_share_of_the_stage():
    # D24: the long protocol's 110-epoch stage 2 keeps D22's 5 epochs; the cpu preset's 8 get 0.4
    assert ema_horizon(5, 110, 0.05) == 5.0
    assert ema_horizon(5, 8, 0.05) == pytest.approx(0.4)
    assert ema_horizon(0, 8, 0.05) == 0.0 and ema_horizon(5, 8, 1.0) == 5.0


def test_ema_decay_by_hand():
    assert ema_decay(5, 16) == pytest.approx(1 - 1 / 80)
    assert ema_decay(0.01, 1) == 0.0  # shorter than a step: the average is the last step's weights


def test_update_matches_a_reference_loop_and_applied_restores_the_live_weights():
    torch.manual_seed(0)
    model = _Toy()
    avg = WeightAverage(model, decay=0.75)
    ref = {k: v.clone() for k, v in model.state_dict().items() if k in avg.keys}
    for t in range(5):
        with torch.no_grad():
            for p in model.encoder_q.parameters():
                p.add_(torch.randn_like(p))
            model.encoder_q[1].running_mean.add_(1.0)
            model.encoder_k[0].weight.add_(5.0)
        avg.update(model)
        live = model.state_dict()
        d = [0.0, 1 / 2, 2 / 3, 0.75, 0.75][t]  # the plain mean of the steps until the decay takes over
        ref = {k: d * ref[k] + (1 - d) * live[k] for k in ref}
    for k in ref:
        assert torch.allclose(avg.shadow[k], ref[k], atol=1e-6), k
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with avg.applied(model) as m:
        inside = m.state_dict()
        for k in ref:
            assert torch.allclose(inside[k], ref[k], atol=1e-6), k
        assert torch.equal(inside["encoder_k.0.weight"], live["encoder_k.0.weight"])  # not averaged
    for k, v in model.state_dict().items():
        assert torch.equal(v, live[k]), k
    fresh = WeightAverage(_Toy(), decay=0.75)
    fresh.load_state_dict(avg.state_dict())
    assert all(torch.equal(fresh.shadow[k], avg.shadow[k]) for k in ref) and fresh.updates == 5


def _val_column(log) -> list[float]:
    with open(log, encoding="utf-8", newline="") as fh:
        return [float(r["val_top1"]) for r in csv.DictReader(fh)]


def test_a_run_scores_keeps_and_hands_on_the_average(tiny_web_data, tmp_path, capsys):
    from capro.config import load_config
    from capro.data.batched import make_eval_dataset
    from capro.data.layout import read_split
    from capro.engine.evaluate import evaluate_model
    from capro.engine.runner import load_run_model, run_pipeline
    from capro.engine.stages import load_weights

    cfg = load_config(preset="tiny", overrides=[*TINY_RUN_OVERRIDES, "stage2.ema_epochs=1", "stage2.epochs=4",
                                                "stage2.ema_max_share=1",
                                                "stage3.epochs=0", "train.keep=last"])

    run = tmp_path / "run"
    run_pipeline(tiny_web_data, run, cfg, progress=False)
    assert "stage2: scores and hands on its weights averaged over about 1 epochs (stage2.ema_epochs, D22)" \
        in capsys.readouterr().err
    last = torch.load(run / "stage2" / "last.pt", weights_only=True)
    final = torch.load(run / "model.pt", weights_only=True)["model"]
    keys = list(last["average"]["weights"])
    assert keys and "encoder_k.0.weight" not in keys
    for k in keys:  # the run ends on the average, not on the last step's weights
        assert torch.equal(final[k], last["average"]["weights"][k]), k
    assert any(not torch.equal(last["model"][k], last["average"]["weights"][k]) for k in keys)
    # best.pt holds the weights that were scored: re-scoring them gives its log.csv value
    best = torch.load(run / "stage2" / "best.pt", weights_only=True)
    assert best["score"] == max(_val_column(run / "stage2" / "log.csv"))
    model, classes, rcfg, _ = load_run_model(run)
    load_weights(model, best["model"])
    val = read_split(tiny_web_data, "val", classes=classes)
    ds = make_eval_dataset(rcfg, tiny_web_data, val.records, len(classes), multi_label=False)
    got = evaluate_model(model, ds, multi_label=False, device=torch.device("cpu"), batch_size=128)
    assert got["top1"] == pytest.approx(best["score"])


def test_sigkill_inside_an_averaged_stage2_then_resume_matches_uninterrupted(tiny_web_data, tmp_path):
    from _launch import assert_resume_matches

    cmd, run, ref_run, ref = kill_in(tiny_web_data, tmp_path, ["stage2.ema_epochs=2", "stage2.ema_max_share=1",
                                                              "stage3.epochs=0"], "stage2")
    assert_resume_matches(cmd, run, ref_run, ref)
