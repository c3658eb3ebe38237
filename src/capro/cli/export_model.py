"""``capro export-model RUN --format torchscript|onnx|state-dict --out DIR``: the classifier alone."""

from __future__ import annotations

import argparse

from capro.deploy import FORMATS, export_model


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-model", help="export the trained classifier for serving without capro",
        description="Writes the run's final backbone + classifier (none of the MoCo / prototype "
                    "machinery) as TorchScript (loads with torch alone), ONNX (onnxruntime) or a "
                    "plain state dict, and DIR/model.json with the class names, input size, channels, "
                    "resize, crop and normalisation that `capro predict` applies.")
    p.add_argument("run", metavar="RUN", help="run directory (the --out of `capro run`)")
    p.add_argument("--format", choices=FORMATS, default="torchscript", help="default torchscript")
    p.add_argument("--out", metavar="DIR", required=True, help="directory for the exported classifier and model.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    meta = export_model(args.run, args.out, fmt=args.format)
    print(f"export-model: {args.out}/{meta['file']} ({meta['format']}, {len(meta['classes'])} classes, "
          f"input {meta['input']['channels']}x{meta['input']['size']}x{meta['input']['size']}) and "
          f"{args.out}/model.json")
    return 0
