"""Fuzzed manifests: decode_json, parse_row and read_split give a record or a one-line problem for
every line, never a traceback, a hang or a silently dropped row."""

from __future__ import annotations

import json

import pytest
from fuzz_strategies import (
    CLASS_INDEX,
    CLASS_NAMES,
    any_text,
    fuzz,
    json_values,
    manifest_lines,
    nonblank_lines,
    row_objects,
    write_manifest,
)
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from capro.data.layout import (
    MAX_LINE_BYTES,
    ClassInfo,
    Problem,
    Record,
    RowError,
    decode_json,
    has_surrogate,
    is_safe_relpath,
    parse_row,
    read_split,
)
from capro.data.validate import load_split_for_run
from capro.errors import DataError
from capro.utils.io import read_jsonl

CLASSES = [ClassInfo(n) for n in CLASS_NAMES]


def _one_line(msg: str) -> bool:
    return bool(msg) and len(msg.splitlines()) == 1 and msg.isprintable()


def _strings(value) -> list[str]:
    """Every string (keys included) in decoded JSON ``value``."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    return []


@fuzz(300)
@given(st.one_of(st.binary(max_size=80), any_text, manifest_lines))
def test_decode_json_returns_a_value_or_a_one_line_row_error(data):
    try:
        value = decode_json(data)
    except RowError as exc:
        assert _one_line(str(exc))
        return
    assert not any(has_surrogate(s) for s in _strings(value))  # every string can be written as UTF-8


@pytest.mark.parametrize("data, reason", [
    (b"[" * 100_000, "JSON nested too deeply"),
    (b"{\"a\":" * 50_000, "JSON nested too deeply"),
    (b"9" * 5000, "invalid JSON (Exceeds the limit"),
    (b"\xff{}", "not valid UTF-8"),
    (b"{\"id\": 1,}", "invalid JSON (Expecting property name"),
])
def test_decode_json_pathological_inputs(data, reason):
    with pytest.raises(RowError) as info:
        decode_json(data)
    assert str(info.value).startswith(reason)
    assert _one_line(str(info.value))


@fuzz(400)
@given(st.one_of(row_objects, json_values), st.sampled_from([CLASS_INDEX, None]))
def test_parse_row_gives_a_valid_record_or_a_row_error(obj, index):
    try:
        rec = parse_row(obj, index)
    except RowError as exc:
        assert _one_line(str(exc))
        return
    assert isinstance(rec, Record)
    assert isinstance(rec.id, str) and rec.id.strip()
    assert is_safe_relpath(rec.image)
    assert rec.multi_label == isinstance(obj["label"], list)
    names = obj["label"] if rec.multi_label else [obj["label"]]
    if index is None:
        assert rec.labels == ()
    else:
        assert rec.labels == tuple(dict.fromkeys(CLASS_INDEX[n] for n in names))
    assert isinstance(rec.title, str) and isinstance(rec.description, str)
    assert all(isinstance(t, str) for t in rec.tags)
    " ".join([rec.id, rec.image, rec.text()]).encode("utf-8")  # no lone surrogate anywhere


@fuzz(120)
@given(st.lists(manifest_lines, max_size=12))
def test_read_split_accounts_for_every_nonblank_line(tmp_path_factory, lines):
    root = tmp_path_factory.mktemp("manifest")
    data = write_manifest(root / "train.jsonl", lines)
    split = read_split(root, "train", CLASSES)
    expected = nonblank_lines(data)
    seen = sorted([r.line for r in split.records] + [p.line for p in split.problems])
    assert seen == expected  # every non-blank line is a record or a problem, exactly once
    assert len({r.id for r in split.records}) == len(split.records)
    for p in split.problems:
        assert p.file == str(root / "train.jsonl")
        assert _one_line(p.reason) and _one_line(str(p))
        json.dumps(p.to_dict(), ensure_ascii=False).encode("utf-8")
    for r in split.records:
        assert all(0 <= c < len(CLASSES) for c in r.labels)


def test_a_line_over_the_limit_is_a_problem_and_reading_goes_on(tmp_path):
    row = {"id": "ok", "image": "a.png", "label": "cat"}
    huge = json.dumps({"id": "big", "image": "a.png", "label": "cat", "title": "x" * MAX_LINE_BYTES})
    write_manifest(tmp_path / "train.jsonl", [huge.encode(), json.dumps(row).encode()])
    split = read_split(tmp_path, "train", CLASSES)
    assert [r.id for r in split.records] == ["ok"]
    assert [(p.line, p.reason) for p in split.problems] == [(1, f"line longer than {MAX_LINE_BYTES} bytes")]


def test_a_manifest_that_is_a_directory_or_missing_is_a_data_error(tmp_path):
    (tmp_path / "train.jsonl").mkdir()
    with pytest.raises(DataError, match="manifest not found"):
        read_split(tmp_path, "train", CLASSES)
    with pytest.raises(DataError, match="manifest not found"):
        read_split(tmp_path, "val", CLASSES)


def _dataset(tmp_path, rows: list[bytes]):
    (tmp_path / "classes.json").write_text(json.dumps([{"name": n} for n in CLASS_NAMES]))
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "a.png")
    write_manifest(tmp_path / "train.jsonl", rows)
    (tmp_path / "run").mkdir()
    return tmp_path


@fuzz(60)
@given(st.lists(manifest_lines, max_size=8))
def test_skip_bad_keeps_or_records_every_line(tmp_path_factory, lines):
    good = json.dumps({"id": "keep-me", "image": "a.png", "label": "dog"}).encode()
    root = _dataset(tmp_path_factory.mktemp("skipbad"), [*lines, good])
    data = (root / "train.jsonl").read_bytes()
    split = load_split_for_run(root, "train", run_dir=root / "run", skip_bad=True)
    # JSON lines end at "\n" only: an id may hold U+0085 or U+2028, which str.splitlines() splits on.
    rejected = read_jsonl(root / "run" / "rejected.jsonl") if split.problems else []
    assert sorted([r.line for r in split.records] + [p["line"] for p in rejected]) == nonblank_lines(data)
    assert all(r.image == "a.png" for r in split.records)  # b.png etc. do not exist


# ---- Regressions: bugs the fuzzers found ------------------------------------------------------

@pytest.mark.parametrize("rid, shown", [("a\nb", "'a\\nb'"), ("a\rb", "'a\\rb'"), ("x\x1b[2J", "'x\\x1b[2J'"),
                                        ("a\u2028b", "'a\\u2028b'"), ("back\\slash", "'back\\\\slash'"),
                                        ("'quoted'", '"\'quoted\'"'), ("plain id ß", "plain id ß")])
def test_bug1_problem_with_control_characters_in_the_id_is_one_line(tmp_path, rid, shown):
    row = json.dumps({"id": rid, "image": "missing.png", "label": "nope"}).encode()
    split = read_split(_dataset(tmp_path, [row]), "train", CLASSES)
    (problem,) = split.problems
    assert problem.id == rid  # kept exact for --json and rejected.jsonl
    assert str(problem) == f"{tmp_path / 'train.jsonl'}:1: id={shown}: unknown label 'nope'; it is not a name in classes.json"


def test_bug1_reasons_and_files_print_on_one_line():
    text = str(Problem("dir\n/train.jsonl", 3, None, "bad \x1b[31m thing\u2029"))
    assert text == "dir\\n/train.jsonl:3: id=-: bad \\x1b[31m thing\\u2029"


@pytest.mark.parametrize("line, reason", [
    (b'{"id": "\\ud800", "image": "a.png", "label": "cat"}', 'field "id" holds a lone UTF-16 surrogate'),
    (b'{"id": "x", "image": "a.png", "label": "cat", "tags": ["ok", "\\udfff"]}', 'field "tags" holds'),
    (b'{"id": "x", "image": "a.png", "label": "cat", "\\udc80": 1}', 'field "\\udc80" holds'),
    (b'[["\\uDBFF"]]', "a string holds a lone UTF-16 surrogate"),
])
def test_bug2_lone_surrogates_are_row_errors(line, reason):
    with pytest.raises(RowError) as info:
        decode_json(line)
    assert str(info.value).startswith(reason) and _one_line(str(info.value))


@pytest.mark.parametrize("line, value", [(b'"\\ud83d\\ude00"', "\U0001f600"),  # a surrogate pair is one character
                                         (b'"\\\\ud800"', "\\ud800")])  # an escaped backslash, then text
def test_valid_escapes_that_look_like_surrogates_are_accepted(line, value):
    assert decode_json(line) == value


@pytest.mark.parametrize("field, value", [("id", "\ud800"), ("image", "a\udc80.png"), ("label", ["cat", "\udfff"]),
                                          ("title", "x\ud800"), ("description", "\udbff"), ("tags", ["a", "\ud800"])])
def test_bug2_parse_row_refuses_surrogates_in_every_string_field(field, value):
    row = {"id": "x", "image": "a.png", "label": "cat", field: value}
    with pytest.raises(RowError, match=f'field "{field}" holds a lone UTF-16 surrogate'):
        parse_row(row, CLASS_INDEX)


def test_bug2_lone_surrogate_id_is_rejected_not_a_traceback(tmp_path):
    rows = [b'{"id": "\\ud800", "image": "missing.png", "label": "cat"}',
            json.dumps({"id": "ok", "image": "a.png", "label": "cat"}).encode()]
    root = _dataset(tmp_path, rows)
    split = load_split_for_run(root, "train", run_dir=root / "run", skip_bad=True)
    assert [r.id for r in split.records] == ["ok"]
    (row,) = read_jsonl(root / "run" / "rejected.jsonl")
    assert (row["line"], row["id"]) == (1, None)
    assert row["reason"].startswith('field "id" holds a lone UTF-16 surrogate')
