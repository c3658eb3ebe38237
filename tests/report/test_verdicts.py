"""Verdict rows: the action flags, the final label, range checks, and the jsonl / csv / parquet round trips."""

from __future__ import annotations

import csv
import importlib.util
import json
import math

import pytest

from capro.errors import DataError, UsageError
from capro.report.verdicts import VERDICT_FIELDS, load_verdicts, verdict_row, write_verdicts
from capro.utils.io import write_jsonl


def _row(action: str, **kw):
    args = dict(sample_id="s1", web_label="Bag", action=action, suggested_label="Coat", anchor=False,
                score=0.7, label_quality=0.2, text_distance=0.31, nearest_prototype="Coat")
    args.update(kw)
    return verdict_row(**args)


@pytest.mark.parametrize(("action", "label", "issue"), [
    ("kept", "Bag", False), ("relabeled", "Coat", True), ("removed", None, True),
])
def test_action_sets_label_flags_and_issue(action, label, issue):
    r = _row(action)
    assert tuple(r) == VERDICT_FIELDS
    assert r["label"] == label
    assert r["is_label_issue"] is issue
    assert [r["kept"], r["relabeled"], r["removed"]] == [a == action for a in ("kept", "relabeled", "removed")]
    assert r["web_label"] == "Bag" and r["suggested_label"] == "Coat" and r["nearest_prototype"] == "Coat"


def test_values_are_checked_and_rounded():
    assert _row("kept", label_quality=1.00001)["label_quality"] == 1.0
    assert _row("kept", label_quality=-0.00001)["label_quality"] == 0.0
    assert _row("kept", score=0.123456789)["score"] == 0.123457
    assert _row("kept", text_distance=float("nan"))["text_distance"] is None
    assert _row("kept", text_distance=None)["text_distance"] is None
    with pytest.raises(ValueError, match="label_quality"):
        _row("kept", label_quality=1.5)
    with pytest.raises(ValueError, match="score"):
        _row("kept", score=float("nan"))
    with pytest.raises(ValueError, match="action"):
        _row("dropped")


def test_multilabel_final_label_is_passed_explicitly():
    r = verdict_row(sample_id="m", web_label=["sky", "dog"], action="relabeled", suggested_label=["sky", "cat"],
                    anchor=True, score=0.9, label_quality=0.4, label=["sky", "cat"])
    assert r["label"] == ["sky", "cat"] and r["anchor"] is True
    removed = verdict_row(sample_id="m", web_label=["sky"], action="removed", suggested_label=["sky"],
                          anchor=False, score=0.1, label_quality=0.1, label=["sky"])
    assert removed["label"] is None


def test_jsonl_round_trip_through_load_verdicts(tmp_path):
    rows = [_row("kept", sample_id="a"), _row("removed", sample_id="b")]
    assert write_verdicts(tmp_path / "stage3a" / "samples.jsonl", rows) == 2
    assert load_verdicts(tmp_path) == rows


def test_load_verdicts_fills_fields_an_older_run_did_not_write(tmp_path):
    write_jsonl(tmp_path / "stage3a" / "samples.jsonl", [{"id": "a", "web_label": "Bag", "kept": True}])
    (row,) = load_verdicts(tmp_path)
    assert set(row) == set(VERDICT_FIELDS)
    assert row["nearest_prototype"] is None and row["kept"] is True


def test_load_verdicts_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"stage3a/samples.jsonl: not found.*stage 3a"):
        load_verdicts(tmp_path)
    write_jsonl(tmp_path / "stage3a" / "samples.jsonl", [{"id": "a"}, {"web_label": "x"}])
    with pytest.raises(DataError, match=r"samples.jsonl:2: .*\"id\""):
        load_verdicts(tmp_path)


def test_csv_writes_every_field_with_lists_as_json(tmp_path):
    rows = [_row("kept", sample_id="a"),
            verdict_row(sample_id="m", web_label=["sky", "dog"], action="removed", suggested_label=["sky"],
                        anchor=False, score=0.1, label_quality=0.05)]
    path = tmp_path / "v.csv"
    assert write_verdicts(path, rows, format="csv") == 2
    with open(path, newline="", encoding="utf-8") as fh:
        back = list(csv.DictReader(fh))
    assert list(back[0]) == list(VERDICT_FIELDS)
    assert back[0]["label"] == "Bag" and back[0]["is_label_issue"] == "False"
    assert math.isclose(float(back[0]["label_quality"]), 0.2)
    assert json.loads(back[1]["web_label"]) == ["sky", "dog"]
    assert back[1]["label"] == "" and back[1]["text_distance"] == ""


def test_parquet_round_trip_or_a_clear_error(tmp_path):
    rows = [_row("kept", sample_id="a"), _row("relabeled", sample_id="b")]
    path = tmp_path / "v.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        with pytest.raises(UsageError, match="pyarrow"):
            write_verdicts(path, rows, format="parquet")
        assert not path.exists()
    else:
        import pyarrow.parquet as pq

        write_verdicts(path, rows, format="parquet")
        assert pq.read_table(path).to_pylist() == rows


def test_unknown_format_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="choose from jsonl, csv, parquet"):
        write_verdicts(tmp_path / "v.xlsx", [], format="xlsx")
