"""What do the edges add? Train and evaluate ablation variants of one config over seeds; print a table.

    python tools/ablate.py --config configs/relbench.yaml --seeds 3 --out runs/relbench

Each variant is a set of config overrides (twostream.engine.ablation.VARIANTS; docs/relations.md lists them); each
seed is a run folder <out>/<variant>/seed<k> trained and evaluated by the normal engine. Finished runs are reused, not
retrained. The table (mean ± std of top-1 over seeds, for the whole split and each subset, and the paired difference
to two_stream) is printed and written to <out>/ablation.md; every number to <out>/ablation.json.
"""

from __future__ import annotations

import argparse
import sys

from twostream.commands import command_parser
from twostream.engine.ablation import VARIANTS


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("ablate", __doc__)
    p.add_argument("--config", required=True, help="YAML every variant starts from")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="NAME",
                   help=f"variants, in table order (default: all: {' '.join(VARIANTS)})")
    p.add_argument("--seeds", type=int, default=3, help="runs per variant, train.seed + 0, 1, ... (default: 3)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: CPUs / jobs)")
    p.add_argument("--out", default="runs/ablation", help="parent folder of the runs (default: runs/ablation)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for every variant, applied before the variant's own (default: none)")
    p.add_argument("--scene-group", action="append", default=[], metavar="NAME=SCENE,SCENE",
                   help="also score the images whose true scene is one of these, as subset NAME (repeatable)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"], help="default: INFO")
    return p


def _scene_groups(items: list[str]) -> dict[str, list[str]]:
    groups = {}
    for item in items:
        name, _, scenes = item.partition("=")
        if not name or not scenes:
            raise ValueError(f"--scene-group: '{item}' is not NAME=SCENE,SCENE (e.g. pair=dining_room,living_room)")
        groups[name] = [s for s in scenes.split(",") if s]
    return groups


def main(args: argparse.Namespace) -> int:
    from twostream.engine.ablation import run_ablation

    result = run_ablation(args.config, args.variants, seeds=args.seeds, out=args.out, jobs=args.jobs, opts=args.opts,
                          scene_groups=_scene_groups(args.scene_group), threads=args.threads)
    print(result["table"])
    for failure in result["failed"]:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if result["failed"] else 0
