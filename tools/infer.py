#!/usr/bin/env python
"""Predict scenes and scene graphs for images: top-k scenes, the objects and which of them touch.

    python tools/infer.py photo.jpg                                   # the quick-start model (runs/quickstart)
    python tools/infer.py photos/ 'more/**/*.png' --checkpoint runs/swin_gat --out predictions/
    python tools/infer.py photo.jpg --segmenter hf:nvidia/segformer-b0-finetuned-ade-512-512   # graphs only
    python tools/infer.py photos/ --json > predictions.json           # one JSON document on stdout
    python tools/infer.py photo.jpg --explain --out why/              # why: objects, contacts, CAM, streams

Inputs are image files, folders (their images) and glob patterns. --out DIR receives per image <stem>.json (scenes +
scene graph, what tools/visualize.py --prediction reads), <stem>_sem.png (palette PNG of the semantic map),
<stem>_overlay.png, <stem>_panel.png and <stem>.html; with --explain also <stem>_cam.png, and the JSON, panel, viewer
and printed summary say why (docs/explanations.md). A bad input is reported on one line and skipped; the exit status
is then 1. A missing or unusable checkpoint stops at once with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from twostream.cli import run_cli

DEFAULT_CHECKPOINT = "runs/quickstart"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB", help="images, folders of images, glob patterns")
    p.add_argument("--checkpoint", default=None, metavar="RUN_OR_CKPT",
                   help="run folder, checkpoint file or export folder (tools/export.py) "
                        f"(default: {DEFAULT_CHECKPOINT}, or none with --segmenter)")
    p.add_argument("--segmenter", default=None, metavar="SPEC",
                   help="upsnet:RUN_OR_CKPT_OR_EXPORT, hf:NAME_OR_FOLDER or detectron2:CONFIG[@WEIGHTS]: scene graphs "
                        "from this "
                        "segmenter; alone, graphs without scenes; with --checkpoint, the classifier's graphs "
                        "(default: the checkpoint's own segmenter)")
    p.add_argument("--topk", type=int, default=5, help="scenes to report per image (default: 5)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write JSON, PNGs and HTML per image into this folder (default: none)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (a list of per-input results, errors included) and nothing else "
                        "on stdout (default: text)")
    p.add_argument("--explain", action="store_true",
                   help="explain each prediction: node and edge importance, occlusion, image CAM, stream "
                        "contributions (default: off)")
    p.add_argument("--explain-scene", default=None, metavar="SCENE",
                   help="explain this scene of the vocabulary instead of the predicted one (implies --explain)")
    p.add_argument("--explain-method", default="integrated_gradients",
                   choices=["integrated_gradients", "saliency", "input_x_gradient"],
                   help="attribution method for nodes and edges (default: integrated_gradients)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision; fp16 needs a GPU (default: fp32)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"], help="default: INFO")
    return p


def main(args: argparse.Namespace) -> int:
    from twostream.engine.checkpoint import CheckpointError
    from twostream.infer_outputs import format_prediction, run_inference
    from twostream.inference import Predictor

    log = logging.getLogger("twostream.infer")
    if args.topk < 1 or args.batch_size < 1:
        get_args_parser().error("--topk and --batch-size must be at least 1")
    if args.log_level != "DEBUG":
        logging.getLogger("twostream.models").setLevel(logging.WARNING)  # the model's parameter table is noise here
    try:
        if args.checkpoint is None and args.segmenter is not None:
            predictor = Predictor.from_segmenter(args.segmenter, device=args.device, precision=args.precision)
        else:
            predictor = Predictor.from_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT, segmenter=args.segmenter,
                                                  device=args.device, precision=args.precision,
                                                  explain_method=args.explain_method)
    except (ValueError, ImportError) as e:  # a bad spec, device, precision or checkpoint/segmenter combination
        raise CheckpointError(str(e).strip().splitlines()[0]) from None
    log.info("%s", predictor)

    def report(record: dict, pred) -> None:
        if not record["ok"]:
            print(f"error: {record['error']}", file=sys.stderr, flush=True)
        elif not args.json:
            print(format_prediction(record["input"], pred), flush=True)

    records = run_inference(predictor, args.inputs, topk=args.topk, batch_size=args.batch_size, out_dir=args.out,
                            on_record=report, explain=args.explain, explain_scene=args.explain_scene)
    if args.json:
        json.dump(records, sys.stdout, indent=1)
        print()
    failed = sum(not r["ok"] for r in records)
    if args.out and len(records) > failed:
        log.info("wrote %d predictions to %s", len(records) - failed, args.out)
    if failed:
        print(f"{failed} of {len(records)} inputs failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(get_args_parser, main))
