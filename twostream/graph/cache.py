"""Scene graphs of a whole dataset split, built once and read by the training data loader.

A cache is a folder of shards plus ``meta.json``::

    <cache_dir>/meta.json           format, key, builder settings, source, checkpoint identity, class table,
                                    shard size, item count, complete flag, and (once complete) each shard's names
    <cache_dir>/shard-00000.pt      graphs of items 0..shard_size-1: a dict of plain tensors (torch.load with
                                    weights_only=True), all graphs of the shard concatenated with per-graph offsets

Building is safe to interrupt: a shard is written to a temporary file and renamed, so a shard file on disk is always
whole; running the build again keeps the finished shards and builds only the missing ones. ``meta.json`` carries a
key (a hash of everything that shapes the graphs: builder settings, class table, source, segmenter checkpoint,
shard size and the item names); a folder whose key differs is stale and is rebuilt from scratch, never reused.

Sources. ``gt`` graphs come from annotations, built in worker processes. ``pred`` graphs come from a trained
segmenter's predictions: images are loaded by workers, segmented in batches on ``device`` by ``predict`` and turned
into graphs by ``SceneGraphBuilder.build_batch``. Either way the items are read from a ``Sequence`` (``len`` and
indexing) whose items are the data contract's dicts (``{"name", "sem_seg", "image", ...}``, e.g.
``ADE20KDataset``) or ``(name, array)`` pairs: a label map for ``gt``, an image ``(3, H, W)`` in ``[0, 1]`` for
``pred``. Pixels labelled 255 in an item's ``sem_seg`` (padding added by the transforms) are void in predicted
graphs too, since the segmenter's output there describes padding, not the image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from twostream.data.classes import IGNORE_INDEX, ClassTable
from twostream.graph.builder import SceneGraphBuilder, shaping_settings
from twostream.graph.scene_graph import SceneGraph

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_FORMAT",
    "GraphCache",
    "build_graph_cache",
    "cache_key",
    "checkpoint_identity",
    "default_cache_dir",
    "segmenter_identity",
]

CACHE_FORMAT = "twostream-graph-cache-v1"
META = "meta.json"
SHARD = "shard-{:05d}.pt"
_GRAPH_FIELDS = ("labels", "area", "centroid", "bbox", "boundary")

Predict = Callable[[Tensor], Tensor]

# --------------------------------------------------------------------------------------------------------------------
# Helpers: identities, keys, paths
# --------------------------------------------------------------------------------------------------------------------


def checkpoint_identity(path: str | Path) -> str:
    """A short content hash of a checkpoint file: a retrained checkpoint at the same path gets a new identity."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: segmenter checkpoint not found")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


def segmenter_identity(seg_cfg: Any) -> str:
    """What a ``pred`` cache's graphs depend on: the content hash of a trained UPSNet checkpoint; the hub name (or the
    content of a local folder's weight files) of a Hugging Face model; the config and weights of a detectron2 model."""
    if seg_cfg.kind == "upsnet":
        if not seg_cfg.checkpoint:
            raise ValueError("graph cache: graphs from predictions need the segmenter checkpoint "
                             "(model.segmenter.checkpoint=... or --checkpoint), or set graph.cache_dir")
        return checkpoint_identity(seg_cfg.checkpoint)
    if seg_cfg.kind == "hf":
        folder = Path(seg_cfg.hf_model)
        if folder.is_dir():  # a local folder: its weights, not its path, identify it
            files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
            return "hf:" + _hash([(p.name, checkpoint_identity(p)) for p in files])
        return f"hf:{seg_cfg.hf_model}"
    if seg_cfg.kind == "detectron2":
        weights = Path(seg_cfg.d2_weights)
        ident = checkpoint_identity(weights) if seg_cfg.d2_weights and weights.is_file() else seg_cfg.d2_weights
        opts = "".join(f" {v}" for v in getattr(seg_cfg, "d2_opts", ()))
        return f"d2:{seg_cfg.d2_config}@{ident}{opts}"
    raise ValueError(f"graph cache: graphs from predictions need a segmenter (a trained UPSNet checkpoint, or "
                     f"model.segmenter.kind hf / detectron2); model.segmenter.kind is '{seg_cfg.kind}'")


def default_cache_dir(cfg: Any, split: str, source: str | None = None, checkpoint: str | None = None) -> Path:
    """``<data.root>/graphs/<split>-<source>-<hash>``: where ``tools/build_graphs.py`` writes the graphs of ``split``
    and where training looks for them when ``graph.cache_dir`` is empty.

    The hash covers the ``cfg.graph`` values that shape a graph and, for ``pred``, the identity of the segmenter
    (:func:`segmenter_identity` of ``cfg.model.segmenter``; ``checkpoint`` overrides a UPSNet checkpoint), so other
    settings or another segmenter get another folder.

    Args:
        cfg: a :class:`~twostream.config.Config`.
        split: dataset split, e.g. ``"training"``.
        source: ``"gt"`` or ``"pred"`` (default ``cfg.graph.source``).
        checkpoint: the UPSNet segmenter checkpoint for ``pred`` (default ``cfg.model.segmenter.checkpoint``).
    """
    source = source or cfg.graph.source
    if source not in ("gt", "pred"):
        raise ValueError(f"graph cache: source must be gt or pred (online graphs are not cached), got '{source}'")
    key: dict[str, Any] = {"settings": shaping_settings(cfg.graph), "source": source}
    if source == "pred":
        seg_cfg = cfg.model.segmenter
        if checkpoint:
            seg_cfg = dataclasses.replace(seg_cfg, kind="upsnet", checkpoint=str(checkpoint))
        identity = segmenter_identity(seg_cfg)
        # UPSNet caches keep the key they always had; other segmenters add their kind
        key["checkpoint" if seg_cfg.kind == "upsnet" else "segmenter"] = identity
    return Path(cfg.data.root) / "graphs" / f"{split}-{source}-{_hash(key, 10)}"


def cache_key(builder: SceneGraphBuilder, source: str, checkpoint: str | None, names: Sequence[str] | None,
              num_items: int, shard_size: int) -> str:
    """Hash of everything that decides a cache's content; a folder with another key is stale."""
    return _hash({
        "format": CACHE_FORMAT,
        "settings": builder.settings(),
        "class_table": builder.class_table.to_dict(),
        "source": source,
        "checkpoint": checkpoint,
        "num_items": num_items,
        "names": _hash(list(names)) if names is not None else None,
        "shard_size": shard_size,
    })


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_meta(cache_dir: Path, meta: dict) -> None:
    _write_atomic(cache_dir / META, lambda p: p.write_text(json.dumps(meta, indent=1) + "\n"))


def _item_name_and_array(item: Any, key: str, what: str) -> tuple[str, Any, Any]:
    """``(name, array, sem_seg or None)`` from a data-contract dict or a ``(name, array)`` pair."""
    if isinstance(item, dict):
        if "name" not in item or key not in item:
            raise ValueError(f"{what}: dataset items must hold 'name' and '{key}', got keys {sorted(item)}")
        return item["name"], item[key], item.get("sem_seg")
    if isinstance(item, tuple | list) and len(item) == 2:
        return item[0], item[1], None
    raise ValueError(f"{what}: items must be dicts with 'name' and '{key}' or (name, array) pairs, "
                     f"got {type(item).__name__}")


def _names_of(source: Sequence) -> list[str] | None:
    """Item names without loading the items, when the source can tell (``ADE20KDataset.names``, pairs)."""
    names = getattr(source, "names", None)
    if names is not None:
        return list(names)
    if isinstance(source, list | tuple) and all(isinstance(it, tuple | list) and len(it) == 2 for it in source):
        return [it[0] for it in source]
    return None


# --------------------------------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------------------------------


def _pack(names: list[str], graphs: list[dict[str, Tensor]]) -> dict[str, Any]:
    """Concatenate per-graph tensor dicts (``SceneGraph.to_tensors``) into one shard dict with offsets."""
    node_counts = torch.tensor([int(g["labels"].numel()) for g in graphs], dtype=torch.int64)
    edge_counts = torch.tensor([int(g["edge_index"].shape[1]) for g in graphs], dtype=torch.int64)
    zero = torch.zeros(1, dtype=torch.int64)
    shard: dict[str, Any] = {
        "names": list(names),
        "node_ptr": torch.cat([zero, node_counts.cumsum(0)]),
        "edge_ptr": torch.cat([zero, edge_counts.cumsum(0)]),
        "image_size": (torch.stack([g["image_size"] for g in graphs]) if graphs
                       else torch.zeros(0, 2, dtype=torch.int64)),
    }
    for f in _GRAPH_FIELDS:
        shard[f] = torch.cat([g[f] for g in graphs]) if graphs else torch.zeros(0)
    shard["edge_index"] = (torch.cat([g["edge_index"] for g in graphs], dim=1) if graphs
                           else torch.zeros(2, 0, dtype=torch.int64))
    return shard


def _unpack(shard: dict[str, Any], i: int) -> dict[str, Tensor]:
    n0, n1 = int(shard["node_ptr"][i]), int(shard["node_ptr"][i + 1])
    e0, e1 = int(shard["edge_ptr"][i]), int(shard["edge_ptr"][i + 1])
    out = {f: shard[f][e0:e1] if f == "boundary" else shard[f][n0:n1] for f in _GRAPH_FIELDS}
    out["edge_index"] = shard["edge_index"][:, e0:e1]
    out["image_size"] = shard["image_size"][i]
    return out


class _GtGraphs(Dataset):
    """Items -> ``(name, graph tensors)``, built inside DataLoader workers (the parallel part of a ``gt`` build)."""

    def __init__(self, source: Sequence, builder: SceneGraphBuilder) -> None:
        self.source, self.builder = source, builder

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[str, dict[str, Tensor]] | None:
        item = self.source[index]
        if item is None:  # a dataset that reports a failed item as None (it logged it)
            return None
        name, labels, _ = _item_name_and_array(item, "sem_seg", "graph cache (gt)")
        return name, self.builder(labels).to_tensors()


class _Images(Dataset):
    """Items -> ``(name, image (3, H, W), padding mask (H, W) bool or None)`` for a ``pred`` build."""

    def __init__(self, source: Sequence) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[str, Tensor, Tensor | None] | None:
        item = self.source[index]
        if item is None:
            return None
        name, image, sem_seg = _item_name_and_array(item, "image", "graph cache (pred)")
        image = torch.as_tensor(image)
        pad = torch.as_tensor(sem_seg) == IGNORE_INDEX if sem_seg is not None else None
        return name, image, pad


def _as_list(batch: list) -> list:
    return batch


def _same_size_groups(items: list) -> Iterator[list]:
    """Consecutive ``(index, name, image, pad)`` items whose images share a size (one segmenter batch)."""
    group: list = []
    for it in items:
        if group and tuple(it[2].shape) != tuple(group[0][2].shape):
            yield group
            group = []
        group.append(it)
    if group:
        yield group


# --------------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------------


def build_graph_cache(
    cache_dir: str | Path,
    source: Sequence,
    builder: SceneGraphBuilder,
    *,
    kind: str = "gt",
    predict: Predict | None = None,
    checkpoint: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    num_workers: int = 0,
    shard_size: int = 256,
    progress: bool = True,
) -> GraphCache:
    """Build (or finish, or rebuild) the graph cache of ``source`` in ``cache_dir``; return it, opened.

    Args:
        cache_dir: the cache folder (created).
        source: a ``Sequence`` of items: data-contract dicts or ``(name, array)`` pairs (see the module docstring).
        builder: turns label maps into graphs; its ``settings()`` are part of the cache key.
        kind: ``"gt"`` (labels from the items) or ``"pred"`` (labels from ``predict`` on the items' images).
        predict: ``pred`` only: ``images (B, 3, H, W)`` float in [0, 1] on ``device`` -> ``(B, H, W)`` int labels,
            e.g. ``segmenter.predict`` (the caller wraps it in ``torch.inference_mode`` / autocast as it likes).
        checkpoint: ``pred`` only: identity of the segmenter (:func:`checkpoint_identity`); part of the key.
        device: where ``predict`` runs.
        batch_size: images per ``predict`` call.
        num_workers: DataLoader worker processes (``gt``: they also build the graphs; 0 = in this process).
        shard_size: graphs per shard file.
        progress: show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    if kind not in ("gt", "pred"):
        raise ValueError(f"build_graph_cache: kind must be gt or pred, got '{kind}'")
    if kind == "pred" and predict is None:
        raise ValueError("build_graph_cache: kind='pred' needs predict (images -> label maps), e.g. segmenter.predict")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"build_graph_cache: shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    num_items = len(source)
    names = _names_of(source)
    key = cache_key(builder, kind, checkpoint, names, num_items, shard_size)
    num_shards = (num_items + shard_size - 1) // shard_size
    meta = {"format": CACHE_FORMAT, "key": key, "source": kind, "checkpoint": checkpoint,
            "settings": builder.settings(), "class_table": builder.class_table.to_dict(), "num_items": num_items,
            "shard_size": shard_size, "num_shards": num_shards, "complete": False}

    old = _read_meta(cache_dir)
    if old is not None and old.get("key") == key and old.get("complete"):
        log.info("graph cache %s is complete and current (%d items)", cache_dir, num_items)
        return GraphCache(cache_dir)
    if old is not None and old.get("key") != key:
        log.warning("graph cache %s was built with other settings, source, checkpoint or items; rebuilding it",
                    cache_dir)
        _clear(cache_dir)
    for tmp in cache_dir.glob("*.tmp"):  # leftovers of an interrupted write: never whole
        tmp.unlink()
    _write_meta(cache_dir, meta)

    todo = [k for k in range(num_shards) if not (cache_dir / SHARD.format(k)).is_file()]
    if len(todo) < num_shards:
        log.info("graph cache %s: %d of %d shards already built; building the rest", cache_dir,
                 num_shards - len(todo), num_shards)
    indices = [i for k in todo for i in range(k * shard_size, min((k + 1) * shard_size, num_items))]
    bar = tqdm(total=len(indices), desc=f"graphs ({kind})", unit="img", disable=not progress)
    pending: dict[int, list[tuple[str, dict[str, Tensor]]]] = {}
    done_in_shard: dict[int, int] = {}

    def add(index: int, result: tuple[str, dict[str, Tensor]] | None) -> None:
        k = index // shard_size
        if result is not None:
            pending.setdefault(k, []).append(result)
        done_in_shard[k] = done_in_shard.get(k, 0) + 1
        if done_in_shard[k] == min((k + 1) * shard_size, num_items) - k * shard_size:
            graphs = pending.pop(k, [])
            shard = _pack([n for n, _ in graphs], [g for _, g in graphs])
            _write_atomic(cache_dir / SHARD.format(k), lambda p: torch.save(shard, p))
        bar.update(1)

    if kind == "gt":
        loader = DataLoader(_GtGraphs(source, builder), batch_size=None, sampler=indices, num_workers=num_workers)
        for index, result in zip(indices, loader):
            add(index, result)
    else:
        loader = DataLoader(_Images(source), batch_size=batch_size, sampler=indices, num_workers=num_workers,
                            collate_fn=_as_list)
        position = 0
        for batch in loader:
            batch_indices = indices[position: position + len(batch)]
            position += len(batch)
            results = _predict_graphs(batch, builder, predict, device)
            for index, result in zip(batch_indices, results):
                add(index, result)
    bar.close()

    meta["complete"] = True
    meta["shards"] = [torch.load(cache_dir / SHARD.format(k), weights_only=True)["names"]
                      for k in range(num_shards)]
    _write_meta(cache_dir, meta)
    return GraphCache(cache_dir)


def _predict_graphs(batch: list, builder: SceneGraphBuilder, predict: Predict,
                    device: str | torch.device) -> list[tuple[str, dict[str, Tensor]] | None]:
    """Segment a batch (grouped by image size) and build its graphs on ``device``."""
    out: dict[int, tuple[str, dict[str, Tensor]]] = {}
    present = [(i, it) for i, it in enumerate(batch) if it is not None]
    for group in _same_size_groups([(i, *it) for i, it in present]):
        images = torch.stack([img for _, _, img, _ in group]).to(device)
        with torch.inference_mode():
            labels = predict(images)
        if tuple(labels.shape) != (len(group), *images.shape[-2:]):
            raise ValueError(f"graph cache (pred): predict returned shape {tuple(labels.shape)} for images "
                             f"{tuple(images.shape)}; expected (B, H, W) label maps")
        labels = labels.long()
        if builder.ignore_index is not None and any(pad is not None for _, _, _, pad in group):
            pads = torch.stack([pad if pad is not None else torch.zeros(images.shape[-2:], dtype=torch.bool)
                                for _, _, _, pad in group]).to(labels.device)
            labels = labels.masked_fill(pads, builder.ignore_index)
        graphs = builder.build_batch(labels)
        for (i, name, _, _), graph in zip(group, graphs):
            out[i] = (name, graph.to_tensors())
    return [out.get(i) for i in range(len(batch))]


def _read_meta(cache_dir: Path) -> dict | None:
    path = cache_dir / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # unreadable: treated as stale
    return meta if isinstance(meta, dict) else {}


def _clear(cache_dir: Path) -> None:
    """Remove this module's files (shards, meta, temporaries) from ``cache_dir``; nothing else."""
    for path in [*cache_dir.glob("shard-*.pt"), *cache_dir.glob("*.tmp"), cache_dir / META]:
        if path.is_file():
            path.unlink()


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------


class GraphCache:
    """Read-only access to a finished graph cache: ``cache.get(name) -> SceneGraph``.

    Shards are loaded lazily (``torch.load(weights_only=True)``) and the last ``max_shards`` kept in memory, per
    process (each DataLoader worker has its own).

    Args:
        cache_dir: a folder :func:`build_graph_cache` completed.
        settings: when given, the builder settings the graphs must have been built with
            (``SceneGraphBuilder.settings()``); a mismatch raises ``ValueError`` instead of serving stale graphs.
        max_shards: shards kept in memory.
    """

    def __init__(self, cache_dir: str | Path, settings: dict | None = None, max_shards: int = 16) -> None:
        self.cache_dir = Path(cache_dir)
        meta = _read_meta(self.cache_dir)
        if meta is None:
            raise FileNotFoundError(f"{self.cache_dir}: no graph cache here (no {META}); build it with "
                                    "tools/build_graphs.py")
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{self.cache_dir}: not a {CACHE_FORMAT} graph cache; rebuild it with "
                             "tools/build_graphs.py")
        if not meta.get("complete"):
            raise ValueError(f"{self.cache_dir}: the graph cache is incomplete (an interrupted build); run "
                             "tools/build_graphs.py again to finish it")
        if settings is not None and meta["settings"] != settings:
            raise ValueError(f"{self.cache_dir}: graphs were built with {meta['settings']}, not {settings}; rebuild "
                             "the cache (tools/build_graphs.py) or point graph.cache_dir elsewhere")
        self.meta = meta
        self.class_table = ClassTable.from_dict(meta["class_table"])
        self._index: dict[str, tuple[int, int]] = {}
        for k, shard_names in enumerate(meta["shards"]):
            for i, name in enumerate(shard_names):
                self._index.setdefault(name, (k, i))  # a name seen twice (a substituted item) keeps its first graph
        self._shards: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.max_shards = max_shards

    @property
    def names(self) -> list[str]:
        return list(self._index)

    @property
    def settings(self) -> dict:
        return self.meta["settings"]

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __repr__(self) -> str:
        return (f"GraphCache({self.cache_dir}, {len(self)} graphs, source={self.meta['source']}, "
                f"granularity={self.settings['granularity']})")

    def _shard(self, k: int) -> dict[str, Any]:
        if k in self._shards:
            self._shards.move_to_end(k)
            return self._shards[k]
        shard = torch.load(self.cache_dir / SHARD.format(k), weights_only=True)
        self._shards[k] = shard
        if len(self._shards) > self.max_shards:
            self._shards.popitem(last=False)
        return shard

    def get(self, name: str) -> SceneGraph:
        """The graph of item ``name``; ``KeyError`` naming the cache when it has none."""
        if name not in self._index:
            raise KeyError(f"{name}: not in the graph cache {self.cache_dir} ({len(self)} graphs); the item was "
                           "skipped as unreadable or the cache is of another split")
        k, i = self._index[name]
        tensors = {key: value.clone() for key, value in _unpack(self._shard(k), i).items()}  # no shard-sized views
        return SceneGraph.from_tensors(tensors, self.class_table)

    __getitem__ = get
