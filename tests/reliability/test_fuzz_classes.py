"""Fuzzed classes.json: read_classes / parse_classes give a valid class list or one ClassesError
naming the file and the fix, never another exception."""

from __future__ import annotations

import json
import re

import pytest
from fuzz_strategies import any_text, fuzz, json_values
from hypothesis import given
from hypothesis import strategies as st

from capro.data.layout import ClassesError, ClassInfo, parse_classes, read_classes

_entry = st.one_of(
    any_text,
    st.fixed_dictionaries({"name": any_text}, optional={
        "wnid": st.one_of(st.from_regex(r"\An[0-9]{1,9}\Z"), any_text, json_values),
        "definition": st.one_of(any_text, json_values),
        "gloss": any_text,
    }),
    json_values,
)
classes_data = st.one_of(st.lists(_entry, max_size=6), json_values)


def _check_ok(classes: list[ClassInfo], data: list) -> None:
    assert len(classes) == len(data) > 0
    assert len({c.name for c in classes}) == len(classes)
    for c, entry in zip(classes, data):
        assert c.name == (entry if isinstance(entry, str) else entry["name"])
        assert c.name.strip()
        assert c.wnid is None or re.fullmatch(r"n[0-9]{8}", c.wnid)
        assert c.definition is None or isinstance(c.definition, str)
        (c.name + (c.definition or "")).encode("utf-8")  # no lone surrogate


@fuzz(300)
@given(classes_data)
def test_parse_classes_gives_a_valid_list_or_a_classes_error(data):
    try:
        classes = parse_classes(data, "classes.json")
    except ClassesError as exc:
        assert exc.file == "classes.json" and exc.reason
        assert "\n" not in str(exc)
        return
    _check_ok(classes, data)


@fuzz(120)
@given(st.one_of(
    classes_data.map(lambda d: json.dumps(d).encode()),
    classes_data.map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.binary(max_size=80),
    st.sampled_from([b"", b"[", b"[" * 100_000, b"{\"a\":" * 20_000, b"\xef\xbb\xbf[\"cat\"]",
                     b"[\"caf\xe9\"]", b"[1" + b"0" * 5000 + b"]", b"\x00", b"NaN"]),
))
def test_read_classes_on_any_bytes(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("classes")
    (root / "classes.json").write_bytes(data)
    try:
        classes = read_classes(root)
    except ClassesError as exc:
        assert exc.file == str(root / "classes.json")
        assert str(exc).startswith(f"{root / 'classes.json'}: ")
        assert "\n" not in str(exc) and "Traceback" not in str(exc)
        return
    _check_ok(classes, json.loads(data))


@pytest.mark.parametrize("data, reason", [
    (b"[" * 100_000, "JSON nested too deeply"),
    (b"[\"caf\xe9\"]", "not valid UTF-8"),
    (b"", "invalid JSON at column 1"),
    (b"[1" + b"0" * 5000 + b"]", "invalid JSON (Exceeds the limit"),
    (b"[]", "must be a non-empty JSON list"),
    (b"[\"cat\", \"cat\"]", "entry 1 repeats the class name 'cat'"),
    (b"[\"cat\", \"\\ud800\"]", "entry 1 has a \"name\" that holds a lone UTF-16 surrogate"),
    (b"[{\"name\": \"cat\", \"definition\": \"a\\udfff\"}]", "entry 0 ('cat') has a \"definition\" that holds"),
    (b"[{\"name\": \"cat\", \"wnid\": \"n123456789\"}]", "entry 0 ('cat') has wnid 'n123456789'"),
])
def test_read_classes_pathological_files(tmp_path, data, reason):
    (tmp_path / "classes.json").write_bytes(data)
    with pytest.raises(ClassesError) as info:
        read_classes(tmp_path)
    assert info.value.reason.startswith(reason)


def test_missing_or_directory_classes_json_is_a_classes_error(tmp_path):
    with pytest.raises(ClassesError, match="missing"):
        read_classes(tmp_path)
    (tmp_path / "classes.json").mkdir()
    with pytest.raises(ClassesError, match="missing"):
        read_classes(tmp_path)


def test_many_classes_and_long_names(tmp_path):
    names = [f"class {i} " + "x" * (i % 300) for i in range(20_000)]
    (tmp_path / "classes.json").write_text(json.dumps(names))
    classes = read_classes(tmp_path)
    assert [c.name for c in classes] == names
