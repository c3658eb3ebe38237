"""``benchmarks/studies/no_val.py``: replaying D23's window on recorded curves picks what the engine would."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def no_val(bench_script):
    return bench_script("no_val")


def test_window_replay_matches_a_hand_computed_choice(no_val):
    curves = {
        # paper: a lucky first epoch (0.60), then a steady 0.50-0.56; top1: steady 0.54-0.55
        "paper": {"holdout_top1": [0.60, 0.50, 0.52, 0.56, 0.54], "test_top1": [0.1, 0.2, 0.3, 0.4, 0.5]},
        "top1": {"holdout_top1": [0.40, 0.54, 0.55, 0.54, 0.55], "test_top1": [0.6, 0.7, 0.8, 0.9, 1.0]},
        "stage2": {"holdout_top1": [0.0] * 5, "test_top1": [0.0] * 5},  # the published copy: ignored
    }
    # single scores: paper's epoch 0 wins
    assert no_val.chosen_by_window(curves, 1) == ("paper", 0, 0.1)
    # windows of 3 (full only): paper 0.54 (epochs 2-4), top1 (0.55+0.54+0.55)/3 = 0.5467 at epoch 4
    assert no_val.chosen_by_window(curves, 3) == ("top1", 4, 1.0)
    # a window longer than the curve is the whole curve: paper 0.544 vs top1 0.516
    assert no_val.chosen_by_window(curves, 9) == ("paper", 4, 0.5)
    # each branch's last epoch: top1 0.55 vs paper 0.54
    assert no_val.chosen_by_window(curves, None) == ("top1", 4, 1.0)


def test_window_replay_selects_on_the_named_column(no_val):
    # a run with val.jsonl: epochs chosen on val_top1, read on test_top1
    curves = {
        "paper": {"val_top1": [0.7, 0.9, 0.6, 0.6], "test_top1": [0.1, 0.2, 0.3, 0.4]},
        "top1": {"val_top1": [0.8, 0.8, 0.8, 0.8], "test_top1": [0.5, 0.6, 0.7, 0.8]},
    }
    # single scores: paper's epoch 1 (0.9)
    assert no_val.chosen_by_window(curves, 1, select="val_top1") == ("paper", 1, 0.2)
    # windows of 2: paper's best mean is 0.8 (epochs 0-1, 1-2 give 0.75), top1's 0.8 at epoch 1;
    # a tie goes to the branch scored first
    assert no_val.chosen_by_window(curves, 2, select="val_top1") == ("paper", 1, 0.2)
    # windows of 3: paper 0.733 vs top1 0.8 at epoch 2
    assert no_val.chosen_by_window(curves, 3, select="val_top1") == ("top1", 2, 0.7)
    table = no_val.window_table([1, 3], {"web/seed100/with_val": {"curves": curves}}, select="val_top1")
    assert table.splitlines()[2] == "| web/seed100 | 20.0 (paper 1) | 70.0 (top1 2) | 80.0 (top1 3) |"


def test_window_replay_with_a_tolerance_hands_on_the_earliest_near_best_epoch(no_val):
    curves = {"paper": {"holdout_top1": [0.50, 0.56, 0.55, 0.57], "test_top1": [0.1, 0.2, 0.3, 0.4]},
              "top1": {"holdout_top1": [0.40, 0.40, 0.40, 0.40], "test_top1": [0.9, 0.9, 0.9, 0.9]}}
    assert no_val.chosen_by_window(curves, 1) == ("paper", 3, 0.4)
    # within 0.015 of paper's best (0.57): epochs 1 (0.56) and 2 (0.55 is 0.02 below: out)
    assert no_val.chosen_by_window(curves, 1, tolerance=0.015) == ("paper", 1, 0.2)
    # branches are still compared on their best: top1's 0.40 never wins
    assert no_val.chosen_by_window(curves, 1, tolerance=0.5) == ("paper", 0, 0.1)
    # only the named branches compete
    assert no_val.chosen_by_window(curves, 1, branches=["top1"]) == ("top1", 0, 0.9)
