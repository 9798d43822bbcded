"""Build the scene graphs of dataset splits into graph stores (stage 2 of the staged training).

    python tools/build_graphs.py --config configs/swin_gat.yaml --source gt
    python tools/build_graphs.py --config configs/swin_gat.yaml --source pred --checkpoint runs/seg/best.pth
    python tools/build_graphs.py --config configs/swin_gat.yaml --split validation --opts graph.granularity=region
    python tools/build_graphs.py --config configs/graph_only_gat.yaml --source pred \
        --segmenter hf:nvidia/segformer-b0-finetuned-ade-512-512
    torchrun --nproc_per_node=8 tools/build_graphs.py --config configs/places365_graph_only.yaml   # 8 GPUs
    python tools/build_graphs.py --from-json predictions/ --scenes scenes.txt --out graphs/mine    # graphs only
    python tools/build_graphs.py --convert datasets/ADEChallengeData2016/graphs/training-pred-0123456789

Items are read through the dataset (``data.root`` and ``data.format``, the validation transforms, no augmentation,
``data.max_items``); ``gt`` builds graphs from the annotations at ``data.image_size`` in worker processes, ``pred``
reads the images at the segmenter's own input size (``model.segmenter.input_size``; by default the size its
checkpoint was trained at) and segments them in batches with the segmenter (a trained UPSNet, or a published model
through --segmenter), each node with the segmenter's mean confidence (docs/resolution.md). The store goes to
``graph.cache_dir`` when set (``{split}`` in it becomes the split's name), else to
``<data.root>/graphs/<split>-<source>-<hash>`` (the folder training reads). Interrupt at will: running the same
command again (with any number of processes) keeps the finished chunks; a store built with other settings, another
segmenter or at another size is rebuilt. Under torchrun each rank builds its share of the chunks (``pred``: on its
own GPU) and rank 0 writes the store; the folder must be on a file system every rank sees.

--from-json turns a folder of prediction JSONs (``tools/infer.py --out``) or scene-graph JSONs into a store, scene
labels from --scenes (``<stem> <scene>`` per line); files that are not scene graphs are named, skipped and counted.
--convert turns a graph cache of the old shard format into a store, in place unless --out is given.
"""

from __future__ import annotations

import argparse

from twostream.commands import command_parser


def get_args_parser() -> argparse.ArgumentParser:
    p = command_parser("build-graphs", __doc__)
    p.add_argument("--config", default=None, help="experiment YAML (its data and graph sections are used); not "
                   "needed with --convert or with --from-json and --out")
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
    p.add_argument("--out", default=None, help="store folder; only with one --split (default: graph.cache_dir or "
                   "<data.root>/graphs/<split>-<source>-<hash>)")
    p.add_argument("--from-json", default=None, metavar="DIR",
                   help="build the store from the prediction or scene-graph JSON files in DIR instead of a dataset")
    p.add_argument("--scenes", default=None, metavar="FILE",
                   help="--from-json / --convert: scene labels, '<stem> <scene>' per line (sceneCategories.txt "
                        "format)")
    p.add_argument("--convert", default=None, metavar="OLD_DIR",
                   help="convert an old shard graph cache (meta.json + shard-*.pt) into a graph store")
    p.add_argument("--workers", type=int, default=None, help="loader worker processes (default: data.num_workers; "
                   "0 without --config)")
    p.add_argument("--batch-size", type=int, default=None, help="pred: images per forward pass (default: "
                   "eval.batch_size)")
    p.add_argument("--device", default="auto", help="pred: auto, cpu, cuda, cuda:N; under torchrun, auto and cuda "
                   "mean each rank's cuda:LOCAL_RANK (default: auto)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="items per chunk, the unit an interrupted build keeps (default: 1024)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"], help="default: INFO")
    return p


def _config(args: argparse.Namespace):
    import dataclasses

    from twostream.config import load_config
    from twostream.engine.checkpoint import resolve_segmenter_config

    overrides = list(args.opts)
    if args.checkpoint:
        overrides += ["model.segmenter.kind=upsnet", f"model.segmenter.checkpoint={args.checkpoint}"]
    cfg = load_config(args.config, overrides)
    if args.segmenter:
        from twostream.models.segmenter import parse_segmenter_spec

        seg = parse_segmenter_spec(args.segmenter, base=cfg.model.segmenter)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, segmenter=seg))
    return resolve_segmenter_config(cfg)  # a run folder or export -> its file; architecture keys checked against it


def main(args: argparse.Namespace) -> int:
    from twostream.engine import graph_caches

    progress = not args.no_progress
    if args.convert:
        graph_caches.convert_cache(args.convert, args.out, scenes_file=args.scenes)
        return 0
    if args.from_json:
        if args.out is None and args.config is None:
            raise ValueError("--from-json needs --out (the store folder) or --config (its graph.cache_dir / default "
                             "folder, with one --split)")
        out = args.out
        workers = args.workers or 0
        if out is None:
            cfg = _config(args)
            if not args.split or len(args.split) != 1:
                raise ValueError("--from-json with --config builds one split: pass a single --split")
            out = graph_caches.store_dir(cfg, args.split[0])
            workers = cfg.data.num_workers if args.workers is None else args.workers
        graph_caches.build_store_from_json(args.from_json, out, scenes_file=args.scenes, workers=workers,
                                           chunk_size=args.chunk_size, progress=progress)
        return 0
    if args.config is None:
        raise ValueError("--config is required (or --convert OLD_DIR, or --from-json DIR --out STORE)")
    cfg = _config(args)
    source = args.source or cfg.graph.source
    splits = args.split or [cfg.data.train_split, cfg.data.val_split]
    graph_caches.build_split_caches(cfg, source=source, splits=splits, out=args.out, device=args.device,
                                    batch_size=args.batch_size, workers=args.workers, chunk_size=args.chunk_size,
                                    progress=progress)
    return 0
