"""Export a trained model for sharing: weights as safetensors plus the files needed to rebuild and run it.

    python tools/export.py --checkpoint runs/quickstart --out exports/quickstart
    python tools/infer.py photo.jpg --checkpoint exports/quickstart

The folder holds model.safetensors (no optimizer state, no pickle), config.yaml (the config that rebuilds the model),
vocabulary.json (scene class order and training counts), class_table.json (the segmenter's label set) and, for a
scene classifier, config.json and README.md: the Hugging Face Hub's model card, with the run's training command and
the figures of tools/eval.py when it scored this checkpoint. It is the folder SceneClassifier.save_pretrained writes:
SceneClassifier.from_pretrained, tools/infer.py and tools/demo.py read it, and it can be uploaded to the Hub as it is.
Every tool that takes a checkpoint takes the folder (a segmenter's too): tools/eval.py --checkpoint, tools/infer.py
--checkpoint / --segmenter upsnet:FOLDER, tools/build_graphs.py --checkpoint / --segmenter upsnet:FOLDER,
model.segmenter.checkpoint.
"""

from __future__ import annotations

import argparse
import logging

from twostream.commands import command_parser


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("export", __doc__)
    p.add_argument("--checkpoint", required=True,
                   help="run folder (uses best.pth, else last.pth) or checkpoint file, of a classifier or a segmenter")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"], help="default: INFO")
    return p


def main(args: argparse.Namespace) -> int:
    from twostream.engine.checkpoint import export_safetensors, load_trained

    log = logging.getLogger("twostream.export")
    trained = load_trained(args.checkpoint, mmap=True)
    checkpoint = trained["path"]
    if trained.get("stage") != "classifier":  # a segmenter: the weights and their files
        path = export_safetensors(checkpoint, args.out)
        log.info("wrote %s and its config and class table", path)
        return 0
    from twostream.api import SceneClassifier

    if args.log_level != "DEBUG":
        logging.getLogger("twostream.models").setLevel(logging.WARNING)  # the parameter table is noise here
    SceneClassifier.from_pretrained(args.checkpoint, device="cpu").save_pretrained(args.out)
    log.info("wrote %s: model.safetensors, config.yaml, vocabulary.json, class_table.json, config.json and the model "
             "card README.md", args.out)
    return 0
