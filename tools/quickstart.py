#!/usr/bin/env python
"""The quick start in one process (what `make demo` runs): synthetic scenes -> segmenter -> graph cache ->
classifier -> eval -> infer on real photographs, each step the tool command it prints.

    python tools/quickstart.py             # the six commands of README "What make demo runs", one after another
    python tools/quickstart.py --dry-run   # print them only

One process pays the start-up (importing torch, torch_geometric, ...) once instead of once per tool; the commands and
their results are the same as typing them one by one. Rerunning reuses finished steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p


def main(args: argparse.Namespace) -> int:
    from twostream.quickstart import run_steps, steps

    tools = Path(__file__).resolve().parent
    if tools.parent == Path.cwd().resolve():
        tools = Path("tools")  # print the commands as typed from the repository root
    return run_steps(steps(tools), dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
