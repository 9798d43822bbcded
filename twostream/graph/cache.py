"""The old graph cache (``twostream-graph-cache-v1``): shards of 256 graphs. Read, converted to a graph store, and
written only as the benchmark's baseline; new graphs go to :mod:`twostream.graph.store`.

A cache is a folder of shards plus ``meta.json``::

    <cache_dir>/meta.json           format, key, builder settings, source, checkpoint identity, class table,
                                    shard size, item count, complete flag, and (once complete) each shard's names
    <cache_dir>/shard-00000.pt      graphs of items 0..shard_size-1: a dict of plain tensors (torch.load with
                                    weights_only=True), all graphs of the shard concatenated with per-graph offsets

Why it was replaced: a reader keeps the last 16 shards per process, so a shuffled epoch over more than 16 shards
loads a whole shard (256 graphs) to serve nearly every graph, in every loader worker (2.25 ms per graph at 20 k
graphs, against 0.06 in order). :func:`convert_shard_cache` (``tools/build_graphs.py --convert DIR``) turns a cache
into a store in place, keeping its graphs bit for bit.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from twostream.atomic import atomic_write
from twostream.data.classes import ClassTable
from twostream.graph.scene_graph import SceneGraph
from twostream.graph.store import GraphStore, StoreError

log = logging.getLogger(__name__)

__all__ = ["CACHE_FORMAT", "ShardCache", "convert_shard_cache", "pack_shard", "write_shard_cache"]

CACHE_FORMAT = "twostream-graph-cache-v1"
META = "meta.json"
SHARD = "shard-{:05d}.pt"
_GRAPH_FIELDS = ("labels", "area", "centroid", "bbox", "boundary")


def _read_meta(cache_dir: Path) -> dict:
    path = cache_dir / META
    if not path.is_file():
        raise StoreError(f"{cache_dir}: no old graph cache here (no {META})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: unreadable ({e}); rebuild the graphs with tools/build_graphs.py") from None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise StoreError(f"{cache_dir}: not a {CACHE_FORMAT} graph cache; rebuild it with tools/build_graphs.py")
    if not meta.get("complete"):
        raise StoreError(f"{cache_dir}: the old graph cache is incomplete (an interrupted build); rebuild it with "
                         "tools/build_graphs.py, which now writes a graph store")
    return meta


def _unpack(shard: dict[str, Any], i: int) -> dict[str, Tensor]:
    n0, n1 = int(shard["node_ptr"][i]), int(shard["node_ptr"][i + 1])
    e0, e1 = int(shard["edge_ptr"][i]), int(shard["edge_ptr"][i + 1])
    out = {f: shard[f][e0:e1] if f == "boundary" else shard[f][n0:n1] for f in _GRAPH_FIELDS}
    out["edge_index"] = shard["edge_index"][:, e0:e1]
    out["image_size"] = shard["image_size"][i]
    return out


class ShardCache:
    """Read-only access to an old shard cache: ``cache.get(name) -> SceneGraph`` (the interface of
    :class:`~twostream.graph.store.GraphStore`).

    Shards are loaded lazily (``torch.load(weights_only=True)``) and the last ``max_shards`` kept in memory, per
    process. Kept to convert old caches and as the benchmark's baseline.
    """

    def __init__(self, cache_dir: str | Path, settings: dict | None = None, max_shards: int = 16) -> None:
        self.cache_dir = Path(cache_dir)
        meta = _read_meta(self.cache_dir)
        if settings is not None and meta["settings"] != settings:
            raise StoreError(f"{self.cache_dir}: graphs were built with {meta['settings']}, not {settings}")
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

    def shard(self, k: int) -> dict[str, Any]:
        if k in self._shards:
            self._shards.move_to_end(k)
            return self._shards[k]
        shard = torch.load(self.cache_dir / SHARD.format(k), weights_only=True)
        self._shards[k] = shard
        if len(self._shards) > self.max_shards:
            self._shards.popitem(last=False)
        return shard

    def tensors(self, name: str) -> dict[str, Tensor]:
        if name not in self._index:
            raise KeyError(f"{name}: not in the graph cache {self.cache_dir} ({len(self)} graphs)")
        k, i = self._index[name]
        return {key: value.clone() for key, value in _unpack(self.shard(k), i).items()}  # no shard-sized views

    def get(self, name: str) -> SceneGraph:
        return SceneGraph.from_tensors(self.tensors(name), self.class_table)

    __getitem__ = get


def pack_shard(names: Sequence[str], graphs: Sequence[dict[str, Tensor]]) -> dict[str, Any]:
    """One shard of the old format from per-graph tensor dicts (:meth:`SceneGraph.to_tensors`), as its builder packed
    them: ``{"names", "node_ptr", "edge_ptr", "image_size", node fields, "boundary", "edge_index" (2, E)}``."""
    zero = torch.zeros(1, dtype=torch.int64)
    nodes = torch.tensor([int(g["labels"].numel()) for g in graphs], dtype=torch.int64)
    edges = torch.tensor([int(g["edge_index"].shape[1]) for g in graphs], dtype=torch.int64)
    return {"names": list(names), "node_ptr": torch.cat([zero, nodes.cumsum(0)]),
            "edge_ptr": torch.cat([zero, edges.cumsum(0)]),
            "image_size": torch.stack([g["image_size"] for g in graphs]),
            **{f: torch.cat([g[f] for g in graphs]) for f in ("labels", "area", "centroid", "bbox", "boundary")},
            "edge_index": torch.cat([g["edge_index"] for g in graphs], dim=1)}


def write_shard_cache(cache_dir: str | Path, shards: Iterable[dict[str, Any]], *, settings: dict,
                      class_table: ClassTable, source: str = "gt", checkpoint: str | None = None,
                      shard_size: int = 256) -> Path:
    """Write finished shards (dicts as the old builder packed them: ``names``, ``node_ptr``, ``edge_ptr``,
    ``image_size (G, 2)``, the node/edge fields and ``edge_index (2, E)``) as a complete old-format cache.

    The benchmark writes its baseline this way; tests write caches to convert."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for k, shard in enumerate(shards):
        atomic_write(cache_dir / SHARD.format(k), lambda p, s=shard: torch.save(s, p))
        names.append(list(shard["names"]))
    meta = {"format": CACHE_FORMAT, "key": "written", "source": source, "checkpoint": checkpoint,
            "settings": settings, "class_table": class_table.to_dict(), "num_items": sum(map(len, names)),
            "shard_size": shard_size, "num_shards": len(names), "complete": True, "shards": names}
    atomic_write(cache_dir / META, lambda p: p.write_text(json.dumps(meta) + "\n"))
    return cache_dir


def convert_shard_cache(cache_dir: str | Path, out_dir: str | Path | None = None, *,
                        scenes: Mapping[str, str] | None = None) -> GraphStore:
    """Turn an old shard cache into a graph store holding the same graphs, bit for bit.

    Args:
        cache_dir: the old cache folder (``meta.json`` + ``shard-*.pt``).
        out_dir: the store folder; default ``cache_dir`` itself, where the shards and ``meta.json`` are removed once
            the store is complete (training finds the store where it found the cache).
        scenes: optional item name -> scene name (e.g. ``read_scene_categories``), recorded in the store (the old
            cache kept no scene labels).

    Resumable like a build: each shard becomes one chunk; an interrupted conversion continues where it stopped.
    """
    from twostream.graph.store import is_store
    from twostream.graph.store_build import finish_build, pack_chunk, plan_build, write_chunk

    cache_dir = Path(cache_dir)
    out = Path(out_dir) if out_dir is not None else cache_dir
    if not (cache_dir / META).is_file() and is_store(out):
        log.info("%s: already converted", out)
        return GraphStore(out)
    cache = ShardCache(cache_dir)
    meta = cache.meta
    num_items, shard_size = int(meta["num_items"]), int(meta["shard_size"])
    plan, done = plan_build(out, source=meta["source"], settings=meta["settings"], class_table=cache.class_table,
                            segmenter=meta.get("checkpoint"), names=None, num_items=num_items, chunk_size=shard_size)
    plan.manifest["build"]["converted_from"] = CACHE_FORMAT
    if not done:
        for k in plan.missing_chunks():
            shard = cache.shard(k)
            names = list(shard["names"])
            graphs = [_unpack(shard, i) for i in range(len(names))]
            chunk = pack_chunk(names, [scenes.get(n) if scenes else None for n in names], graphs)
            write_chunk(plan.chunk_path(k), chunk)
        store = finish_build(plan)
        log.info("converted %s (%d shards) to the graph store %s (%d graphs)", cache_dir, len(meta["shards"]), out,
                 len(store))
    if out.resolve() == cache_dir.resolve():
        for path in [*cache_dir.glob("shard-*.pt"), cache_dir / META]:
            path.unlink(missing_ok=True)
    return GraphStore(out)
