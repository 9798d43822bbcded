#!/usr/bin/env python
"""Build the scene graphs of dataset splits into graph caches (stage 2 of the staged training).

    python tools/build_graphs.py --config configs/swin_gat.yaml --source gt
    python tools/build_graphs.py --config configs/swin_gat.yaml --source pred --checkpoint runs/seg/best.pth
    python tools/build_graphs.py --config configs/swin_gat.yaml --split validation --opts graph.granularity=region
    python tools/build_graphs.py --config configs/graph_only_gat.yaml --source pred \
        --segmenter hf:nvidia/segformer-b0-finetuned-ade-512-512

Items are read through the dataset (``data.root``, ``data.image_size`` with the validation transforms, no
augmentation, ``data.max_items``); ``gt`` builds graphs from the annotations in worker processes, ``pred`` segments
the images in batches with the segmenter (a trained UPSNet, or a published model through --segmenter). The cache
goes to ``graph.cache_dir`` when set, else to ``<data.root>/graphs/<split>-<source>-<hash>`` (the folder training
reads). Interrupt at will: running the same command again keeps the finished shards; a cache built with other
settings or another segmenter is rebuilt.
"""

from __future__ import annotations

import argparse
import sys

from twostream.cli import run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment YAML (its data and graph sections are used)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (default: none)")
    p.add_argument("--source", choices=["gt", "pred"], default=None,
                   help="graphs from annotations or from segmenter predictions (default: graph.source)")
    p.add_argument("--checkpoint", default=None,
                   help="pred: trained UPSNet: run folder, checkpoint file or export folder (default: "
                        "model.segmenter.checkpoint)")
    p.add_argument("--segmenter", default=None, metavar="SPEC",
                   help="pred: upsnet:CKPT, hf:NAME_OR_FOLDER or detectron2:CONFIG[@WEIGHTS] (default: "
                        "model.segmenter); train with the same model.segmenter to read these graphs")
    p.add_argument("--split", action="append", default=None,
                   help="split to build; repeat for several (default: data.train_split and data.val_split)")
    p.add_argument("--out", default=None, help="cache folder; only with one --split (default: graph.cache_dir or "
                   "<data.root>/graphs/<split>-<source>-<hash>)")
    p.add_argument("--workers", type=int, default=None, help="loader worker processes (default: data.num_workers)")
    p.add_argument("--batch-size", type=int, default=None, help="pred: images per forward pass (default: "
                   "eval.batch_size)")
    p.add_argument("--device", default="auto", help="pred: auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--shard-size", type=int, default=256, help="graphs per shard file (default: 256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"], help="default: INFO")
    return p


def main(args: argparse.Namespace) -> int:
    from twostream.config import load_config
    from twostream.engine.checkpoint import resolve_segmenter_config
    from twostream.engine.graph_caches import build_split_caches

    overrides = list(args.opts)
    if args.checkpoint:
        overrides += ["model.segmenter.kind=upsnet", f"model.segmenter.checkpoint={args.checkpoint}"]
    cfg = load_config(args.config, overrides)
    if args.segmenter:
        import dataclasses

        from twostream.models.segmenter import parse_segmenter_spec

        seg = parse_segmenter_spec(args.segmenter, base=cfg.model.segmenter)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, segmenter=seg))
    cfg = resolve_segmenter_config(cfg)  # a run folder or export -> its file; architecture keys checked against it
    source = args.source or cfg.graph.source
    splits = args.split or [cfg.data.train_split, cfg.data.val_split]
    build_split_caches(cfg, source=source, splits=splits, out=args.out, device=args.device,
                       batch_size=args.batch_size, workers=args.workers, shard_size=args.shard_size,
                       progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(get_args_parser, main))
