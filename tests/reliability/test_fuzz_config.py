"""Fuzzed configs: YAML files and dotted overrides give a Config or one ConfigError line, never
another exception; an accepted config saves and loads back unchanged."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml
from fuzz_strategies import any_text, fuzz, json_values, nonblank_text
from hypothesis import given
from hypothesis import strategies as st

from capro.config import PRESETS, Config, get_key, load_config, save_config, to_dict
from capro.errors import ConfigError


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += _leaf_keys(tp, f"{prefix}{f.name}.")
        elif f.name != "preset":
            out.append(f"{prefix}{f.name}")
    return out


LEAF_KEYS = _leaf_keys(Config)
BAD_KEYS = ["nope", "stage1.nope", "stage1", "data", "stage1.epochs.x", "a..b", ".x", "x.",
            "stage1..epochs", " ", "train.on_nonfinite.x"]
# Made-up keys may hold line breaks and control characters (messages quote them on one line).
keys = st.one_of(st.sampled_from(LEAF_KEYS), st.sampled_from(BAD_KEYS), nonblank_text)
# Values as a user types them after "=": YAML scalars, flow lists and maps, and junk.
raw_values = st.one_of(
    st.sampled_from(["0", "1", "-1", "2", "0.5", "1e-3", "1.0e400", "-.inf", "true", "no", "null",
                     "~", "", "[]", "[title]", "[title, tags, nope]", "{a: 1}", "[", "]", "'x",
                     "stop", "skip", "cpu", "resnet18", "auto", "!!binary AAAA", "&a [*a]"]),
    st.integers(-10**12, 10**12).map(str),
    st.floats(allow_nan=False).map(repr),
    any_text.filter(lambda s: "\x00" not in s),
)
overrides = st.builds(lambda k, v: f"{k}={v}", keys, raw_values)
presets = st.one_of(st.none(), st.sampled_from([*PRESETS, "nope", "", "Tiny"]))


def _expect_config_or_config_error(call) -> Config | None:
    try:
        cfg = call()
    except ConfigError as exc:
        msg = str(exc)
        assert msg and len(msg.splitlines()) == 1 and msg.isprintable(), msg
        return None
    assert isinstance(cfg, Config)
    return cfg


def _round_trips(cfg: Config, tmp_dir) -> None:
    save_config(cfg, tmp_dir / "config.yaml")
    again = load_config(tmp_dir / "config.yaml")
    assert repr(to_dict(again)) == repr(to_dict(cfg))  # repr: nan == nan here


@fuzz(150)
@given(st.lists(overrides, max_size=4), presets)
def test_overrides_give_a_config_or_a_config_error(tmp_path_factory, ovs, preset):
    cfg = _expect_config_or_config_error(lambda: load_config(preset=preset, overrides=ovs))
    if cfg is not None:
        _round_trips(cfg, tmp_path_factory.mktemp("cfg"))


@fuzz(120)
@given(st.sampled_from(LEAF_KEYS), raw_values)
def test_an_accepted_override_sets_exactly_that_key(key, raw):
    cfg = _expect_config_or_config_error(lambda: load_config(overrides=[f"{key}={raw}"]))
    if cfg is None:
        return
    try:  # what an override means: its YAML value, else the raw text
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    got = get_key(cfg, key)
    assert repr(got) == repr(float(value) if isinstance(got, float) else value)
    default = to_dict(Config())
    changed = to_dict(cfg)
    section, _, leaf = key.rpartition(".")
    if section:
        default[section].pop(leaf), changed[section].pop(leaf)
    else:
        default.pop(leaf), changed.pop(leaf)
    assert changed == default  # nothing else moved


# YAML documents: mappings of real and made-up sections with values of any type (made-up keys
# may hold line breaks and control characters).
_section_values = st.dictionaries(st.one_of(st.sampled_from([k.split(".")[-1] for k in LEAF_KEYS]),
                                            nonblank_text), json_values, max_size=4)
_documents = st.dictionaries(
    st.one_of(st.sampled_from(sorted({k.split(".")[0] for k in LEAF_KEYS})), nonblank_text),
    st.one_of(_section_values, json_values), max_size=4)
# Raw text a user might save: any valid Unicode, control characters included.
_raw_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)


@fuzz(120)
@given(st.one_of(_documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), _raw_text,
                 st.sampled_from(["preset: tiny\n", "preset: nope\n", "stage1: 3\n", "- a\n",
                                  "stage1:\n  epochs: -1\n", "a: &x [*x]\n", "? [a]\n: 1\n",
                                  "stage1: {epochs: 1, epochs: 2}\n", "seed: !!python/name:os.system\n",
                                  "data:\n  image_size: 1.5\n", "train:\n  amp: bf17\n"])))
def test_config_files_give_a_config_or_a_config_error(tmp_path_factory, text):
    tmp = tmp_path_factory.mktemp("cfgfile")
    (tmp / "c.yaml").write_text(text, encoding="utf-8")
    cfg = _expect_config_or_config_error(lambda: load_config(tmp / "c.yaml"))
    if cfg is not None:
        _round_trips(cfg, tmp)


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


# ---- Regressions: bugs the fuzzers found ------------------------------------------------------

@pytest.mark.parametrize("ovs, text", [(["preset.x=1"], None), (["preset=[a]"], None),
                                       ([], "preset: [cpu]\n"), ([], "preset: {a: 1}\n")])
def test_bug3_non_string_preset_is_a_config_error(tmp_path, ovs, text):
    path = None
    if text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(text)
    with pytest.raises(ConfigError, match="config key 'preset': expected a preset name"):
        load_config(path, overrides=ovs)


@pytest.mark.parametrize("kind, reason", [("bad-utf8", "not valid UTF-8 (byte 0xff at offset 6)"),
                                          ("deep", "invalid YAML (nested too deeply)"),
                                          ("directory", "is a directory"),
                                          ("bad-date", "invalid value (month must be in 1..12)"),
                                          ("too-long", "cannot read the config file (File name too long)")])
def test_bug4_unreadable_config_file_is_a_config_error(tmp_path, kind, reason):
    path = tmp_path / ("x" * 300 if kind == "too-long" else "c.yaml")
    if kind == "bad-utf8":
        path.write_bytes(b"seed: \xff\n")
    elif kind == "deep":
        path.write_bytes(b"[" * 3_000)
    elif kind == "bad-date":
        path.write_bytes(b"seed: 2001-13-01\n")
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {reason}")
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("text, ovs, expected", [
    ("seed: 1\x07\n", [], "invalid YAML (unacceptable character #x0007"),
    (None, ["a\nb=1"], "unknown config key 'a\\nb'"),
    (None, ["stage1.x\ny=1"], "unknown config key 'stage1.x\\ny'"),
    ('"a\\nb": 1\n', [], "unknown config key 'a\\nb'"),
    (None, ["x\x1b[2J"], "override 'x\\x1b[2J' must look like key.sub=value"),
    (None, ["data.text_fields=[a\u2028b, 2]"], "config key 'data.text_fields[1]': expected str, got 2"),
])
def test_bug5_config_errors_are_one_line(tmp_path, text, ovs, expected):
    path = None
    if text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=ovs)
    assert expected in str(info.value)
    assert len(str(info.value).splitlines()) == 1 and str(info.value).isprintable()


@pytest.mark.parametrize("overrides, message", [
    (["stage1.lr=.nan"], "config key 'stage1.lr': nan is not a finite number"),
    (["stage2.lr=.inf"], "config key 'stage2.lr': inf is not a finite number"),
    (["method.beta=-.inf"], "config key 'method.beta': -inf is not a finite number"),
    (["openset.threshold=1.0e+400"], "config key 'openset.threshold': inf is not a finite number"),
    (["data.image_size=0"], "config key 'data.image_size': 0 must be >= 8"),
    (["model.temperature=0"], "config key 'model.temperature': 0.0 must be > 0"),
    (["graph.k=0", "graph.keep=0"], "config key 'graph.k': 0 must be >= 2"),
    (["graph.k=5", "graph.keep=0"], "config key 'graph.keep': 0 must be >= 1"),
    (["match.topk=0"], "config key 'match.topk': 0 must be >= 1"),
    (["model.moco_m=1.5"], "config key 'model.moco_m': 1.5 must be in [0, 1]"),
    (["model.proto_m=-0.1"], "config key 'model.proto_m': -0.1 must be in [0, 1]"),
    (["method.pseudo_th=0"], "config key 'method.pseudo_th': 0.0 must be in (0, 1]"),
    (["clean.pseudo_th=2"], "config key 'clean.pseudo_th': 2.0 must be in (0, 1]"),
    (["model.queue=0"], "config key 'model.queue': 0 must be >= 1"),
    (["stage3.batch_size=0"], "config key 'stage3.batch_size': 0 must be >= 1"),
    (["train.eval_batch_size=0"], "config key 'train.eval_batch_size': 0 must be >= 1"),
    (["stage2.epochs=-1"], "config key 'stage2.epochs': -1 must be >= 0"),
    (["seed=-1"], "config key 'seed': -1 must be in [0, 4294967295]"),
])
def test_bug6_out_of_range_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    assert str(info.value) == message


@pytest.mark.parametrize("override, value", [
    ("data.image_size=8", 8), ("model.temperature=0.001", 0.001), ("graph.k=2", 2), ("graph.keep=1", 1),
    ("match.topk=1", 1), ("model.moco_m=0", 0.0), ("model.proto_m=1", 1.0), ("method.pseudo_th=1", 1.0),
    ("clean.pseudo_th=null", None), ("stage1.epochs=0", 0), ("seed=4294967295", 4294967295),
])
def test_values_at_the_range_edges_are_accepted(override, value):
    key = override.split("=")[0]
    extra = ["graph.keep=1"] if key == "graph.k" else []
    assert get_key(load_config(overrides=[override, *extra]), key) == value
