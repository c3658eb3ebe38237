"""`capro validate` on fuzzed dataset directories: exit code 0/1/2, one stdout line per problem,
one summary line on stderr, never a traceback."""

from __future__ import annotations

import json

import pytest
from fuzz_strategies import CLASS_NAMES, any_text, fuzz, image_bytes, manifest_lines, write_manifest
from hypothesis import assume, given
from hypothesis import strategies as st

from capro.cli import main
from capro.data.layout import read_classes, read_split
from capro.data.validate import validate_dataset
from capro.errors import DataError

_classes_files = st.one_of(
    st.just(json.dumps(CLASS_NAMES).encode()),
    st.lists(st.sampled_from(CLASS_NAMES), max_size=4).map(lambda x: json.dumps(x).encode()),
    st.sampled_from([b"", b"[", b"{}", b"\xff", b"[" * 50_000, b"[{\"name\": 3}]"]),
    st.binary(max_size=40),
    st.none(),  # no classes.json at all
)
_image_files = st.sampled_from([image_bytes("PNG"), image_bytes("JPEG")[:40], b"", b"not an image"])


def _make_dataset(root, classes, train, val, images) -> None:
    if classes is not None:
        (root / "classes.json").write_bytes(classes)
    if train is not None:
        write_manifest(root / "train.jsonl", train)
    if val is not None:
        write_manifest(root / "val.jsonl", val)
    for name, data in zip(["a.png", "b.png"], images):
        (root / name).write_bytes(data)


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@fuzz(60)
@given(_classes_files, st.none() | st.lists(manifest_lines, max_size=6),
       st.none() | st.lists(manifest_lines, max_size=3), st.lists(_image_files, max_size=2),
       st.sampled_from([[], ["--no-images"], ["--json"], ["--json", "--no-images"]]))
def test_validate_on_fuzzed_datasets(tmp_path_factory, capsys, classes, train, val, images, flags):
    root = tmp_path_factory.mktemp("ds")
    _make_dataset(root, classes, train, val, images)
    expected = validate_dataset(root, check_images="--no-images" not in flags).problems

    rc, out, err = _run(capsys, ["validate", *flags, str(root)])
    assert "Traceback" not in out + err
    assert rc == (1 if expected else 0)
    if "--json" in flags:
        assert json.loads(out) == [p.to_dict() for p in expected]
    else:
        assert out.splitlines() == [str(p) for p in expected]  # one line per problem, whatever the ids
        assert all(line.isprintable() for line in out.splitlines())  # no terminal escapes either
    (summary,) = err.splitlines()
    assert summary.startswith(f"capro validate: {root}: ")
    assert summary.endswith(")") and ("OK (" in summary) == (rc == 0)


@fuzz(40)
@given(any_text.filter(lambda s: s.strip() and len(s.encode("utf-8", "surrogatepass")) < 200))
def test_validate_on_a_path_that_is_not_a_directory_is_a_usage_error(tmp_path_factory, capsys, name):
    base = tmp_path_factory.mktemp("nodir")
    (base / "file").write_text("x")
    for path in (f"{base}/missing-{name}", f"{base}/file", f"{base}/file/{name}"):
        assume("\n" not in path and "\r" not in path)
        rc, out, err = _run(capsys, ["validate", path])
        assert rc == 2 and out == ""
        assert err.startswith("capro validate: error: ") and err.count("\n") == 1, err


def test_validate_with_no_arguments_exits_2_with_usage():
    with pytest.raises(SystemExit) as info:
        main(["validate"])
    assert info.value.code == 2


# ---- Regressions: bugs the fuzzers found ------------------------------------------------------

def test_bug1_one_stdout_line_per_problem_whatever_the_id(tmp_path, capsys):
    _make_dataset(tmp_path, json.dumps(CLASS_NAMES).encode(),
                  [json.dumps({"id": "a\nb", "image": "missing.png", "label": "cat"}).encode(),
                   json.dumps({"id": "x\x1b[2J", "image": "missing.png", "label": "cat"}).encode()],
                  None, [])
    rc, out, err = _run(capsys, ["validate", str(tmp_path)])
    assert rc == 1
    train = tmp_path / "train.jsonl"
    assert out.splitlines() == [f"{train}:1: id='a\\nb': missing image file",
                                f"{train}:2: id='x\\x1b[2J': missing image file"]
    rc, out, err = _run(capsys, ["validate", "--json", str(tmp_path)])
    assert [p["id"] for p in json.loads(out)] == ["a\nb", "x\x1b[2J"]  # JSON keeps the exact ids


@pytest.mark.parametrize("flags", [[], ["--json"]])
def test_bug2_lone_surrogate_id_gives_no_traceback(tmp_path, capsys, flags):
    _make_dataset(tmp_path, json.dumps(CLASS_NAMES).encode(),
                  [b'{"id": "\\ud800", "image": "missing.png", "label": "cat"}'], None, [])
    rc, out, err = _run(capsys, ["validate", *flags, str(tmp_path)])
    assert rc == 1 and "Traceback" not in out + err
    reason = 'field "id" holds a lone UTF-16 surrogate'
    if flags:
        (problem,) = json.loads(out)
        assert problem["id"] is None and problem["reason"].startswith(reason)
    else:
        (line,) = out.splitlines()
        assert line.startswith(f"{tmp_path / 'train.jsonl'}:1: id=-: {reason}")


@pytest.mark.parametrize("name", ["x" * 300, "bad\x00byte", "\ud800"])
def test_bug8_unusable_path_is_a_usage_error(tmp_path, capsys, name):
    rc, out, err = _run(capsys, ["validate", str(tmp_path / name)])
    assert rc == 2 and out == ""
    assert err.startswith("capro validate: error: ") and len(err.splitlines()) == 1 and err[:-1].isprintable()
    assert "give the dataset directory" in err


def test_bug8_too_long_classes_or_manifest_name_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot access it \\(File name too long\\)"):
        read_classes(tmp_path / ("d" * 300))
    with pytest.raises(DataError, match="cannot access it \\(File name too long\\)"):
        read_split(tmp_path, "train", [], manifest=tmp_path / ("m" * 300))
