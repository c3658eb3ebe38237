"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config FILE``, ``--preset NAME`` and trailing ``key.sub=value`` overrides."""
    p.add_argument("--config", metavar="FILE", help="YAML config file")
    p.add_argument("--preset", help="named preset: webvision1k, google500, nuswide, cpu, finetune, "
                   "tiny (`capro config --preset NAME` prints what it sets; docs/config.md)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted config overrides, e.g. stage1.epochs=5 model.backbone=resnet18")
