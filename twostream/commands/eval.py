"""Evaluate a trained checkpoint on a dataset split.

    python tools/eval.py --checkpoint runs/quickstart                       # best.pth of the run, validation split
    python tools/eval.py --config configs/swin_gat.yaml --checkpoint runs/swin_gat/best.pth --graphs gt
    python tools/eval.py --checkpoint runs/quickstart_seg/best.pth          # a segmenter: mIoU + graph quality
    python tools/eval.py --checkpoint runs/quickstart --subset hard=hard_images.txt   # + a named subset
    python tools/eval.py --checkpoint runs/why --graphs gt --explain        # + explanations.jsonl, hit rates

A classifier gets top-1, top-k, mean per-class accuracy, a per-class table and a confusion-matrix image, and (when its
graphs come from its own segmenter) the segmenter's mIoU / pixel accuracy and the scene-graph quality against the
annotations' graphs: the segmenter runs at its own input size (by default the size it was trained at), and both
are scored against each image's annotation at its original size (docs/resolution.md). A classifier is also scored on
named subsets of the split: every list of the dataset's
synthetic.json (e.g. relation_only) and every --subset NAME=FILE (one image stem per line), under "subsets".
Everything goes to <out>/metrics.json (default <run folder>/eval-<split>/). --explain explains
every image (<out>/explanations.jsonl) and scores the explanations (metrics.json "explanation"; docs/explanations.md).
"""

from __future__ import annotations

import argparse

from twostream.commands import command_parser


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("eval", __doc__)
    p.add_argument("--checkpoint", required=True,
                   help="run folder (uses best.pth, else last.pth), checkpoint file or export folder (tools/export.py)")
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
    p.add_argument("--subset", action="append", default=[], metavar="NAME=FILE",
                   help="also score the images FILE lists (one stem per line) as subset NAME; repeatable (default: "
                        "only the lists of the dataset's synthetic.json)")
    p.add_argument("--out", default=None, help="output folder (default: <run folder>/eval-<split>)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    p.add_argument("--explain", action="store_true",
                   help="classifier: explain every image and score the explanations (default: off)")
    p.add_argument("--explain-method", default="integrated_gradients",
                   choices=["integrated_gradients", "saliency", "input_x_gradient"],
                   help="attribution method for nodes and edges (default: integrated_gradients)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"], help="default: INFO")
    return p


def main(args: argparse.Namespace) -> int:
    from twostream.config import load_config
    from twostream.engine.checkpoint import load_trained
    from twostream.engine.evaluate import evaluate_checkpoint
    from twostream.engine.evaluators.subsets import parse_subset_arg

    cfg = None
    if args.config or args.opts:
        if args.config:
            cfg = load_config(args.config, args.opts)
        else:  # overrides of the checkpoint's own config
            import tempfile

            from twostream.config import config_from_dict, save_config

            own = config_from_dict(load_trained(args.checkpoint, weights=False)["config"])
            with tempfile.TemporaryDirectory() as tmp:
                cfg = load_config(save_config(own, f"{tmp}/config.yaml"), args.opts)
    subsets = [parse_subset_arg(text) for text in args.subset]
    evaluate_checkpoint(args.checkpoint, cfg=cfg, split=args.split, graphs=args.graphs, out_dir=args.out,
                        device=args.device, batch_size=args.batch_size, subsets=subsets, explain=args.explain,
                        explain_method=args.explain_method)
    return 0
