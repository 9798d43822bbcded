#!/usr/bin/env python
"""Build the scene graphs of dataset splits into graph caches (stage 2 of the staged training).

    python tools/build_graphs.py --config configs/swin_gat.yaml --source gt
    python tools/build_graphs.py --config configs/swin_gat.yaml --source pred --checkpoint runs/seg/best.pth
    python tools/build_graphs.py --config configs/swin_gat.yaml --split validation --opts graph.granularity=region

Items are read through the dataset (``data.root``, ``data.image_size`` with the validation transforms, no
augmentation, ``data.max_items``); ``gt`` builds graphs from the annotations in worker processes, ``pred`` segments
the images with the trained segmenter in batches. The cache goes to ``graph.cache_dir`` when set, else to
``<data.root>/graphs/<split>-<source>-<hash>`` (the folder training reads). Interrupt at will: running the same
command again keeps the finished shards; a cache built with other settings or another checkpoint is rebuilt.
"""

from __future__ import annotations

import argparse
import logging
import sys

from twostream.cli import run_cli

log = logging.getLogger("twostream.build_graphs")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment YAML (its data and graph sections are used)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (default: none)")
    p.add_argument("--source", choices=["gt", "pred"], default=None,
                   help="graphs from annotations or from segmenter predictions (default: graph.source)")
    p.add_argument("--checkpoint", default=None,
                   help="pred: trained segmenter checkpoint (default: model.segmenter.checkpoint)")
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
    from pathlib import Path

    import torch

    from twostream.config import load_config
    from twostream.data.ade20k import ADE20KDataset
    from twostream.data.classes import ade20k150
    from twostream.data.transforms import build_transforms
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.graph.cache import build_graph_cache, checkpoint_identity, default_cache_dir

    cfg = load_config(args.config, args.opts)
    source = args.source or cfg.graph.source
    if source not in ("gt", "pred"):
        print(f"error: graph.source is '{source}'; pass --source gt or --source pred (online graphs are not cached)",
              file=sys.stderr)
        return 2
    splits = args.split or [cfg.data.train_split, cfg.data.val_split]
    if (args.out or cfg.graph.cache_dir) and len(splits) > 1:
        print("error: one cache folder (--out / graph.cache_dir) holds one split; pass a single --split",
              file=sys.stderr)
        return 2

    predict, checkpoint, device = None, None, torch.device("cpu")
    class_table = ade20k150()
    if source == "pred":
        from twostream.engine.checkpoint import load_segmenter

        path = args.checkpoint or cfg.model.segmenter.checkpoint
        if not path:
            print("error: --source pred needs --checkpoint (or model.segmenter.checkpoint)", file=sys.stderr)
            return 2
        if args.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(args.device)
        segmenter = load_segmenter(path, device)
        predict, checkpoint, class_table = segmenter.predict, checkpoint_identity(path), segmenter.class_table
        log.info("segmenter from %s (%s, %d classes) on %s", path, class_table.name, len(class_table), device)
    try:
        builder = SceneGraphBuilder.from_config(cfg.graph, class_table)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    for split in splits:
        dataset = ADE20KDataset(cfg.data.root, split, vocabulary=None,
                                transform=build_transforms(cfg.data, train=False), skip_bad=cfg.data.skip_bad,
                                max_items=cfg.data.max_items)
        out = Path(args.out or cfg.graph.cache_dir or default_cache_dir(
            cfg, split, source, args.checkpoint if source == "pred" else None))
        log.info("%s: %d items -> %s (%s)", split, len(dataset), out, builder)
        cache = build_graph_cache(out, dataset, builder, kind=source, predict=predict, checkpoint=checkpoint,
                                  device=device, batch_size=args.batch_size or cfg.eval.batch_size,
                                  num_workers=cfg.data.num_workers if args.workers is None else args.workers,
                                  shard_size=args.shard_size, progress=not args.no_progress)
        log.info("%s: %d graphs in %s", split, len(cache), out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(get_args_parser, main))
