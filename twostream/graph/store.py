"""The graph store: every scene graph of a dataset split in flat, memory-mapped arrays, O(1) random access.

A store is a folder of ``.npy`` files, one per field, plus a manifest::

    <store>/store.json            format, key, source, segmenter identity, builder settings, map size (how the
                                  label maps were sized: the segmenter's input for pred), class table, fields,
                                  counts, scene-name table; written last, so its presence means the store is whole
    <store>/node_ptr.npy          (G + 1,) int64: graph g's nodes are rows node_ptr[g]:node_ptr[g + 1] of node fields
    <store>/edge_ptr.npy          (G + 1,) int64: the same for edge fields
    <store>/node.labels.npy       (sum N,) node fields, all graphs concatenated; likewise node.area, node.centroid
                                  (sum N, 2), node.bbox (sum N, 4), and any optional per-node field (features (sum N,
                                  C), confidence, ...)
    <store>/edge.edge_index.npy   (sum E, 2): (source, target) per edge, local to its graph; edge.boundary (sum E,)
    <store>/graph.image_size.npy  (G, 2): per-graph fields
    <store>/names.npy             (G,) item names (UTF-8, fixed width), in item order
    <store>/names_sorted.npy      (G,) the same names sorted, and names_order.npy (G,) int64 their item indices:
                                  ``get(name)`` is a binary search in a memory-mapped file, no per-graph index is
                                  built when a store is opened
    <store>/scene.npy             (G,) int32 index into the manifest's ``scenes`` (-1: no scene recorded)

Why flat numpy files. Measured at 1 M synthetic graphs (``tools/benchmark.py --only store``; docs/scale.md has the
numbers): a graph is one slice per field of an ``np.load(mmap_mode="r")`` array, so a shuffled read costs the same
as an in-order one (a few tens of microseconds), opening costs milliseconds and no memory, and every DataLoader
worker shares the same page-cache pages. Arrow through Hugging Face ``datasets`` stores the same columns, but its
per-row access (formatting, Python objects per row) was an order of magnitude slower and adds two dependencies;
PyG's ``OnDiskDataset`` (SQLite rows) pays a query and a deserialisation per graph. Nothing here is pickled: every
file is a plain ``.npy`` (``allow_pickle=False``) and the manifest is JSON.

Fields are generic: whatever :meth:`SceneGraph.to_tensors` returns is stored, each field classified once as per-node
(leading dimension ``N``), per-edge (leading dimension ``E``; ``edge_index``'s edge dimension is its second) or
per-graph, so a new optional field (e.g. a per-node ``confidence``) needs no change here. int64 fields whose values
all fit in int32 are stored as int32 and read back as int64 (half the disk for labels and edge indices).

A store is written by :mod:`twostream.graph.store_build` (one process or many; chunk files under ``parts/`` while
building, see there) and read here. A store is never read half-written: until ``store.json`` exists the folder is
an unfinished build, and :class:`GraphStore` says so in one line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from twostream.data.classes import ClassTable
from twostream.graph.scene_graph import SceneGraph

log = logging.getLogger(__name__)

__all__ = ["BUILD_MANIFEST", "MANIFEST", "STORE_FORMAT", "GraphStore", "MissingStoreError", "StoreError", "field_kind",
           "is_store", "store_files"]

STORE_FORMAT = "twostream-graph-store-v1"
MANIFEST = "store.json"
BUILD_MANIFEST = "build.json"  # written when a build starts; the store is unfinished while it exists alone
OLD_CACHE_MANIFEST = "meta.json"  # the shard cache this store replaces (twostream.graph.cache)
KINDS = ("node", "edge", "graph")
_KNOWN_KINDS = {"labels": "node", "area": "node", "centroid": "node", "bbox": "node", "features": "node",
                "confidence": "node", "edge_index": "edge", "boundary": "edge", "image_size": "graph"}
_INDEX_FILES = ("node_ptr.npy", "edge_ptr.npy", "names.npy", "names_sorted.npy", "names_order.npy", "scene.npy")


class StoreError(ValueError):
    """A graph store is missing, unfinished, stale or damaged. The message is one line naming the folder."""


class MissingStoreError(StoreError):
    """No store and no trace of one (no build under way, no old cache) in the folder: callers that know the command
    building it say so (:func:`twostream.engine.graph_caches.open_store`)."""




def field_kind(key: str, values: Sequence[np.ndarray | Tensor], num_nodes: Sequence[int],
               num_edges: Sequence[int]) -> str:
    """``node``, ``edge`` or ``graph``: what a :meth:`SceneGraph.to_tensors` field is indexed by, from its values in
    several graphs (with ``num_nodes`` / ``num_edges`` each).

    Known fields by name; any other by its leading dimension: ``N`` in every graph -> node, else ``E`` in every
    graph -> edge, else a per-graph value.
    """
    if key in _KNOWN_KINDS:
        return _KNOWN_KINDS[key]
    lead = [v.shape[0] if v.ndim else None for v in values]
    if all(size == n for size, n in zip(lead, num_nodes)):
        return "node"
    if all(size == e for size, e in zip(lead, num_edges)):
        return "edge"
    return "graph"


def store_files(manifest: dict) -> list[str]:
    """Every data file a finished store with ``manifest`` holds (``store.json`` aside)."""
    return [*_INDEX_FILES, *(f"{spec['kind']}.{key}.npy" for key, spec in manifest["fields"].items())]


def is_store(store_dir: str | Path) -> bool:
    """Whether ``store_dir`` holds a finished graph store of this format (its files are not checked)."""
    path = Path(store_dir) / MANIFEST
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == STORE_FORMAT and bool(manifest.get("complete"))


def _missing_store_error(store_dir: Path) -> StoreError:
    if (store_dir / BUILD_MANIFEST).is_file():
        return StoreError(f"{store_dir}: the graph store is incomplete (an interrupted build: {MANIFEST} is not "
                          "written yet); run the same tools/build_graphs.py command again to finish it")
    old = store_dir / OLD_CACHE_MANIFEST
    if old.is_file():
        return StoreError(f"{store_dir}: a graph cache of the old shard format; convert it with "
                          f"`python tools/build_graphs.py --convert {store_dir}` (or rebuild it with "
                          "tools/build_graphs.py)")
    return MissingStoreError(f"{store_dir}: no graph store here (no {MANIFEST}); build it with tools/build_graphs.py")


class GraphStore:
    """Read-only access to a finished graph store: ``store.get(name) -> SceneGraph``, or by position.

    Opening reads the manifest and memory-maps the files (``np.load(mmap_mode="r")``); nothing proportional to the
    number of graphs is read or built, so each DataLoader worker opens it in milliseconds, and the pages it touches are
    the operating system's page cache, shared by every worker (a worker's private memory does not grow with the
    store). Pickling (``spawn`` workers) sends the folder, not the maps.

    Args:
        store_dir: a folder :func:`~twostream.graph.store_build.build_graph_store` finished.
        settings: when given, builder settings the graphs must have been built with (``SceneGraphBuilder.settings()``
            or a part of it, e.g. ``shaping_settings(cfg.graph)``: every key given must match); a mismatch raises
            :class:`StoreError` instead of serving other graphs. Stores made from JSON files record no settings and
            are not checked.

    Raises:
        StoreError: no store, an unfinished or damaged one, another format, or other settings.
    """

    def __init__(self, store_dir: str | Path, settings: dict | None = None) -> None:
        self.store_dir = Path(store_dir)
        path = self.store_dir / MANIFEST
        if not path.is_file():
            raise _missing_store_error(self.store_dir)
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError) as e:
            raise StoreError(f"{path}: unreadable store manifest ({e}); rebuild the store with "
                             "tools/build_graphs.py") from None
        if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise StoreError(f"{self.store_dir}: not a {STORE_FORMAT} graph store (format {got!r}); rebuild it with "
                             "tools/build_graphs.py")
        if not manifest.get("complete"):
            raise _missing_store_error(self.store_dir)
        missing = [f for f in store_files(manifest) if not (self.store_dir / f).is_file()]
        if missing:
            raise StoreError(f"{self.store_dir}: the graph store is damaged ({', '.join(missing[:3])} missing); "
                             "rebuild it with tools/build_graphs.py")
        built = manifest.get("settings")
        if settings is not None and built is not None and any(built.get(k) != v for k, v in settings.items()):
            raise StoreError(f"{self.store_dir}: graphs were built with {built}, not {settings}; rebuild the store "
                             "(tools/build_graphs.py) or point graph.cache_dir elsewhere")
        self.manifest = manifest
        self.class_table = ClassTable.from_dict(manifest["class_table"])
        self._arrays: dict[str, np.ndarray] | None = None
        self._names: list[str] | None = None

    # ------------------------------------------------------------------------------------------------ properties

    @property
    def settings(self) -> dict | None:
        return self.manifest["settings"]

    @property
    def source(self) -> str:
        return self.manifest["source"]

    @property
    def segmenter(self) -> str | None:
        """The opaque identity of the segmenter a ``pred`` store's graphs came from."""
        return self.manifest.get("segmenter")

    @property
    def map_size(self) -> dict | None:
        """How the label maps the graphs were built from were sized (``pred``: the segmenter's input size,
        :meth:`~twostream.models.segmenter_input.SegmenterInput.to_dict`), as the build recorded it."""
        return self.manifest.get("map_size")

    @property
    def fields(self) -> dict[str, dict]:
        """``{field: {"kind": node | edge | graph, "dtype": ..., "stored": ..., "shape": trailing dims}}``."""
        return self.manifest["fields"]

    @property
    def names(self) -> list[str]:
        """Item names in item order (decoded once, on first use)."""
        if self._names is None:
            self._names = [n.decode("utf-8") for n in self._maps()["names"].tolist()]
        return self._names

    def name_at(self, index: int) -> str:
        """The name of graph ``index`` (one read of the map, no list of every name)."""
        return self._maps()["names"][index].decode("utf-8")

    @property
    def scene_table(self) -> list[str]:
        """The distinct scene names recorded for the graphs (``scene_index`` points into it)."""
        return list(self.manifest.get("scenes", []))

    @property
    def scene_index(self) -> np.ndarray:
        """``(G,)`` int32: each graph's index into :attr:`scene_table`, -1 where the build knew no scene."""
        return np.asarray(self._maps()["scene"])

    def scenes(self) -> list[str | None]:
        """The scene name of each graph, in item order (``None``: not recorded)."""
        table = self.scene_table
        return [table[i] if i >= 0 else None for i in self.scene_index.tolist()]

    def __len__(self) -> int:
        return int(self.manifest["num_graphs"])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __repr__(self) -> str:
        granularity = (self.settings or {}).get("granularity", "?")
        return (f"GraphStore({self.store_dir}, {len(self)} graphs, source={self.source}, "
                f"granularity={granularity})")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"], state["_names"] = None, None  # maps are reopened in the receiving process
        return state

    # ------------------------------------------------------------------------------------------------ reading

    def _maps(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            d = self.store_dir

            def load(name: str) -> np.ndarray:
                # a plain ndarray over the map: np.memmap's own __getitem__ costs more than the read itself
                return np.load(d / name, mmap_mode="r", allow_pickle=False).view(np.ndarray)

            arrays = {Path(f).stem: load(f) for f in _INDEX_FILES}
            for key, spec in self.fields.items():
                arrays[f"{spec['kind']}.{key}"] = load(f"{spec['kind']}.{key}.npy")
            if arrays["node_ptr"].shape != (len(self) + 1,) or arrays["names"].shape != (len(self),):
                raise StoreError(f"{d}: the graph store is damaged (index files do not match {MANIFEST}); rebuild "
                                 "it with tools/build_graphs.py")
            self._arrays = arrays
        return self._arrays

    def _find(self, name: str) -> int | None:
        maps = self._maps()
        sorted_names = maps["names_sorted"]
        encoded = name.encode("utf-8")
        if len(encoded) > sorted_names.dtype.itemsize or not len(sorted_names):
            return None  # longer than every stored name (and a shorter dtype would truncate it)
        key = np.array(encoded, dtype=sorted_names.dtype)  # the map's own dtype, so the map is never cast
        pos = int(np.searchsorted(sorted_names, key))
        if pos == len(sorted_names) or sorted_names[pos] != key:
            return None
        return int(maps["names_order"][pos])

    def index(self, name: str) -> int:
        """Position of ``name``; ``KeyError`` naming the store when it has no such graph."""
        i = self._find(name)
        if i is None:
            raise KeyError(f"{name}: not in the graph store {self.store_dir} ({len(self)} graphs); the item was "
                           "skipped as unreadable or the store is of another split")
        return i

    def tensors(self, index: int) -> dict[str, Tensor]:
        """Graph ``index`` as :meth:`SceneGraph.to_tensors` gave it to the build (copies, not views of the maps)."""
        maps = self._maps()
        if not -len(self) <= index < len(self):
            raise IndexError(f"graph index {index} out of range for {len(self)} graphs in {self.store_dir}")
        index %= len(self)
        n0, n1 = maps["node_ptr"][index:index + 2].tolist()
        e0, e1 = maps["edge_ptr"][index:index + 2].tolist()
        out: dict[str, Tensor] = {}
        for key, spec in self.fields.items():
            array = maps[f"{spec['kind']}.{key}"]
            rows = array[n0:n1] if spec["kind"] == "node" else array[e0:e1] if spec["kind"] == "edge" else \
                array[index]
            value = np.array(rows, dtype=spec["dtype"])  # a copy (and int32 -> int64 where narrowed)
            if key == "edge_index":
                value = np.ascontiguousarray(value.T)  # stored (E, 2) so one graph's edges are contiguous
            out[key] = torch.from_numpy(value)
        return out

    def graph(self, index: int) -> SceneGraph:
        """Graph ``index`` (item order) as a :class:`SceneGraph`."""
        return SceneGraph.from_tensors(self.tensors(index), self.class_table)

    def get(self, name: str) -> SceneGraph:
        """The graph of item ``name``; ``KeyError`` naming the store when it has none."""
        return self.graph(self.index(name))

    __getitem__ = get

