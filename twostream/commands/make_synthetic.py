"""Write a synthetic ADE20K-format dataset (ADEChallengeData2016 layout) for tests, demos and smoke runs.

    python tools/make_synthetic.py --out datasets/synthetic --train-per-scene 40 --val-per-scene 10 --size 128

The relation benchmark (docs/relations.md): every living_room and dining_room image relation-only, 200 of them in
the validation split, with furniture whose boxes do not give the contact away:

    python tools/make_synthetic.py --out datasets/relbench --train-per-scene 100 --val-per-scene 100 --size 64 \
        --relation-fraction 1.0 --relation-layout irregular

Neither the objects' geometry nor their numbers of contacts giving the contact away (a shelf the other object
touches): --relation-layout irregular_degree_matched.
"""

from __future__ import annotations

import argparse
import logging

from twostream.commands import command_parser
from twostream.data.synthetic import RELATION_LAYOUTS, SCENES, make_synthetic


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("make-synthetic", __doc__)
    p.add_argument("--out", default="datasets/synthetic", help="output folder (default: datasets/synthetic)")
    p.add_argument("--train-per-scene", type=int, default=40, help="training images per scene type (default: 40)")
    p.add_argument("--val-per-scene", type=int, default=10, help="validation images per scene type (default: 10)")
    p.add_argument("--size", type=int, nargs="+", default=[128], metavar="PX",
                   help="image size: one value (square) or H W (default: 128)")
    p.add_argument("--seed", type=int, default=0, help="same seed and flags -> same bytes (default: 0)")
    p.add_argument("--workers", type=int, default=0, help="processes drawing images; 0 = this one (default: 0)")
    p.add_argument("--instances", action="store_true", help="also write annotations_instance/ (R = class, G = index)")
    p.add_argument("--scenes", nargs="+", default=None, metavar="SCENE",
                   help=f"scene types to draw (default: all: {' '.join(SCENES)})")
    p.add_argument("--relation-fraction", type=float, default=0.25,
                   help="share of living_room/dining_room images told apart only by adjacency (default: 0.25)")
    p.add_argument("--relation-layout", default="boxes", choices=list(RELATION_LAYOUTS),
                   help="relation-only layout: boxes (rectangles: their boxes give the contact away), irregular "
                        "(concave furniture whose boxes overlap whether or not it touches), degree_matched or "
                        "irregular_degree_matched (the same plus a shelf that the object apart from the table "
                        "touches: every object has as many contacts in both scenes) (default: boxes)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default: 90)")
    p.add_argument("--overwrite", action="store_true", help="replace a synthetic set made with other parameters")
    return p


def main(args: argparse.Namespace) -> None:
    if len(args.size) not in (1, 2):
        raise SystemExit(f"--size takes one value or two (H W), got {len(args.size)}")
    size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    try:
        make_synthetic(args.out, train_per_scene=args.train_per_scene, val_per_scene=args.val_per_scene, size=size,
                       seed=args.seed, workers=args.workers, instances=args.instances, scenes=args.scenes,
                       relation_fraction=args.relation_fraction, relation_layout=args.relation_layout,
                       quality=args.quality, overwrite=args.overwrite)
    except ValueError as e:
        logging.getLogger("make_synthetic").error("%s", e)
        raise SystemExit(2) from None
    return 0
