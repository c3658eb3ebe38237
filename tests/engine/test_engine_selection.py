"""Validation after every epoch and the kept epoch (``train.val_split``, ``train.keep``)."""

import csv

import numpy as np
import pytest
import torch

from capro.config import load_config
from capro.engine.checkpoint import load_checkpoint
from capro.engine.runner import load_run_model, run_pipeline
from capro.engine.selection import (
    BestEpoch,
    EpochScorer,
    close_call,
    describe_close_call,
    paired_error,
)
from capro.errors import CaproError

ONE_STAGE = ["model.backbone=simple_cnn", "stage1.epochs=4", "stage2.epochs=0", "stage3.epochs=0",
             "stage1.lr=0.2"]


def _log(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if not k.startswith(("queue", "encoder_k")))


def test_best_epoch_keeps_the_earliest_of_ties_and_ignores_nan():
    best = BestEpoch()
    assert best.improves(0.5)
    best.update(0, 0.5)
    assert not best.improves(0.5) and not best.improves(float("nan")) and not best.improves(None)
    assert best.improves(0.51)
    assert BestEpoch.from_state(best.state_dict()) == best


def test_best_epoch_judges_by_the_trailing_mean_of_a_full_window():
    best = BestEpoch(window=3)
    judged = [best.judge(s) for s in (0.9, 0.2, float("nan"), 0.5, 0.2, None, 0.9)]
    # hand-computed: no judgement before three scores (a lucky first score cannot win), NaN and
    # None skipped; then (0.9+0.2+0.5)/3, (0.2+0.5+0.2)/3, (0.5+0.2+0.9)/3
    assert [judged[i] for i in (0, 1, 2, 5)] == [None] * 4
    np.testing.assert_allclose([judged[i] for i in (3, 4, 6)], [1.6 / 3, 0.3, 1.6 / 3])
    restored = BestEpoch.from_state(best.state_dict(), window=3)
    assert restored == best and restored.judge(0.3) == best.judge(0.3) == pytest.approx(1.4 / 3)
    assert BestEpoch.from_state({"epoch": 4, "score": 0.5}).recent == []  # a checkpoint from before D23
    assert [BestEpoch().judge(s) for s in (0.2, 0.8)] == [0.2, 0.8]  # window 1: the raw score


@pytest.mark.parametrize(("window", "epochs", "every", "want"),
                         [(15, 110, 1, 15), (15, 10, 1, 10), (15, 2, 1, 2), (3, 10, 2, 3), (15, 10, 2, 5), (1, 5, 1, 1)])
def test_a_stage_shorter_than_the_window_uses_all_its_scored_epochs(window, epochs, every, want):
    assert EpochScorer({}, "holdout", False, every=every, window=window).window_for(epochs) == want


@pytest.mark.parametrize(("every", "due"), [(1, [0, 1, 2, 3, 4]), (2, [1, 3, 4]), (0, [])])
def test_scorer_due_epochs(every, due):
    scorer = EpochScorer({}, None, False, every=every)
    assert [e for e in range(5) if scorer.due(e, 5)] == due


def test_paired_error_counts_only_the_rows_where_the_two_disagree():
    a = np.array([1, 1, 1, 0, 0, 1, 1, 0], dtype=bool)
    b = np.array([1, 0, 0, 1, 0, 1, 1, 0], dtype=bool)
    # a alone right on 2 rows, b alone on 1: sqrt(2 + 1 - 1 / 8) / 8
    assert paired_error(a, b) == pytest.approx(np.sqrt(2 + 1 - 1 / 8) / 8)
    assert paired_error(a, a) == 0.0  # the same answers: no doubt about the difference (zero)
    # the same from the per-row differences d: sqrt(sum((d - mean d)^2)) / N
    d = a.astype(float) - b.astype(float)
    assert paired_error(a, b) == pytest.approx(np.sqrt(((d - d.mean()) ** 2).sum()) / len(d))


def test_close_call_weighs_the_lead_against_the_rows_that_decide_it():
    import math

    rng = np.random.default_rng(0)
    base = rng.random(200) < 0.57
    top1 = base.copy()
    top1[:30] = ~top1[:30]  # they disagree on 30 of 200 rows
    scores = {"paper": float(base.mean()), "top1": float(top1.mean()), "th0.3": None}
    chosen = max(("paper", "top1"), key=scores.get)
    runner = "top1" if chosen == "paper" else "paper"
    c = close_call(scores, chosen, {"paper": base, "top1": top1, "th0.3": None})
    assert c["runner_up"] == runner and c["disagree"] == 30 and c["rows"] == 200
    assert c["margin"] == pytest.approx(scores[chosen] - scores[runner])
    answers = {"paper": base, "top1": top1}
    assert c["standard_error"] == pytest.approx(paired_error(answers[chosen], answers[runner]), abs=1e-6)
    # McNemar with continuity correction: z = (lead in rows - 1) / sqrt(rows that decide)
    z = max(round(c["margin"] * 200) - 1, 0) / math.sqrt(30)
    assert c["p_value"] == pytest.approx(math.erfc(z / math.sqrt(2)), abs=1e-4)
    assert c["close_call"] == (c["p_value"] >= 0.05)
    # a lead of 20 rows where they disagree on 20: every deciding row goes one way;
    # z = 19 / sqrt(20) = 4.25, p = 2.1e-5: not a close call
    wins = base.copy()
    wins[np.flatnonzero(~base)[:20]] = True
    c = close_call({"a": float(wins.mean()), "b": float(base.mean())}, "a", {"a": wins, "b": base})
    assert c["disagree"] == 20 and c["margin"] == pytest.approx(0.1)
    assert c["standard_error"] == pytest.approx(np.sqrt(18) / 200, abs=1e-6)
    assert c["p_value"] == pytest.approx(math.erfc(19 / math.sqrt(20) / math.sqrt(2)), abs=1e-4)
    assert c["close_call"] is False and describe_close_call(c) == ""
    # a lead of 2 rows, both deciding rows one way: z = 1 / sqrt(2), p = 0.48, a close call
    two = base.copy()
    two[np.flatnonzero(~base)[:2]] = True
    assert close_call({"a": float(two.mean()), "b": float(base.mean())}, "a", {"a": two, "b": base})["close_call"]
    # a tie with different answers is a close call (the guard keeps the fine-tune on a tie)
    tie = close_call({"stage3b": 0.5, "stage2": 0.5}, "stage3b",
                     {"stage3b": np.array([1, 0], bool), "stage2": np.array([0, 1], bool)})
    assert tie["close_call"] is True and tie["p_value"] == 1.0
    assert describe_close_call(tie) == ("; a close call: 0.0000 ahead of stage2, not significant "
                                        "(McNemar p = 1.00; the two disagree on 2 of 2 rows)")
    # no per-row answers (multi-label), or one score: no verdict
    assert close_call({"paper": 70.0, "top1": 71.0}, "top1", {"paper": None, "top1": None}) == {}
    assert close_call({"paper": 0.5, "top1": None}, "paper", {"paper": base, "top1": top1}) == {}


def test_keep_best_ends_with_the_best_validation_epoch(tiny_web_data, tmp_path):
    cfg = load_config(preset="tiny", overrides=[*ONE_STAGE, "train.curve_splits=[test]"])
    m = run_pipeline(tiny_web_data, tmp_path / "run", cfg, progress=False)
    rows = _log(tmp_path / "run" / "stage1" / "log.csv")
    val = [float(r["val_top1"]) for r in rows]
    assert len(val) == 4 and all(r["test_top1"] != "" for r in rows)
    expected = int(np.argmax(val))  # argmax: the first of ties
    info = m["stages"]["stage1"]
    assert info["best_epoch"] == info["kept_epoch"] == expected
    assert info["best_val"] == pytest.approx(val[expected])
    # the final model is the one saved at that epoch, and its val score is the logged one
    best = load_checkpoint(tmp_path / "run" / "stage1" / "best.pt")
    assert best["epoch"] == expected
    model, *_ = load_run_model(tmp_path / "run")
    assert _same_weights(best["model"], model.state_dict())
    assert m["eval"]["val"]["top1"] == pytest.approx(val[expected])
    assert m["eval"]["test"]["top1"] == pytest.approx(float(rows[expected]["test_top1"]))


def test_keep_last_and_scoring_do_not_change_training(tiny_web_data, tmp_path):
    scored = load_config(preset="tiny", overrides=[*ONE_STAGE, "train.keep=last"])
    plain = load_config(preset="tiny", overrides=[*ONE_STAGE, "train.val_every=0"])
    m1 = run_pipeline(tiny_web_data, tmp_path / "a", scored, progress=False)
    m2 = run_pipeline(tiny_web_data, tmp_path / "b", plain, progress=False)
    rows = _log(tmp_path / "a" / "stage1" / "log.csv")
    assert "val_top1" in rows[0] and "val_top1" not in _log(tmp_path / "b" / "stage1" / "log.csv")[0]
    # scoring runs under a forked RNG: the same weights as a run that never scored
    a = load_checkpoint(tmp_path / "a" / "stage1" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "stage1" / "checkpoint.pt")["model"]
    assert _same_weights(a, b)
    assert m1["stages"]["stage1"]["kept_epoch"] == 3
    assert m1["eval"]["val"]["top1"] == pytest.approx(float(rows[-1]["val_top1"]))
    assert "best_epoch" not in m2["stages"]["stage1"]
    assert m1["eval"]["test"]["top1"] == m2["eval"]["test"]["top1"]


def test_curve_split_that_data_lacks_is_a_clear_error(tiny_web_data, tmp_path):
    cfg = load_config(preset="tiny", overrides=[*ONE_STAGE, "train.curve_splits=[holdout]"])
    with pytest.raises(CaproError, match="holdout.jsonl"):
        run_pipeline(tiny_web_data, tmp_path / "run", cfg, progress=False)


def test_memorisation_metric_is_reported_against_truth(tiny_run):
    _, m = tiny_run
    fit = m["train_truth"]["memorisation"]
    assert fit["n_noisy"] + fit["n_clean"] == 200
    assert 0.0 <= fit["noisy_fit"] <= 1.0 and 0.0 <= fit["clean_fit"] <= 1.0


def test_offline_cleaning_from_the_best_stage2_epoch(tiny_web_data, tmp_path):
    from capro.engine.runner import clean_run

    cfg = load_config(preset="tiny", overrides=["model.backbone=simple_cnn", "train.keep=last",
                                                "clean.stage2_checkpoint=best", "stage2.lr=0.3"])
    run = tmp_path / "run"
    m = run_pipeline(tiny_web_data, run, cfg, progress=False)
    rows = _log(run / "stage2" / "log.csv")
    assert m["stages"]["stage2"]["kept_epoch"] == len(rows) - 1  # keep=last
    best = load_checkpoint(run / "stage2" / "best.pt")
    assert best["epoch"] == int(np.argmax([float(r["val_top1"]) for r in rows]))
    probs = np.load(run / "stage3a" / "probs.npy")
    # clean_run re-derives stage 3a from the config: again from best.pt, so the same scores
    clean_run(run)
    np.testing.assert_array_equal(np.load(run / "stage3a" / "probs.npy"), probs)
    # and the stage-2 weights that stage 3a scored with are best.pt's, not the last epoch's
    last = load_checkpoint(run / "stage2" / "checkpoint.pt")["model"]
    if best["epoch"] != len(rows) - 1:
        assert not _same_weights(best["model"], last)


def test_later_keys_at_their_default_leave_fingerprints_unchanged(tiny_web_data, monkeypatch):
    import capro.engine.runner as runner

    seen = []
    real = runner.fingerprint
    monkeypatch.setattr(runner, "fingerprint", lambda params, *a: seen.append(params) or real(params, *a))
    base = runner._fingerprints(load_config(preset="tiny"), tiny_web_data, 200)
    assert "keep_th" not in seen[0]["base"]["method"]  # a run made before the key existed matches
    assert "keep_top" not in seen[0]["base"]["method"]
    assert seen[4]["clean"]["stage2_checkpoint"] == "best"  # the default since D12
    strict = runner._fingerprints(load_config(preset="tiny", overrides=["method.keep_th=0.5"]),
                                  tiny_web_data, 200)
    assert all(strict[k] != base[k] for k in base)  # the method changes every step
    agree = runner._fingerprints(load_config(preset="tiny", overrides=["method.keep_top=1"]),
                                 tiny_web_data, 200)
    assert all(agree[k] != base[k] for k in base)
    seen.clear()
    kept = runner._fingerprints(load_config(preset="tiny", overrides=["clean.stage2_checkpoint=kept"]),
                                tiny_web_data, 200)
    assert "stage2_checkpoint" not in seen[4]["clean"]  # a run made before the key existed matches
    assert [k for k in base if kept[k] != base[k]] == ["stage3a", "stage3b"]
    # D24: the cap stays out of a stage's fingerprint unless it changes the average (then the
    # horizon goes in: a short stage averaged before D24 must not resume under it)
    seen.clear()
    runner._fingerprints(load_config(preset="tiny", overrides=["stage2.epochs=110", "stage2.ema_epochs=5"]),
                         tiny_web_data, 200)
    assert {"ema_horizon", "ema_max_share"}.isdisjoint(seen[3]["stage"]) and seen[3]["stage"]["ema_epochs"] == 5
    seen.clear()
    short = runner._fingerprints(load_config(preset="tiny", overrides=["stage2.epochs=8", "stage2.ema_epochs=5"]),
                                 tiny_web_data, 200)
    assert seen[3]["stage"]["ema_horizon"] == pytest.approx(0.4) and "ema_max_share" not in seen[3]["stage"]
    assert short["stage2"] != runner._fingerprints(load_config(preset="tiny", overrides=[
        "stage2.epochs=8", "stage2.ema_epochs=5", "stage2.ema_max_share=1"]), tiny_web_data, 200)["stage2"]


def test_fine_tune_guard_hands_on_stage2_when_the_fine_tune_scores_lower(tiny_web_data, tmp_path):
    # a fine-tune with a learning rate that wrecks the classifier scores below stage 2 on val
    over = ["model.backbone=simple_cnn", "train.keep=last", "stage3.lr=50", "stage3.epochs=1"]
    run = tmp_path / "run"
    m = run_pipeline(tiny_web_data, run, load_config(preset="tiny", overrides=over), progress=False)
    g = m["fine_tune_guard"]
    assert g["split"] == "val" and g["metric"] == "top1" and g["stage3b"] < g["stage2"]
    assert g["kept"] == "stage2" and m["final_stage"] == "stage2"
    # how close the call was: the two models' per-row answers on val, recomputed
    rows = len((tiny_web_data / "val.jsonl").read_text().splitlines())  # 40
    assert g["rows"] == rows and g["runner_up"] == "stage3b"
    assert g["margin"] == pytest.approx(g["stage2"] - g["stage3b"], abs=2e-6)
    assert round(g["margin"] * rows) <= g["disagree"] <= rows
    assert g["close_call"] == (g["p_value"] >= 0.05)
    # the run's model is the stage-2 weights stage 3a cleaned with (best.pt, D12), scored as logged
    model, *_ = load_run_model(run)
    assert _same_weights(load_checkpoint(run / "stage2" / "best.pt")["model"], model.state_dict())
    assert m["eval"]["val"]["top1"] == pytest.approx(g["stage2"])
    stage3b = float(_log(run / "stage3b" / "log.csv")[-1]["val_top1"])
    assert g["stage3b"] == pytest.approx(stage3b)
    # the paper's behaviour: the fine-tune's weights, whatever they score (stage 3b reused)
    off = run_pipeline(tiny_web_data, run, load_config(preset="tiny", overrides=[*over, "clean.guard=false"]),
                       progress=False)
    assert off["final_stage"] == "stage3b" and "fine_tune_guard" not in off
    assert off["eval"]["val"]["top1"] == pytest.approx(stage3b)


def test_keep_rule_chosen_per_run_on_validation(tiny_web_data, tmp_path):
    from capro.cleaning import clean_batch
    from capro.data.layout import read_classes
    from capro.engine.keep_rules import choose, parse_rule
    from capro.engine.runner import clean_run
    from capro.utils.io import read_jsonl

    assert parse_rule("th0.3+top1") == {"keep_th": 0.3, "keep_top": 1}
    assert choose({"paper": 0.5, "top1": 0.6, "th0.3": 0.6}) == "top1"  # ties: the earlier
    assert choose({"paper": None, "top1": None}) == "paper"
    over = ["model.backbone=simple_cnn", "clean.keep_rules=[paper,top1]", "clean.guard=false"]
    run = tmp_path / "run"
    cfg = load_config(preset="tiny", overrides=over)
    m = run_pipeline(tiny_web_data, run, cfg, progress=False)
    k = m["keep_rule"]
    assert list(k["rules"]) == ["paper", "top1"] and k["split"] == "val"
    scores = {r: v["score"] for r, v in k["rules"].items()}
    assert k["chosen"] == choose(scores)
    # each rule cleaned on its own: its counts are the cleaning rule applied to the same scores
    names = [c.name for c in read_classes(tiny_web_data)]
    web = torch.tensor([names.index(r["web_label"])
                        for r in read_jsonl(run / "keep_rules" / "paper" / "stage3a" / "samples.jsonl")])
    for rule in ("paper", "top1"):
        probs = torch.from_numpy(np.load(run / "keep_rules" / rule / "stage3a" / "probs.npy"))
        ref = clean_batch(probs, web, pseudo_th=cfg.method.pseudo_th, **parse_rule(rule))
        got = k["rules"][rule]
        assert (got["removed"], got["relabeled"]) == (int((~ref.clean).sum()), int(ref.relabeled.sum()))
    assert k["rules"]["top1"]["removed"] >= k["rules"]["paper"]["removed"]
    # the chosen rule's verdicts and fine-tuned weights are the run's, scored as recorded
    chosen = run / "keep_rules" / k["chosen"]
    assert (run / "stage3a" / "samples.jsonl").read_bytes() == (chosen / "stage3a" / "samples.jsonl").read_bytes()
    model, *_ = load_run_model(run)
    assert _same_weights(load_checkpoint(chosen / "stage3b" / "checkpoint.pt")["model"], model.state_dict())
    assert m["eval"]["val"]["top1"] == pytest.approx(scores[k["chosen"]])
    # `capro clean` re-derives stage 3a with the rule the run chose
    assert clean_run(run)["removed"] == k["rules"][k["chosen"]]["removed"]
    assert (run / "stage3a" / "samples.jsonl").read_bytes() == (chosen / "stage3a" / "samples.jsonl").read_bytes()
    with pytest.raises(CaproError, match="is not a keep rule"):
        load_config(overrides=["clean.keep_rules=[paper,strict]"])


def test_online_keep_rule_chosen_per_run_on_validation(tiny_web_data, tmp_path):
    from capro.engine.keep_rules import choose
    from capro.utils.io import read_json

    base = ["model.backbone=simple_cnn", "stage3.epochs=0"]
    plain = run_pipeline(tiny_web_data, tmp_path / "plain", load_config(preset="tiny", overrides=[*base, "method.keep_rules=[]"]),
                         progress=False)
    run = tmp_path / "run"
    cfg = load_config(preset="tiny", overrides=[*base, "method.keep_rules=[paper,top1]"])
    m = run_pipeline(tiny_web_data, run, cfg, progress=False)
    o = m["online_rule"]
    assert list(o["rules"]) == ["paper", "top1"] and o["split"] == "val"
    scores = {r: v["score"] for r, v in o["rules"].items()}
    assert o["chosen"] == choose(scores)
    assert o["rows"] == len((tiny_web_data / "val.jsonl").read_text().splitlines()) and o["margin"] == pytest.approx(max(scores.values()) - min(scores.values()), abs=2e-6)
    for rule in ("paper", "top1"):  # under train.keep=best a rule scores its best epoch
        done = read_json(run / "online_rules" / rule / "stage2" / "done.json")
        assert scores[rule] == pytest.approx(done["best_val"])
        assert o["rules"][rule]["kept"] + o["rules"][rule]["relabeled"] + o["rules"][rule]["removed"] == m["n_train"]
        assert o["rules"][rule]["seconds"] == pytest.approx(done["seconds"])
    assert m["stages"]["stage2"]["seconds"] == pytest.approx(sum(v["seconds"] for v in o["rules"].values()), abs=1e-3)
    # the paper's branch is the run without the key: same seed, same weights, same score
    paper = load_checkpoint(run / "online_rules" / "paper" / "stage2" / "checkpoint.pt")["model"]
    assert _same_weights(paper, load_checkpoint(tmp_path / "plain" / "stage2" / "checkpoint.pt")["model"])
    assert scores["paper"] == pytest.approx(plain["stages"]["stage2"]["best_val"])
    # the chosen branch is published as the run's stage 2 and is the final model
    chosen = run / "online_rules" / o["chosen"] / "stage2"
    assert (run / "stage2" / "log.csv").read_bytes() == (chosen / "log.csv").read_bytes()
    model, *_ = load_run_model(run)
    assert _same_weights(load_checkpoint(chosen / "checkpoint.pt")["model"], model.state_dict())
    assert m["eval"]["val"]["top1"] == pytest.approx(scores[o["chosen"]])
    # a rerun trains nothing and ends the same
    written = {r: (run / "online_rules" / r / "stage2" / "checkpoint.pt").stat().st_mtime_ns for r in scores}
    again = run_pipeline(tiny_web_data, run, cfg, resume=True, progress=False)
    assert again["online_rule"] == o and again["eval"] == m["eval"]
    assert written == {r: (run / "online_rules" / r / "stage2" / "checkpoint.pt").stat().st_mtime_ns for r in scores}
    with pytest.raises(CaproError, match="method.keep_rules: 'strict' is not a keep rule"):
        load_config(overrides=["method.keep_rules=[paper,strict]"])


def test_online_keep_rule_probe_trains_only_the_chosen_rule_to_the_end(tiny_web_data, tmp_path):
    """D21 with a probe on held-out rows (no val.jsonl): the rules share stage 2 until their keep
    decisions differ, each trains ``rule_probe_epochs`` more, and only one goes on (the leader
    when its lead is significant, else the first rule); its stage 2 equals that rule's own
    uninterrupted stage 2 to the bit."""
    import shutil

    from capro.utils.io import read_json

    data = tmp_path / "data"
    shutil.copytree(tiny_web_data, data)
    (data / "val.jsonl").unlink()
    base = ["model.backbone=simple_cnn", "stage3.epochs=0", "stage2.epochs=6", "stage2.start_clean_epoch=1",
            "stage1.epochs=1", "train.max_steps_per_epoch=2"]
    own = {rule: run_pipeline(data, tmp_path / rule, load_config(preset="tiny", overrides=[
        *base, "method.keep_rules=[]", *([] if rule == "paper" else ["method.keep_top=1"])]), progress=False)
        for rule in ("paper", "top1")}
    run = tmp_path / "run"
    cfg = load_config(preset="tiny", overrides=[*base, "method.keep_rules=[paper,top1]", "method.rule_probe_epochs=2"])
    m = run_pipeline(data, run, cfg, progress=False)
    o = m["online_rule"]
    assert o["split"] == "holdout" and o["probe"]["from_epoch"] == 2 and o["probe"]["until_epoch"] == 4
    assert o["probe"]["decided"]

    def probe_mean(rule):  # the rule's own run, held-out top-1 over epochs 2 and 3
        with open(tmp_path / rule / "stage2" / "log.csv", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if 2 <= int(r["epoch"]) < 4]
        return sum(float(r["holdout_top1"]) for r in rows) / len(rows)

    scores = {rule: o["probe"]["scores"][rule] for rule in ("paper", "top1")}
    assert scores == pytest.approx({rule: probe_mean(rule) for rule in scores})
    leader = "top1" if scores["top1"] > scores["paper"] else "paper"
    assert o["chosen"] == ("paper" if o.get("close_call", True) else leader)
    chosen = o["chosen"]
    loser = "paper" if chosen == "top1" else "top1"
    assert load_checkpoint(run / "online_rules" / loser / "stage2" / "last.pt")["epoch"] == 4
    assert not (run / "online_rules" / loser / "stage2" / "checkpoint.pt").exists()
    # the chosen rule, paused and resumed, is its own uninterrupted stage 2
    final = load_checkpoint(run / "stage2" / "checkpoint.pt")["model"]
    assert _same_weights(final, load_checkpoint(tmp_path / chosen / "stage2" / "checkpoint.pt")["model"])
    assert m["eval"] == own[chosen]["eval"]
    assert read_json(run / "online_rules" / "probe.json")["chosen"] == chosen
    # a rerun trains nothing and ends the same
    again = run_pipeline(data, run, cfg, resume=True, progress=False)
    assert again["online_rule"]["chosen"] == chosen and again["eval"] == m["eval"]


def test_online_keep_rule_probe_on_clean_labels_chooses_as_the_full_stages(tiny_web_data, tmp_path):
    """With val.jsonl a probe whose lead is a close call leaves the choice to the full stages:
    the same rule and weights as D21 without a probe."""
    base = ["model.backbone=simple_cnn", "stage3.epochs=0", "stage2.epochs=6", "stage2.start_clean_epoch=1",
            "stage1.epochs=1", "train.max_steps_per_epoch=2", "method.keep_rules=[paper,top1]"]
    full = run_pipeline(tiny_web_data, tmp_path / "full", load_config(
        preset="tiny", overrides=[*base, "method.rule_probe_epochs=0"]), progress=False)
    run = tmp_path / "probe"
    m = run_pipeline(tiny_web_data, run, load_config(preset="tiny", overrides=[*base, "method.rule_probe_epochs=2"]),
                     progress=False)
    o = m["online_rule"]
    assert not o["probe"]["decided"] and o["probe"]["p_value"] >= 0.05  # 40 val rows: a close call
    assert o["chosen"] == full["online_rule"]["chosen"]
    assert {r: v["score"] for r, v in o["rules"].items()} == {
        r: v["score"] for r, v in full["online_rule"]["rules"].items()}
    assert m["eval"] == full["eval"]
    for rule in ("paper", "top1"):
        assert _same_weights(load_checkpoint(run / "online_rules" / rule / "stage2" / "checkpoint.pt")["model"],
                             load_checkpoint(tmp_path / "full" / "online_rules" / rule / "stage2" / "checkpoint.pt")["model"])
