"""The quick start in one process (what `make demo` runs): synthetic scenes -> segmenter -> graph cache ->
classifier -> eval -> infer on real photographs, each step the tool command it prints.

    python tools/quickstart.py             # the six commands of docs/quickstart.md, one after another
    python tools/quickstart.py --dry-run   # print them only

One process pays the start-up (importing torch, torch_geometric, ...) once instead of once per tool; the commands and
their results are the same as typing them one by one. Rerunning reuses finished steps. Everything is written under
the current directory: datasets/synthetic, runs/quickstart_seg, runs/quickstart (eval-validation/, infer/).
"""

from __future__ import annotations

import argparse

from twostream.commands import command_parser, console


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("quickstart", __doc__)
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p


def main(args: argparse.Namespace) -> int:
    from twostream.quickstart import run_steps, steps

    return run_steps(steps(console=console()), console=console(), dry_run=args.dry_run)
