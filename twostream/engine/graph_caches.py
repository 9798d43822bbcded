"""Stage 2 of the staged training: the scene graphs of dataset splits, built once into graph stores.

``gt`` graphs come from the annotations; ``pred`` graphs from a segmenter's predictions: a trained UPSNet
(``model.segmenter.checkpoint``) or a published model (``model.segmenter.kind: hf | detectron2``), so graph-only and
two-stream classifiers can train on the graphs of a segmenter nobody trained here. A segmenter segments at its own
input size (``model.segmenter.input_size``; by default the size its checkpoint was trained at): ``pred`` items are
read at that size and their graphs built from its map there, with each node's mean confidence
(docs/resolution.md). The store folder is the one training computes from the same config (:func:`store_dir`); its
key includes that size (:func:`map_size`).

Across processes. Under ``torchrun`` (``WORLD_SIZE`` > 1) rank 0 prepares the folder, every rank builds the chunks
``k`` with ``k % world_size == rank`` that are not on disk yet (on ``cuda:<LOCAL_RANK>`` for ``pred``), and rank 0,
once every chunk is there, writes the store (:func:`twostream.graph.store_build.run_build`). The ranks coordinate
through the folder (which must be on a file system they all see), not through collectives, so ranks of unequal speed
never hit a collective's timeout and no process group is needed; a rank that dies takes the job down (torchrun), and
the same command run again keeps every finished chunk. Graphs-only training (:func:`graphs_only_datasets`) reads
these stores and nothing else.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from twostream.config import Config, json_hash
from twostream.engine.distributed import launched_ranks, resolve_device

log = logging.getLogger(__name__)

__all__ = ["build_split_caches", "build_store_from_json", "checkpoint_identity", "convert_cache", "default_cache_dir",
           "graphs_only", "graphs_only_datasets", "map_size", "open_store", "segmenter_for_cache",
           "segmenter_identity", "store_available", "store_dir", "store_items"]

# --------------------------------------------------------------------------------------------------------------------
# Identities and folders
# --------------------------------------------------------------------------------------------------------------------


def checkpoint_identity(path: str | Path) -> str:
    """A short content hash of a checkpoint file: a retrained checkpoint at the same path gets a new identity."""
    from twostream.models.segmenter_base import content_hash

    return content_hash(path, "segmenter checkpoint")


def segmenter_identity(seg_cfg: Any) -> str:
    """What a ``pred`` store's graphs depend on: the segmenter class's own ``cache_identity`` (a trained UPSNet's
    checkpoint content, a Hugging Face hub name or local folder's weights, a detectron2 config + weights + opts;
    :mod:`twostream.models.segmenter_base`). The graph store takes it as an opaque string."""
    from twostream.models.segmenter import segmenter_identity as identity

    return identity(seg_cfg)


def default_cache_dir(cfg: Config, split: str, source: str | None = None, checkpoint: str | None = None) -> Path:
    """``<data.root>/graphs/<split>-<source>-<hash>``: where ``tools/build_graphs.py`` writes the graphs of ``split``
    and where training looks for them when ``graph.cache_dir`` is empty.

    The hash covers the ``cfg.graph`` values that shape a graph, the size of the maps they are built from
    (:func:`map_size`) and, for ``pred``, the identity of the segmenter (:func:`segmenter_identity` of
    ``cfg.model.segmenter``; ``checkpoint`` overrides a UPSNet checkpoint), so other settings, another size or
    another segmenter get another folder. (Stores of versions before the map size was keyed, and old shard caches
    converted in their folders, are not found here: build them again, or name them in ``graph.cache_dir``.)
    """
    from twostream.graph.builder import shaping_settings

    source = source or cfg.graph.source
    if source not in ("gt", "pred"):
        raise ValueError(f"graph store: source must be gt or pred (online graphs are not stored), got '{source}'")
    key: dict[str, Any] = {"settings": shaping_settings(cfg.graph), "source": source}
    seg_cfg = cfg.model.segmenter
    if source == "pred" and checkpoint:
        seg_cfg = dataclasses.replace(seg_cfg, kind="upsnet", checkpoint=str(checkpoint))
    if source == "pred":
        identity = segmenter_identity(seg_cfg)  # first: a missing checkpoint is a FileNotFoundError naming it
        from twostream.models.segmenter import segmenter_class

        key["checkpoint" if segmenter_class(seg_cfg.kind).weights_from_checkpoint else "segmenter"] = identity
    key["map_size"] = map_size(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, segmenter=seg_cfg)),
                               source, resolve=False)
    return Path(cfg.data.root) / "graphs" / f"{split}-{source}-{json_hash(key, 10)}"


def _geometry(cfg: Config):
    """The :class:`~twostream.models.segmenter_input.SegmenterInput` of ``cfg.model.segmenter`` (``input_size:
    null`` resolved from its checkpoint); builds no segmenter."""
    from twostream.engine.segmenters import resolved_input_size
    from twostream.models.segmenter import segmenter_class
    from twostream.models.segmenter_input import segmenter_input

    seg = cfg.model.segmenter
    return segmenter_input(resolved_input_size(seg), cfg.data, segmenter_class(seg.kind))


def map_size(cfg: Config, source: str, resolve: bool = True) -> dict:
    """How the label maps of a ``source`` store of ``cfg`` are sized (JSON-ready, part of the store's key):
    ``pred``: the segmenter's input (:class:`~twostream.models.segmenter_input.SegmenterInput`), which decides the
    map; ``gt``, or a segmenter that resizes images itself (fed at ``data.image_size``): ``data.image_size``. Both
    with ``letterbox``, ``data.keep_ratio``'s fit-and-pad where it applies.

    ``resolve=False`` (the default folder's name) reads no checkpoint: ``input_size: null`` of a checkpoint-trained
    kind stays ``"trained"``, the size its checkpoint records, which the checkpoint's content hash already keys."""
    from twostream.models.segmenter import segmenter_class

    d = cfg.data
    seg = cfg.model.segmenter
    trained = source == "pred" and seg.input_size is None and segmenter_class(seg.kind).weights_from_checkpoint
    if trained and not resolve:
        return {"segmenter_input": {"size": "trained", "keep_ratio": seg.keep_ratio, "max_size": seg.max_size,
                                    "stride": segmenter_class(seg.kind).stride},
                "letterbox": d.keep_ratio and not seg.keep_ratio}
    if source == "pred":
        geometry = _geometry(cfg)
        if geometry.size is not None:
            return {"segmenter_input": geometry.to_dict(), "letterbox": d.keep_ratio and not geometry.keep_ratio}
    return {"image_size": [int(v) for v in d.image_size], "letterbox": d.keep_ratio}


def store_dir(cfg: Config, split: str, source: str | None = None) -> Path:
    """The store folder of ``split``: ``graph.cache_dir`` (``{split}`` in it is replaced by the split's name, so one
    setting serves both splits) or :func:`default_cache_dir`."""
    if cfg.graph.cache_dir:
        return Path(cfg.graph.cache_dir.replace("{split}", split))
    return default_cache_dir(cfg, split, source)


def graphs_only(cfg: Config) -> bool:
    """A graph-only classifier whose graphs are stored (``gt`` / ``pred``): it can train and be evaluated from the
    graph store alone, without opening an image."""
    m = cfg.model
    return m.gnn.enabled and not m.image_encoder.enabled and cfg.graph.source in ("gt", "pred")


def build_command(cfg: Config, split: str) -> str:
    return (f"python tools/build_graphs.py --config <this config> --source {cfg.graph.source} --split {split}"
            + (f" --opts graph.cache_dir={cfg.graph.cache_dir}" if cfg.graph.cache_dir else ""))


def open_store(cfg: Config, split: str, settings: dict | None = None):
    """The graph store of ``split`` for ``cfg``; a missing one is a one-line error naming the folder and the command
    that builds it."""
    from twostream.graph.store import GraphStore, MissingStoreError

    folder = store_dir(cfg, split)
    try:
        return GraphStore(folder, settings=settings)
    except MissingStoreError:
        raise MissingStoreError(f"{folder}: no graph store for graph.source={cfg.graph.source}, split '{split}'; "
                                f"build it with `{build_command(cfg, split)}`") from None


def _has_annotations(cfg: Config, split: str) -> bool:
    """Whether ``split`` has label maps on disk to build ``gt`` graphs from (checked on the folder, not the files)."""
    root = Path(cfg.data.root)
    if cfg.data.format == "ade20k":
        return (root / "annotations" / split).is_dir()
    if cfg.data.format == "ade20k_full":
        return (root / "images" / "ADE" / split).is_dir()
    return False


def _store_scenes(cfg: Config, store) -> dict[str, str] | None:
    """Scene labels for a store that recorded none (converted from the old cache): ``sceneCategories.txt``."""
    if store.scene_table:
        return None
    from twostream.data.ade20k import scene_file
    from twostream.data.io import read_scene_categories
    from twostream.graph.store import StoreError

    path = scene_file(cfg.data.root)
    if not path.is_file():
        raise StoreError(f"{store.store_dir}: the graph store records no scene labels and {path} does not exist; "
                         "rebuild the store with tools/build_graphs.py (it records them), or convert it with "
                         "--convert DIR --scenes FILE")
    log.info("%s records no scenes: labels from %s", store.store_dir, path)
    return read_scene_categories(path)


def store_available(cfg: Config, split: str) -> bool:
    """Whether the graph store of ``split`` for ``cfg`` exists and is finished (nothing is raised)."""
    from twostream.graph.store import is_store

    try:
        return is_store(store_dir(cfg, split))
    except (OSError, ValueError):  # e.g. the segmenter checkpoint a pred store is keyed on has moved
        return False


def store_items(cfg: Config, split: str, vocabulary, max_items: int = 0):
    """``split``'s graphs from its store as a dataset (:class:`~twostream.data.graph_items.StoreGraphs`) with
    ``vocabulary``'s scene classes: what graphs-only evaluation reads."""
    from twostream.data.graph_items import StoreGraphs
    from twostream.graph.builder import shaping_settings

    store = open_store(cfg, split, shaping_settings(cfg.graph))
    return StoreGraphs(store, vocabulary, scenes=_store_scenes(cfg, store), max_items=max_items)


def graphs_only_datasets(cfg: Config):
    """Training and validation items read from the graph stores alone, or ``None`` when ``cfg`` is not a
    graph-only model of stored graphs or (``gt`` only) when the stores are missing but the annotations are there, so
    graphs are built from each item's augmented annotation as before.

    Returns:
        ``(train, val, vocabulary, class_table)``: :class:`~twostream.data.graph_items.StoreGraphs` datasets, the
        vocabulary chosen from the training store's scenes, and the graphs' class table.

    Raises:
        StoreError: a store that is needed is missing (one line naming the folder and the build command), stale or
            unfinished.
    """
    from twostream.data.vocabulary import vocabulary_for_splits
    from twostream.graph.store import is_store

    if not graphs_only(cfg):
        return None
    d = cfg.data
    splits = (d.train_split, d.val_split)
    if cfg.graph.source == "gt" and not all(is_store(store_dir(cfg, s)) for s in splits) and \
            all(_has_annotations(cfg, s) for s in splits):
        log.info("no gt graph store at %s: graphs are built from each item's annotation (%s builds the store, and "
                 "then training reads no image)", store_dir(cfg, d.train_split), build_command(cfg, d.train_split))
        return None
    train_all, val_all = (store_items(cfg, s, None) for s in splits)
    train, val, vocabulary, table = vocabulary_for_splits(train_all, val_all, d.scenes, d.max_items, splits)
    log.info("graphs only, from the stores %s and %s (no image is read); scene vocabulary (%s): %d classes\n%s",
             train_all.store.store_dir, val_all.store.store_dir, d.scenes.mode, len(vocabulary), table)
    return train, val, vocabulary, train_all.store.class_table


# --------------------------------------------------------------------------------------------------------------------
# Segmenter
# --------------------------------------------------------------------------------------------------------------------


def segmenter_for_cache(cfg: Config, device: torch.device):
    """The segmenter ``cfg.model.segmenter`` names, ready to predict: from its trained checkpoint (UPSNet) or a
    published model (frozen) through its adapter (:func:`twostream.engine.segmenters.ready_segmenter`)."""
    from twostream.engine.segmenters import ready_segmenter
    from twostream.models.segmenter import segmenter_class

    seg_cfg = cfg.model.segmenter
    if seg_cfg.kind == "none":
        raise ValueError(f"graphs from predictions need a segmenter; model.segmenter.kind is '{seg_cfg.kind}'")
    if segmenter_class(seg_cfg.kind).weights_from_checkpoint and not seg_cfg.checkpoint:
        raise ValueError("graphs from predictions need a trained segmenter: pass --checkpoint (or --segmenter "
                         "upsnet:CKPT | hf:NAME | detectron2:CONFIG) or set model.segmenter.checkpoint")
    return ready_segmenter(seg_cfg, device)


# --------------------------------------------------------------------------------------------------------------------
# Building, in one process or across torchrun's
# --------------------------------------------------------------------------------------------------------------------


def open_split(cfg: Config, split: str, geometry=None):
    """``split`` of ``cfg.data`` (any ``data.format``) with the validation transforms and no vocabulary: the items a
    store is built from; at the segmenter's input size when ``geometry`` (a
    :class:`~twostream.models.segmenter_input.SegmenterInput`) fixes one, else at ``data.image_size``."""
    from twostream.data.ade20k import open_dataset
    from twostream.data.transforms import build_transforms, segmenter_transforms

    if geometry is None or geometry.size is None:
        transform = build_transforms(cfg.data, train=False)
    else:
        transform = segmenter_transforms(cfg.data, geometry.size, keep_ratio=geometry.keep_ratio,
                                         long_side=geometry.long_side if geometry.keep_ratio else 0)
    return open_dataset(cfg, split, vocabulary=None, transform=transform)


def build_split_caches(cfg: Config, *, source: str, splits: list[str], out: str | Path | None = None,
                       device: str = "auto", batch_size: int | None = None, workers: int | None = None,
                       chunk_size: int | None = None, progress: bool = True) -> list:
    """Build (or finish, or rebuild when stale) the graph store of each split; return the opened stores (``None`` on
    ranks other than 0 of a ``torchrun`` build).

    Args:
        cfg: data and graph settings, and for ``pred`` the segmenter (``cfg.model.segmenter``).
        source: ``gt`` or ``pred``.
        out: the store folder when one split is built (default :func:`store_dir`).
        chunk_size: items per chunk (default :data:`~twostream.graph.store_build.DEFAULT_CHUNK_SIZE`).
    """
    from twostream.data.classes import dataset_class_table
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.graph.store_build import DEFAULT_CHUNK_SIZE, plan_graph_build, run_build
    from twostream.graph.store_sources import item_results, scene_lookup

    if source not in ("gt", "pred"):
        raise ValueError(f"graph source '{source}' cannot be stored; use gt or pred (online graphs are built in "
                         "the model)")
    if out and len(splits) > 1:
        raise ValueError("one store folder (--out) holds one split; pass a single --split")
    if cfg.graph.cache_dir and "{split}" not in cfg.graph.cache_dir and len(splits) > 1:
        raise ValueError("graph.cache_dir names one folder for every split; put {split} in it "
                         "(graph.cache_dir=graphs/{split}) or pass a single --split")
    ranks = launched_ranks()
    predict, identity, dev, geometry = None, None, torch.device("cpu"), None
    class_table = dataset_class_table(cfg.data)  # the annotations' labels (ADE20K-150, or the dataset's own table)
    if source == "pred":
        from twostream.models.segmenter_input import segment

        dev = resolve_device(device, ranks.local_rank)
        segmenter = segmenter_for_cache(cfg, dev)
        geometry = _geometry(cfg)
        # class logits at the segmenter's size, computed once: labels and node confidence both come from them

        def predict(images, segmenter=segmenter, geometry=geometry):
            return segment(segmenter, images, geometry)

        identity, class_table = segmenter_identity(cfg.model.segmenter), segmenter.class_table
        log.info("segmenter %s (%s, %d classes) on %s, segmenting at %s", identity, class_table.name,
                 len(class_table), dev, geometry)
    sizes = map_size(cfg, source)
    stores = []
    for split in splits:
        dataset = open_split(cfg, split, geometry)
        # gt labels are the dataset's (ADE20K-150, or full ADE20K's 3,688 classes); pred labels the segmenter's
        labels = getattr(dataset, "class_table", class_table) if source == "gt" else class_table
        builder = SceneGraphBuilder.from_config(cfg.graph, labels)
        folder = Path(out) if out else store_dir(cfg, split, source)
        log.info("%s: %d items -> %s (%s)", split, len(dataset), folder, builder)

        def plan_fn(write: bool, folder=folder, dataset=dataset, builder=builder):
            return plan_graph_build(folder, dataset, builder, kind=source, predict=predict, segmenter=identity,
                                    chunk_size=chunk_size or DEFAULT_CHUNK_SIZE, write=write, map_size=sizes)

        results = item_results(dataset, builder, kind=source, predict=predict, device=dev,
                               batch_size=batch_size or cfg.eval.batch_size,
                               num_workers=cfg.data.num_workers if workers is None else workers)
        with torch.inference_mode():
            store = run_build(plan_fn, results, scene_of=scene_lookup(dataset), progress=progress,
                              desc=f"graphs ({source}, {split})", rank=ranks.rank, world_size=ranks.world_size)
        if store is not None:
            log.info("%s: %d graphs in %s", split, len(store), folder)
        stores.append(store)
    return stores


def build_store_from_json(folder: str | Path, out: str | Path, *, scenes_file: str | Path | None = None,
                          workers: int = 0, chunk_size: int | None = None, progress: bool = True):
    """``tools/build_graphs.py --from-json``: a folder of prediction or scene-graph JSONs becomes the store ``out``,
    scene labels from ``scenes_file`` (``<stem> <scene>`` per line); ``torchrun`` splits the files over ranks."""
    from twostream.data.io import read_scene_categories
    from twostream.graph.store_json import build_store_from_json as build

    scenes = read_scene_categories(scenes_file) if scenes_file else None
    if scenes is None:
        log.warning("no --scenes file: the store records no scene labels, so it cannot train a classifier as is")
    ranks = launched_ranks()
    return build(folder, out, scenes=scenes, num_workers=workers, chunk_size=chunk_size, progress=progress,
                 rank=ranks.rank, world_size=ranks.world_size)


def convert_cache(old_dir: str | Path, out: str | Path | None = None, *, scenes_file: str | Path | None = None):
    """``tools/build_graphs.py --convert``: an old shard cache becomes a graph store (in place by default)."""
    from twostream.data.io import read_scene_categories
    from twostream.graph.cache import convert_shard_cache

    scenes = read_scene_categories(scenes_file) if scenes_file else None
    return convert_shard_cache(old_dir, out, scenes=scenes)
