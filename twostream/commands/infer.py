"""Predict scenes and scene graphs for images: top-k scenes, the objects and which of them touch.

    python tools/infer.py photo.jpg                                   # the quick-start model (runs/quickstart)
    python tools/infer.py photos/ 'more/**/*.png' --checkpoint runs/swin_gat --out predictions/
    python tools/infer.py photos/ --out predictions/ --save all       # also the drawings (~1 MB per image)
    python tools/infer.py photo.jpg --segmenter hf:nvidia/segformer-b0-finetuned-ade-512-512   # graphs only
    python tools/infer.py photos/ --json > predictions.json           # one JSON document on stdout
    python tools/infer.py photo.jpg --explain --out why/              # why: objects, contacts, CAM, streams

Inputs are image files, folders (their images) and glob patterns. --out DIR receives predictions.csv (one row per
input: top-k scenes, node and pair counts, error) and per image what --save names: json (<stem>.json: scenes + scene
graph, what tools/visualize.py --prediction reads) and sem (<stem>_sem.png, palette PNG of the semantic map) by
default, ~8 KB per image, and cam (<stem>_cam.png) when the prediction is explained; overlay, panel and html
(0.2-0.5 MB each) on request, drawn in worker processes. A bad input is reported on one line and skipped; the exit
status is then 1. A missing or unusable checkpoint stops at once with exit status 2. With --explain the JSON, the
panel, the viewer and the printed summary say why, and <stem>_cam.png holds the image's class-activation map
(docs/explanations.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from twostream.commands import command_parser
from twostream.infer_outputs import ARTEFACTS, DEFAULT_SAVE  # the artefact table; loads no torch

DEFAULT_CHECKPOINT = "runs/quickstart"


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("infer", __doc__)
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
                   help="write predictions.csv and the files --save names into this folder (default: none)")
    p.add_argument("--save", default=",".join(DEFAULT_SAVE), metavar="KINDS",
                   help="with --out: comma list of " + ", ".join(f"{n} (~{a.bytes // 1000} KB)" for n, a in
                                                                 ARTEFACTS.items()) +
                        f" per image, or all, or none (index only) (default: {','.join(DEFAULT_SAVE)})")
    p.add_argument("--workers", type=int, default=None,
                   help="processes drawing overlay/panel/html while the model runs (default: with 4 or more CPUs, "
                        "more than 8 inputs and drawings asked for, up to 4, one less than the CPU count; else 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: one on a terminal)")
    p.add_argument("--quiet", action="store_true", help="no per-image summary on stdout (errors still print)")
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
    from tqdm import tqdm

    from twostream.engine.checkpoint import CheckpointError
    from twostream.infer_outputs import expand_inputs, format_prediction, parse_save, run_inference
    from twostream.inference import Predictor

    log = logging.getLogger("twostream.infer")
    if args.topk < 1 or args.batch_size < 1:
        get_args_parser().error("--topk and --batch-size must be at least 1")
    try:
        parse_save(args.save)
    except ValueError as e:
        get_args_parser().error(str(e))
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

    save = parse_save(args.save)
    inputs = expand_inputs(args.inputs)  # listed once: counted for the defaults below, then predicted
    drawings = args.out is not None and any(ARTEFACTS[n].drawing for n in save)
    workers = args.workers
    if workers is None:
        # on 2 cores a drawing process only competes with the model for the same CPUs (measured: docs/inference.md)
        cpus = os.cpu_count() or 1
        workers = min(4, cpus - 1) if drawings and len(inputs) > 8 and cpus >= 4 else 0
    progress = not args.no_progress and sys.stderr.isatty() and len(inputs) > 1
    say = tqdm.write if progress else print

    def report(record: dict, pred) -> None:
        if not record["ok"]:
            say(f"error: {record['error']}", file=sys.stderr)
        elif not args.json and not args.quiet:
            say(format_prediction(record["input"], pred), file=sys.stdout)

    records = run_inference(predictor, args.inputs, topk=args.topk, batch_size=args.batch_size, out_dir=args.out,
                            save=save, render_workers=max(0, workers), progress=progress, keep_graphs=args.json,
                            on_record=report, explain=args.explain, explain_scene=args.explain_scene,
                            entries=inputs)
    if args.json:
        json.dump(records, sys.stdout, indent=1)
        print()
    failed = sum(not r["ok"] for r in records)
    if args.out and len(records) > failed:
        log.info("wrote %d predictions to %s (index: %s)", len(records) - failed, args.out,
                 Path(args.out) / "predictions.csv")
    if failed:
        print(f"{failed} of {len(records)} inputs failed", file=sys.stderr)
        return 1
    return 0
