"""``benchmarks/studies/close_calls.py`` rebuilds a recorded run's close call as the engine recorded it."""

from __future__ import annotations

import pytest


def test_close_call_rebuilt_from_a_finished_run_matches_the_recorded_one(bench_script, tiny_run, tiny_web_data):
    run, metrics = tiny_run
    recorded = metrics["fine_tune_guard"]
    assert {"margin", "standard_error", "disagree", "rows", "p_value", "close_call"} <= set(recorded)
    rebuilt = bench_script("close_calls").run_choices(run, tiny_web_data)
    assert rebuilt["split"] == "val" and "online_rule" not in rebuilt  # the tiny preset trains one rule
    guard = rebuilt["fine_tune_guard"]
    assert guard["kept"] == recorded["kept"] and guard["rows"] == recorded["rows"] == 40
    assert guard["disagree"] == recorded["disagree"] and guard["close_call"] == recorded["close_call"]
    assert guard["p_value"] == pytest.approx(recorded["p_value"])
    assert guard["margin"] == pytest.approx(recorded["margin"]) and guard["standard_error"] == pytest.approx(
        recorded["standard_error"])
