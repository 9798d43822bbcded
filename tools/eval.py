#!/usr/bin/env python
"""Evaluate a trained checkpoint on a dataset split.

    python tools/eval.py --checkpoint runs/quickstart                       # best.pth of the run, validation split
    python tools/eval.py --config configs/swin_gat.yaml --checkpoint runs/swin_gat/best.pth --graphs gt
    python tools/eval.py --checkpoint runs/quickstart_seg/best.pth          # a segmenter: mIoU + graph quality

A classifier gets top-1, top-k, mean per-class accuracy, a per-class table and a confusion-matrix image, and (when its
graphs come from its own segmenter) the segmenter's mIoU / pixel accuracy and the scene-graph quality against the
annotations' graphs. Everything goes to <out>/metrics.json (default <run folder>/eval-<split>/).
"""

from __future__ import annotations

import argparse
import sys

from twostream.cli import run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run folder (uses best.pth, else last.pth)")
    p.add_argument("--config", default=None,
                   help="YAML whose data section to evaluate on (default: the checkpoint's own config); the model is "
                        "always the checkpoint's")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of that config, e.g. data.root=... data.max_items=100 (default: none)")
    p.add_argument("--split", default=None, help="dataset split (default: data.val_split)")
    p.add_argument("--graphs", default="auto", choices=["auto", "online", "gt", "store"],
                   help="classifier graphs: online = from its segmenter as at inference, gt = from the annotations "
                        "(oracle), store = a graph-only model's graph store (no image read), auto = store when the "
                        "model is graph-only and its store exists, else online when the model has a segmenter "
                        "(default: auto)")
    p.add_argument("--out", default=None, help="output folder (default: <run folder>/eval-<split>)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"], help="default: INFO")
    return p


def main(args: argparse.Namespace) -> int:
    from twostream.config import load_config
    from twostream.engine.checkpoint import load_checkpoint
    from twostream.engine.evaluate import evaluate_checkpoint
    from twostream.inference import resolve_checkpoint

    cfg = None
    if args.config or args.opts:
        if args.config:
            cfg = load_config(args.config, args.opts)
        else:  # overrides of the checkpoint's own config
            import tempfile

            from twostream.config import config_from_dict, save_config

            own = config_from_dict(load_checkpoint(resolve_checkpoint(args.checkpoint))["config"])
            with tempfile.TemporaryDirectory() as tmp:
                cfg = load_config(save_config(own, f"{tmp}/config.yaml"), args.opts)
    evaluate_checkpoint(args.checkpoint, cfg=cfg, split=args.split, graphs=args.graphs, out_dir=args.out,
                        device=args.device, batch_size=args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(get_args_parser, main))
