#!/usr/bin/env python
"""Export a trained model for sharing: weights as safetensors plus the files needed to rebuild and run it.

    python tools/export.py --checkpoint runs/quickstart --out exports/quickstart
    python tools/infer.py photo.jpg --checkpoint exports/quickstart

The folder holds model.safetensors (no optimizer state, no pickle), config.yaml (the resolved config),
class_table.json (the segmenter's label set) and, for a classifier, vocabulary.json (scene class order). Every tool
that takes a checkpoint takes the folder: tools/eval.py --checkpoint, tools/infer.py --checkpoint / --segmenter
upsnet:FOLDER, tools/build_graphs.py --checkpoint / --segmenter upsnet:FOLDER, model.segmenter.checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys

from twostream.cli import run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="run folder (uses best.pth, else last.pth) or checkpoint file, of a classifier or a segmenter")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"], help="default: INFO")
    return p


def main(args: argparse.Namespace) -> int:
    from twostream.engine.checkpoint import export_safetensors

    path = export_safetensors(args.checkpoint, args.out)
    logging.getLogger("twostream.export").info("wrote %s and its config, vocabulary and class table", path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(get_args_parser, main))
