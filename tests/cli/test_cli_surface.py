"""The command line's conventions: `capro config` round-trips, help shows defaults, `clean`
takes KEY=VALUE, warnings are one line."""

import shutil
import warnings

import pytest
import yaml

from capro.cli import COMMANDS, build_parser, main
from capro.config import PRESETS, load_config, to_dict


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_config_round_trips_through_run_config(preset, tmp_path, capsys):
    assert main(["config", "--preset", preset, "stage1.epochs=3", "method.keep_rules=[paper]"]) == 0
    printed = capsys.readouterr().out
    path = tmp_path / "cfg.yaml"
    path.write_text(printed)
    want = load_config(preset=preset, overrides=["stage1.epochs=3", "method.keep_rules=[paper]"])
    assert yaml.safe_load(printed) == to_dict(want)
    # what `capro run --config FILE` loads (run.config_from_args) is the same config
    from capro.cli.run import config_from_args

    args = build_parser().parse_args(["run", "DATA", "--out", "RUN", "--config", str(path)])
    assert config_from_args(args) == want
    assert main(["config", "--config", str(path)]) == 0
    assert capsys.readouterr().out == printed
    assert main(["config", "--preset", preset, "--out", str(tmp_path / "out.yaml"), "stage1.epochs=3",
                 "method.keep_rules=[paper]"]) == 0
    assert yaml.safe_load((tmp_path / "out.yaml").read_text()) == yaml.safe_load(printed)


def test_config_rejects_an_unknown_key_in_one_line(capsys):
    assert main(["config", "model.nope=1"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("capro config: error: unknown config key 'model.nope'") and len(err.splitlines()) == 1


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_every_command_help_shows_its_defaults():
    subs = _subparsers()
    assert set(subs) == {c.replace("_", "-") for c in COMMANDS}
    for name, sub in subs.items():
        text = sub.format_help()
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, [], "==SUPPRESS==") and action.help:
                assert "default" in (action.help % {"default": action.default}).lower() or \
                    f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)
            if action.option_strings and action.dest != "help":
                assert action.help, f"capro {name} {action.option_strings[0]} has no help"


def test_clean_takes_key_value_overrides(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    assert main(["clean", str(run), "--device", "cpu", "--pseudo-th", "0.99"]) == 0
    by_flag = (run / "stage3a" / "samples.jsonl").read_bytes()
    assert main(["clean", str(run), "--device", "cpu", "clean.pseudo_th=0.99"]) == 0
    assert (run / "stage3a" / "samples.jsonl").read_bytes() == by_flag
    assert main(["clean", str(run), "--device", "cpu", "clean.pseudo_th=0.1"]) == 0
    assert (run / "stage3a" / "samples.jsonl").read_bytes() != by_flag
    capsys.readouterr()
    assert main(["clean", str(run), "model.queue=8"]) == 2
    assert "clean.* and method.* keys only" in capsys.readouterr().err


def test_warnings_reach_the_terminal_as_one_line(capsys, monkeypatch):
    from capro.cli import config as config_cmd

    def warn_then_run(args):
        warnings.warn("something to know\n  on two lines", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(config_cmd, "run", warn_then_run)
    saved = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["config"]) == 0
    assert warnings.showwarning is saved  # restored after the command
    assert capsys.readouterr().err == "capro config: warning: something to know on two lines\n"
