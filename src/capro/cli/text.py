"""``capro text DATA --out RUN``: clean and encode the web texts, build the textual prototypes."""

from __future__ import annotations

import argparse
from pathlib import Path

from capro.cli._common import add_config_args
from capro.config import load_config
from capro.data.layout import read_classes
from capro.data.validate import load_split_for_run
from capro.text import pipeline


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "text", help="clean + encode the samples' texts and the class concept texts",
        description="Clean every sample's web text (title, description, tags as configured by "
                    "data.text_fields), encode it with text.encoder into RUN/text/texts.npy, and "
                    "encode each class's concept text (WordNet or classes.json definitions, "
                    "text.concept_source) into RUN/text/prototypes.npy; RUN/text/concepts.jsonl "
                    "shows what each prototype was built from. Reruns skip finished steps; an "
                    "interrupted encoding continues where it stopped.")
    p.add_argument("data", metavar="DATA", help="dataset directory")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (writes RUN/text/)")
    p.add_argument("--split", default="train",
                   help="which manifest to encode (default: train; others write texts_SPLIT.npy)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N (same as device=...)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip invalid rows (recorded in RUN/rejected.jsonl) instead of refusing the data")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.skip_bad:
        overrides.append("data.skip_bad=true")
    cfg = load_config(args.config, preset=args.preset, overrides=overrides)
    out = Path(args.out)
    classes = read_classes(args.data)
    split = load_split_for_run(args.data, args.split, run_dir=out, skip_bad=cfg.data.skip_bad,
                               check_images=cfg.data.check_images, classes=classes)
    pipeline.encode_split_texts(cfg, split, out)
    protos = pipeline.class_prototypes(cfg, classes, out)
    print(f"capro text: {len(split)} {args.split} texts -> {pipeline.texts_path(out, args.split)} "
          f"(cleaned: {pipeline.cleaned_path(out, args.split)})")
    print(f"capro text: {protos.shape[0]} classes -> {pipeline.prototypes_path(out)} "
          f"(concept texts: {pipeline.concepts_path(out)})")
    return 0
