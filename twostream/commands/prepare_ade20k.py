"""Check an ADEChallengeData2016 folder: counts, missing pairs, size mismatches, bad labels, unreadable files.

    python tools/prepare_ade20k.py --root datasets/ADEChallengeData2016 --check

Exit status: 0 when no problem was found, 1 otherwise (every problem is printed on one line naming its file).
Without --check, prints where to get the dataset and how it must be laid out.
"""

from __future__ import annotations

import argparse

from twostream.commands import command_parser
from twostream.data.check import check_dataset

HOW_TO_GET = """\
ADE20K scene parsing (ADEChallengeData2016, ~923 MB): download ADEChallengeData2016.zip from
http://sceneparsing.csail.mit.edu/ (the MIT Scene Parsing Benchmark) and unzip it so that {root} holds:
  images/training/*.jpg  images/validation/*.jpg  annotations/training/*.png  annotations/validation/*.png
  sceneCategories.txt
Then run: python tools/prepare_ade20k.py --root {root} --check"""


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("prepare-ade20k", __doc__)
    p.add_argument("--root", default="datasets/ADEChallengeData2016",
                   help="dataset folder (default: datasets/ADEChallengeData2016)")
    p.add_argument("--check", action="store_true", help="read every file and report problems")
    p.add_argument("--splits", nargs="+", default=["training", "validation"],
                   help="splits to check (default: training validation)")
    p.add_argument("--workers", type=int, default=4, help="threads decoding files (default: 4)")
    p.add_argument("--limit", type=int, default=0, help="decode only the first N pairs per split (default: 0 = all)")
    p.add_argument("--top", type=int, default=15, help="scenes shown in the distribution (default: 15)")
    p.add_argument("--max-lines", type=int, default=200, help="problems printed at most (default: 200)")
    return p


def main(args: argparse.Namespace) -> int:
    if not args.check:
        print(HOW_TO_GET.format(root=args.root))
        return 0
    report = check_dataset(args.root, args.splits, workers=args.workers, limit=args.limit)
    print(report.format(top=args.top, max_lines=args.max_lines))
    return 0 if report.ok else 1
