"""The ``capro`` command. A thin layer: each subcommand parses its arguments and calls the library.

Every subcommand lives in its own module under ``capro.cli`` exposing ``register(subparsers)``,
which adds its parser and sets ``func`` (``args -> exit code``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from capro import __version__
from capro.errors import CaproError

# Order is the order shown by ``capro --help``.
COMMANDS = (
    "demo", "run", "config", "simulate", "validate", "convert", "text", "graph", "train",
    "clean", "evaluate", "predict", "export", "export_model", "report",
)


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text.lower() or default in (None, False, argparse.SUPPRESS)
                or action.option_strings == [] or isinstance(default, list) and not default):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Every subcommand's parser shows the defaults in its help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capro",
        description="Learn image classifiers from web-crawled images and their text (CAPro).",
    )
    parser.add_argument("--version", action="version", version=f"capro {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"capro.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"capro.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def _warning_line(command: str):
    """A ``warnings.showwarning`` that prints one line, ``capro COMMAND: warning: MESSAGE``, with no
    source path or code line (a user's run is not debugging capro)."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        print(f"capro {command}: warning: {text}", file=file or sys.stderr)
    return show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills a trailing KEY=VALUE positional before reading later options, so overrides
    # written after an option arrive here; accept them where the command takes overrides.
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    shown, warnings.showwarning = warnings.showwarning, _warning_line(args.command)
    try:
        return int(args.func(args) or 0)
    except CaproError as exc:
        print(f"capro {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"capro {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
