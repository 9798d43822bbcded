"""Stage 2 of the staged training: the scene graphs of dataset splits, built once into graph caches.

``gt`` graphs come from the annotations; ``pred`` graphs from a segmenter's predictions: a trained UPSNet
(``model.segmenter.checkpoint``) or a published model (``model.segmenter.kind: hf | detectron2``), so graph-only and
two-stream classifiers can train on the graphs of a segmenter nobody trained here. The cache folder is the one
training computes from the same config (:func:`twostream.graph.cache.default_cache_dir`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from twostream.config import Config

log = logging.getLogger(__name__)

__all__ = ["build_split_caches", "segmenter_for_cache"]


def segmenter_for_cache(cfg: Config, device: torch.device):
    """The segmenter ``cfg.model.segmenter`` names, ready to predict: a UPSNet from its trained checkpoint, or a
    published model (frozen) through its adapter."""
    from twostream.data.classes import ade20k150
    from twostream.engine.checkpoint import load_segmenter
    from twostream.models.segmenter import build_segmenter

    seg_cfg = cfg.model.segmenter
    if seg_cfg.kind == "upsnet":
        if not seg_cfg.checkpoint:
            raise ValueError("graphs from predictions need a trained segmenter: pass --checkpoint (or --segmenter "
                             "upsnet:CKPT | hf:NAME | detectron2:CONFIG) or set model.segmenter.checkpoint")
        segmenter = load_segmenter(seg_cfg.checkpoint, device)
    elif seg_cfg.kind in ("hf", "detectron2"):
        segmenter = build_segmenter(dataclasses.replace(seg_cfg, trainable=False), ade20k150()).to(device).eval()
    else:
        raise ValueError(f"graphs from predictions need a segmenter; model.segmenter.kind is '{seg_cfg.kind}'")
    return segmenter


def build_split_caches(cfg: Config, *, source: str, splits: list[str], out: str | Path | None = None,
                       device: str = "auto", batch_size: int | None = None, workers: int | None = None,
                       shard_size: int = 256, progress: bool = True) -> list:
    """Build (or finish, or rebuild when stale) the graph cache of each split; return the opened caches.

    Args:
        cfg: data and graph settings, and for ``pred`` the segmenter (``cfg.model.segmenter``).
        source: ``gt`` or ``pred``.
        out: the cache folder when one split is built (default ``graph.cache_dir`` or the default folder).
    """
    from twostream.data.ade20k import ADE20KDataset
    from twostream.data.classes import dataset_class_table
    from twostream.data.transforms import build_transforms
    from twostream.engine.distributed import resolve_device
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.graph.cache import build_graph_cache, default_cache_dir, segmenter_identity

    if source not in ("gt", "pred"):
        raise ValueError(f"graph source '{source}' cannot be cached; use gt or pred (online graphs are built in "
                         "the model)")
    if (out or cfg.graph.cache_dir) and len(splits) > 1:
        raise ValueError("one cache folder (--out / graph.cache_dir) holds one split; pass a single --split")
    predict, identity, dev = None, None, torch.device("cpu")
    class_table = annotations = dataset_class_table(cfg.data)
    if source == "pred":
        dev = resolve_device(device)
        segmenter = segmenter_for_cache(cfg, dev)
        predict, identity, class_table = segmenter.predict, segmenter_identity(cfg.model.segmenter), \
            segmenter.class_table
        log.info("segmenter %s (%s, %d classes) on %s", identity, class_table.name, len(class_table), dev)
    builder = SceneGraphBuilder.from_config(cfg.graph, class_table)
    caches = []
    for split in splits:
        dataset = ADE20KDataset(cfg.data.root, split, vocabulary=None,
                                transform=build_transforms(cfg.data, train=False), skip_bad=cfg.data.skip_bad,
                                max_items=cfg.data.max_items, class_table=annotations)
        folder = Path(out or cfg.graph.cache_dir or default_cache_dir(cfg, split, source))
        log.info("%s: %d items -> %s (%s)", split, len(dataset), folder, builder)
        with torch.inference_mode():
            cache = build_graph_cache(folder, dataset, builder, kind=source, predict=predict, checkpoint=identity,
                                      device=dev, batch_size=batch_size or cfg.eval.batch_size,
                                      num_workers=cfg.data.num_workers if workers is None else workers,
                                      shard_size=shard_size, progress=progress)
        log.info("%s: %d graphs in %s", split, len(cache), folder)
        caches.append(cache)
    return caches
