"""The layout contract: classes.json parsing, row parsing and manifest reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capro.data.layout import (
    MAX_LINE_BYTES,
    ClassesError,
    ClassInfo,
    Record,
    RowError,
    available_splits,
    parse_classes,
    parse_row,
    read_classes,
    read_split,
)
from capro.errors import DataError

INDEX = {"cat": 0, "dog": 1, "bird": 2}


def test_parse_classes_accepts_strings_and_normalises_wnid() -> None:
    classes = parse_classes(["cat", {"name": "dog", "wnid": "n2084071", "definition": "a canine"}])
    assert classes == [ClassInfo("cat"), ClassInfo("dog", "n02084071", "a canine")]
    assert classes[1].offset == 2084071 and classes[0].offset is None


def test_classes_error_is_a_data_error_with_parts() -> None:
    with pytest.raises(ClassesError) as err:
        parse_classes([{"name": "a"}, {"name": "b", "definition": 3}], "C.json")
    assert isinstance(err.value, DataError)
    assert str(err.value) == "C.json: entry 1 ('b') has a non-string \"definition\""
    assert (err.value.file, err.value.line) == ("C.json", 0)


def test_read_classes_invalid_json_reports_line(tmp_path: Path) -> None:
    (tmp_path / "classes.json").write_text('[\n  {"name": "a"},\n  {"name": }\n]')
    with pytest.raises(ClassesError) as err:
        read_classes(tmp_path)
    assert err.value.line == 3
    assert err.value.reason.startswith("invalid JSON at column 12")
    (tmp_path / "classes.json").write_bytes(b'["caf\xe9"]')
    with pytest.raises(ClassesError, match="not valid UTF-8"):
        read_classes(tmp_path)


def test_parse_row_fields() -> None:
    rec = parse_row({"id": "a", "image": "x/1.jpg", "label": "dog", "title": "T", "description": "D",
                     "tags": ["t1", "t2"]}, INDEX)
    assert rec == Record(id="a", image="x/1.jpg", labels=(1,), title="T", description="D", tags=("t1", "t2"))
    assert rec.label == 1 and not rec.multi_label
    assert rec.text() == "T D t1 t2"
    assert rec.text(["tags", "title"]) == "t1 t2 T"
    multi = parse_row({"id": "b", "image": "y.png", "label": ["bird", "cat", "bird"], "tags": "solo"}, INDEX)
    assert multi.labels == (2, 0) and multi.multi_label and multi.tags == ("solo",)
    assert parse_row({"id": "c", "image": "y.png", "label": "zebra"}, None).labels == ()
    with pytest.raises(ValueError, match="unknown text field"):
        rec.text(["body"])


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"id": "a", "image": "../up.jpg", "label": "cat"}, "escapes the dataset directory"),
        ({"id": "a", "image": "/abs.jpg", "label": "cat"}, "escapes the dataset directory"),
        ({"id": "a", "image": "", "label": "cat"}, "escapes the dataset directory"),
        ({"id": "a", "image": "a\x00b", "label": "cat"}, "escapes the dataset directory"),
        ({"id": "a", "image": 3, "label": "cat"}, 'field "image" must be a string'),
        ({"id": " ", "image": "a.jpg", "label": "cat"}, 'field "id" must be a non-empty string'),
        ({"id": "a", "image": "a.jpg"}, 'missing field "label"'),
        ({"id": "a", "image": "a.jpg", "label": ["cat", "cow"]}, "unknown label 'cow'"),
        ({"id": "a", "image": "a.jpg", "label": "cat", "description": 1}, 'field "description" must be a string'),
    ],
)
def test_parse_row_errors(row: dict, reason: str) -> None:
    with pytest.raises(RowError, match=reason.replace("(", r"\(")):
        parse_row(row, INDEX)


def test_read_split_lines_blank_duplicates_and_encoding(tmp_path: Path) -> None:
    (tmp_path / "classes.json").write_text(json.dumps(["cat", "dog", "bird"]))
    rows = [json.dumps({"id": "a", "image": "a.jpg", "label": "cat"}), "",
            json.dumps({"id": "b", "image": "b.jpg", "label": "dog"}),
            json.dumps({"id": "a", "image": "c.jpg", "label": "bird"})]
    body = ("\n".join(rows) + "\n").encode() + b'{"id": "\xff"}\n' + b'{"id": "' + b"x" * MAX_LINE_BYTES + b'"}\n'
    (tmp_path / "train.jsonl").write_bytes(body)
    split = read_split(tmp_path, "train")
    assert [(r.id, r.line, r.labels) for r in split.records] == [("a", 1, (0,)), ("b", 3, (1,))]
    assert [(p.line, p.id, p.reason) for p in split.problems] == [
        (4, "a", "duplicate id (first at line 1)"),
        (5, None, "not valid UTF-8; re-save the file as UTF-8"),
        (6, None, f"line longer than {MAX_LINE_BYTES} bytes"),
    ]
    assert available_splits(tmp_path) == ["train"]
    with pytest.raises(DataError, match="val.jsonl: manifest not found"):
        read_split(tmp_path, "val")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "image", "label", "title", "description", "tags", "x"]), inner, max_size=6),
    max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(json_values.map(json.dumps).map(str.encode),
                                st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b)),
                      max_size=8))
def test_read_split_never_crashes_and_accounts_for_every_line(tmp_path: Path, lines: list[bytes]) -> None:
    (tmp_path / "classes.json").write_text(json.dumps(["cat", "dog"]))
    (tmp_path / "train.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    split = read_split(tmp_path, "train")
    non_blank = [i + 1 for i, line in enumerate(lines) if line.strip()]
    assert sorted([r.line for r in split.records] + [p.line for p in split.problems]) == non_blank
    for rec in split.records:
        assert rec.labels and all(0 <= c < 2 for c in rec.labels)


def test_hostile_json_lines_are_problems_not_crashes(tmp_path: Path) -> None:
    (tmp_path / "classes.json").write_text(json.dumps(["cat"]))
    (tmp_path / "train.jsonl").write_text('{"id": 1' + "1" * 5000 + "}\n" + "[" * 100_000 + "\n")
    split = read_split(tmp_path, "train")
    assert [(p.line, p.reason[:31]) for p in split.problems] == [
        (1, "invalid JSON (Exceeds the limit"), (2, "JSON nested too deeply")]
