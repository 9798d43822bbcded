"""Bring your own data: convert a folder per scene (plus masks and a class table) into the layout twostream reads.

    python tools/prepare_dataset.py --images photos/ --out datasets/mydata                      # scenes only
    python tools/prepare_dataset.py --images photos/ --masks masks/ --classes classes.csv --out datasets/mydata
    python tools/prepare_dataset.py --images photos/ --masks masks/ --classes classes.csv --check-only

photos/<scene>/*.jpg (or photos/train/<scene>/ and photos/val/<scene>/); masks/ mirrors photos/ with one label PNG per
image (or holds them all in one folder); classes.csv has the columns id,name (and r,g,b for colour-coded masks).
Every file is checked first; each problem is printed on one line naming its file (sizes, unknown ids, missing
masks, ...) and nothing is written (exit status 1). See docs/data.md, "Bring your own data".
"""

from __future__ import annotations

import argparse

from twostream.commands import command_parser


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("prepare-dataset", __doc__)
    p.add_argument("--images", required=True, help="folder of scene folders (optionally inside train/ and val/)")
    p.add_argument("--out", default=None, help="dataset folder to write, e.g. datasets/mydata (needed unless "
                                               "--check-only)")
    p.add_argument("--masks", default=None, help="folder of label PNGs, one per image (default: none)")
    p.add_argument("--classes", default=None, metavar="CSV",
                   help="class table of the masks: id,name[,r,g,b][,stuff] (default: the masks hold ADE20K-150 ids)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of each scene held out for validation when --images is not split (default: 0.2)")
    p.add_argument("--seed", type=int, default=0, help="which images are held out (default: 0)")
    p.add_argument("--ignore-id", type=int, default=255,
                   help="mask value meaning 'not annotated', written as 255 (default: 255)")
    p.add_argument("--background-id", type=int, default=None,
                   help="class id meaning background, written as 0 (default: id 0 when its name is background, "
                        "other, unlabeled, void, ...)")
    p.add_argument("--workers", type=int, default=4, help="threads reading and writing files (default: 4)")
    p.add_argument("--check-only", action="store_true", help="check every file, write nothing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--max-lines", type=int, default=100, help="problems printed at most (default: 100)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"], help="default: INFO")
    return p


def main(args: argparse.Namespace) -> int:
    from twostream.data.convert import convert_folders

    if args.out is None and not args.check_only:
        get_args_parser().error("give --out DIR (or --check-only)")
    report = convert_folders(args.images, args.out or args.images,
                             masks=args.masks, classes=args.classes, val_fraction=args.val_fraction, seed=args.seed,
                             ignore_id=args.ignore_id, background_id=args.background_id, workers=args.workers,
                             check_only=args.check_only, overwrite=args.overwrite)
    print(report.format(max_lines=args.max_lines))
    if report.ok and report.written:
        print(f"next: train on it as docs/data.md (\"Bring your own data\") shows, with data.root={args.out}")
    return 0 if report.ok else 1
