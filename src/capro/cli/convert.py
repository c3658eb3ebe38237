"""``capro convert FORMAT SRC --out DATA``: turn a native dataset layout into capro's layout."""

from __future__ import annotations

import argparse
import sys

from capro.data.adapters import ADAPTERS, convert
from capro.errors import UsageError

# converter option -> command-line flag
_OPTIONS = {"image_dir": "--images", "label_key": "--label-key", "classes_file": "--classes", "split": "--split"}


def register(subparsers: argparse._SubParsersAction) -> None:
    formats = "; ".join(f"{a.name}: {a.help}" for a in ADAPTERS.values())
    p = subparsers.add_parser(
        "convert", help="convert WebVision / NUS-WIDE / WebDataset / class folders to capro's layout",
        description=f"Write DATA/classes.json and DATA/<split>.jsonl from a native dataset. Formats: {formats}. "
                    "Images are symlinked under DATA/images/ (or copied with --copy-images; WebDataset "
                    "shards are always extracted). Skipped rows are listed in DATA/convert_rejected.jsonl.")
    p.add_argument("format", choices=sorted(ADAPTERS), metavar="FORMAT", help=", ".join(sorted(ADAPTERS)))
    p.add_argument("src", metavar="SRC", help="the native dataset directory (or a .tar shard)")
    p.add_argument("--out", required=True, metavar="DATA", help="new dataset directory in capro's layout")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--copy-images", dest="images", action="store_const", const="copy",
                      help="copy the image files into DATA/images/")
    mode.add_argument("--link-images", dest="images", action="store_const", const="link",
                      help="symlink the image files into DATA/images/ (the default)")
    p.add_argument("--images", dest="image_dir", metavar="DIR", help="nuswide: the image directory (default SRC/Flickr)")
    p.add_argument("--label-key", metavar="KEY", help="webdataset: the metadata JSON key holding the label (default: label)")
    p.add_argument("--classes", dest="classes_file", metavar="FILE",
                   help="webdataset, imagefolder: the class list (classes.json-style JSON, or one name per line)")
    p.add_argument("--split", choices=("train", "val", "test"), help="webdataset, imagefolder: the split to write (default: train)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = {key: getattr(args, key) for key in ("images", *_OPTIONS) if getattr(args, key) is not None}
    if args.format == "webdataset" and options.get("images") == "copy":
        del options["images"]  # shards are always extracted, which is a copy
    flags = {**_OPTIONS, "images": f"--{options.get('images')}-images"}
    extra = [flags[key] for key in options if key not in ADAPTERS[args.format].options]
    if extra:
        raise UsageError(f"{', '.join(extra)} does not apply to format {args.format!r}")
    result = convert(args.format, args.src, args.out, **options)
    print(f"capro convert: {result.summary()}", file=sys.stderr)
    return 0
