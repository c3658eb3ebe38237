"""``capro config [--preset P] [--config FILE] [KEY=VALUE ...]``: print the resolved config."""

from __future__ import annotations

import argparse
import sys

import yaml

from capro.cli._common import add_config_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config", help="print the resolved config (YAML) that `capro run` would use",
        description="Print the config `capro run` would use with the same --preset, --config and "
                    "KEY=VALUE overrides, every key resolved (docs/config.md explains each). Save it, "
                    "edit it and pass it back with `capro run DATA --out RUN --config FILE`: it "
                    "resolves to the same config. data.channels: null follows the training images.")
    add_config_args(p)
    p.add_argument("--out", metavar="FILE", help="write the YAML to FILE instead of standard output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from capro.config import load_config, save_config, to_dict

    cfg = load_config(args.config, preset=args.preset, overrides=args.overrides)
    if args.out:
        save_config(cfg, args.out)
        print(f"capro config: wrote {args.out}", file=sys.stderr)
    else:
        yaml.safe_dump(to_dict(cfg), sys.stdout, sort_keys=False)
    return 0
