#!/usr/bin/env python
"""`twostream benchmark`, from a checkout: the same arguments and code (twostream/commands/benchmark.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from twostream.commands.benchmark import get_args_parser, main

if __name__ == "__main__":
    from twostream.cli import run_cli

    sys.exit(run_cli(get_args_parser, main))
