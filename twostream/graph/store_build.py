"""Building a graph store: from annotations (``gt``), a segmenter's predictions (``pred``) or graph JSON files, in one
process or split across many (``torchrun``), resumable, and identical byte for byte however it was split.

A build works in chunks of ``chunk_size`` consecutive items. Each chunk is written to ``parts/chunk-NNNNNN.npz``
(plain arrays, ``allow_pickle=False``) through a temporary file and a rename, so a chunk on disk is always whole.
Running a build again keeps the finished chunks and builds the missing ones, whatever the number of processes;
:func:`finish_build` then concatenates the chunks into the store's flat files (:mod:`twostream.graph.store`),
writes ``store.json`` last and removes the chunks. The store's files depend only on the items and settings, not on
how the chunks were spread over processes.

The build key (``build.json``, then ``store.json``) is a hash of everything that decides the graphs: the builder
settings, the class table, the source, the segmenter identity (an opaque string the caller computes), how the label
maps were sized (``map_size``, a JSON-ready dict the caller computes: the segmenter's input size for ``pred``) and
the item names; not the chunk size, which does not change the content (an unfinished build records its own in
``build.json``). A folder whose key differs is stale and is rebuilt, never reused.

Sources. Items come from a ``Sequence`` (``len`` and indexing) of data-contract dicts (``{"name", "sem_seg",
"image", ...}``, e.g. ``ADE20KDataset``) or ``(name, array)`` pairs: a label map for ``gt``, an image ``(3, H, W)`` in
``[0, 1]`` for ``pred``. ``gt`` graphs are built in DataLoader workers; ``pred`` images are loaded by workers,
segmented in batches on ``device`` by ``predict`` and turned into graphs by ``SceneGraphBuilder.build_batch``.
Pixels labelled 255 in an item's ``sem_seg`` (padding added by the transforms) are void in predicted graphs too.
A scene name per item is recorded when the source has ``scene_names`` (name -> scene), so graphs-only training
needs nothing but the store.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from twostream.atomic import atomic_write
from twostream.config import json_hash
from twostream.data.classes import ClassTable
from twostream.graph.builder import SceneGraphBuilder
from twostream.graph.store import (
    BUILD_MANIFEST,
    MANIFEST,
    STORE_FORMAT,
    GraphStore,
    StoreError,
    field_kind,
    store_files,
)
from twostream.graph.store_sources import Predict, Result, item_names, item_results, scene_lookup

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CHUNK_SIZE", "BuildPlan", "build_chunks", "build_graph_store", "finish_build", "pack_chunk",
           "plan_build", "plan_graph_build", "run_build", "store_key", "write_chunk"]

DEFAULT_CHUNK_SIZE = 1024
PARTS = "parts"
CHUNK = "chunk-{:06d}.npz"


def store_key(*, source: str, settings: dict | None, class_table: ClassTable, segmenter: str | None,
              names: Sequence[str] | None, num_items: int, map_size: dict | None = None) -> str:
    """Hash of everything that decides a store's content; a folder with another key is stale. (The chunk size
    does not change the content; an unfinished build remembers its own in ``build.json``.)"""
    return json_hash({"format": STORE_FORMAT, "settings": settings, "class_table": class_table.to_dict(),
                  "source": source, "segmenter": segmenter, "num_items": num_items, "map_size": map_size,
                  "names": json_hash(list(names)) if names is not None else None})


def _same_graphs(existing: dict, manifest: dict) -> bool:
    """A finished store holds the graphs ``manifest`` describes: the same key, or (a store converted from the old
    shard cache, whose item names were not recorded) the same settings, table, source, segmenter and item count."""
    if not existing.get("complete"):
        return False
    if existing.get("key") == manifest["key"]:
        return True
    same = ("settings", "class_table", "source", "segmenter", "map_size")
    return bool(existing.get("build", {}).get("converted_from")) and all(
        existing.get(k) == manifest[k] for k in same) and existing["build"].get("num_items") == \
        manifest["build"]["num_items"]


# --------------------------------------------------------------------------------------------------------------------
# Chunks
# --------------------------------------------------------------------------------------------------------------------


def _encode(strings: Sequence[str]) -> np.ndarray:
    """UTF-8 fixed-width bytes (numpy ``S``): no pickle, and sortable for a binary search."""
    return np.array([s.encode("utf-8") for s in strings], dtype="S") if len(strings) else np.zeros(0, "S1")


def pack_chunk(names: Sequence[str], scenes: Sequence[str | None], graphs: Sequence[dict[str, Tensor]]) -> dict:
    """Concatenate per-graph tensor dicts (:meth:`SceneGraph.to_tensors`) into one chunk of plain arrays.

    Returns ``{"names", "scenes", "num_nodes", "num_edges", "<kind>.<field>": concatenated rows, "range.<field>":
    [min, max] of integer fields}``; ``edge_index`` is stored ``(E, 2)``.

    Raises:
        ValueError: graphs with different fields, or a per-graph field whose shape differs between graphs.
    """
    nodes = np.array([int(g["labels"].shape[0]) for g in graphs], dtype=np.int64)
    edges = np.array([int(g["edge_index"].shape[1]) for g in graphs], dtype=np.int64)
    chunk: dict[str, np.ndarray] = {"names": _encode(names), "scenes": _encode([s or "" for s in scenes]),
                                    "num_nodes": nodes, "num_edges": edges}
    if not graphs:
        return chunk
    keys = list(graphs[0])
    for name, g in zip(names, graphs):
        if list(g) != keys:
            raise ValueError(f"graph store: graph '{name}' has fields {sorted(g)}, the others {sorted(keys)}; every "
                             "graph of a store must carry the same fields")
    for key in keys:
        values = [g[key] for g in graphs]  # to_tensors() gives detached CPU tensors
        kind = field_kind(key, values, nodes.tolist(), edges.tolist())
        if kind == "graph":
            if len({tuple(v.shape) for v in values}) > 1:
                raise ValueError(f"graph store: per-graph field '{key}' has shapes "
                                 f"{sorted({tuple(v.shape) for v in values})}; a per-graph field must have one shape")
            tensor = torch.stack(values)
        elif key == "edge_index":
            tensor = torch.cat(values, dim=1).T  # (2, E) -> (E, 2): one graph's edges contiguous in the file
        else:
            tensor = torch.cat(values)
        array = np.ascontiguousarray(tensor.cpu().numpy())  # one conversion per field, not per graph
        chunk[f"{kind}.{key}"] = array
        if array.dtype.kind in "iu":
            chunk[f"range.{key}"] = np.array([array.min(initial=0), array.max(initial=0)], dtype=np.int64)
    return chunk


def write_chunk(path: Path, chunk: dict[str, np.ndarray]) -> None:
    """Write a :func:`pack_chunk` result (an uncompressed ``.npz``) through a temporary file and a rename."""
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, **chunk)

    atomic_write(path, write)


@dataclass
class BuildPlan:
    """What a build of ``num_items`` items in chunks of ``chunk_size`` writes, and where."""

    store_dir: Path
    key: str
    num_items: int
    chunk_size: int
    manifest: dict  # the store manifest without counts and fields: format, key, source, segmenter, settings, ...

    @property
    def num_chunks(self) -> int:
        return (self.num_items + self.chunk_size - 1) // self.chunk_size

    def chunk_indices(self, k: int) -> range:
        return range(k * self.chunk_size, min((k + 1) * self.chunk_size, self.num_items))

    def chunk_path(self, k: int) -> Path:
        return self.store_dir / PARTS / CHUNK.format(k)

    def missing_chunks(self) -> list[int]:
        return [k for k in range(self.num_chunks) if not self.chunk_path(k).is_file()]


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _remove_store_files(store_dir: Path, manifest: dict) -> None:
    """Remove a finished store's files (this module's files only, nothing else in the folder)."""
    for name in [*(store_files(manifest) if "fields" in manifest else []), MANIFEST]:
        path = store_dir / name
        if path.is_file():
            path.unlink()


def plan_build(store_dir: str | Path, *, source: str, settings: dict | None, class_table: ClassTable,
               segmenter: str | None, names: Sequence[str] | None, num_items: int,
               chunk_size: int = DEFAULT_CHUNK_SIZE, write: bool = True,
               map_size: dict | None = None) -> tuple[BuildPlan, bool]:
    """The build of ``store_dir`` for these items and settings; ``(plan, done)``.

    With ``write`` (one process, or rank 0 of many) the folder is made ready: a stale store or stale chunks (another
    key) are removed, leftovers of interrupted writes (``*.tmp``) too, and ``build.json`` records the key. ``done``
    is true when the folder already holds this very store.
    """
    if num_items < 1:
        raise ValueError("graph store: no items to build graphs of")
    if chunk_size < 1:
        raise ValueError(f"graph store: chunk_size must be >= 1, got {chunk_size}")
    store_dir = Path(store_dir)
    key = store_key(source=source, settings=settings, class_table=class_table, segmenter=segmenter, names=names,
                    num_items=num_items, map_size=map_size)
    manifest = {"format": STORE_FORMAT, "key": key, "source": source, "segmenter": segmenter, "settings": settings,
                "map_size": map_size, "class_table": class_table.to_dict(),
                "build": {"num_items": num_items, "chunk_size": chunk_size}}
    plan = BuildPlan(store_dir, key, num_items, chunk_size, manifest)
    existing = _read_json(store_dir / MANIFEST)
    done = existing is not None and _same_graphs(existing, manifest)
    if not write:
        return plan, done
    store_dir.mkdir(parents=True, exist_ok=True)
    parts = store_dir / PARTS
    if done:
        if parts.is_dir() or (store_dir / BUILD_MANIFEST).is_file():  # a finish cut short after store.json
            shutil.rmtree(parts, ignore_errors=True)
            (store_dir / BUILD_MANIFEST).unlink(missing_ok=True)
        return plan, True
    if existing is not None:
        log.warning("graph store %s was built with other settings, source, segmenter or items; rebuilding it",
                    store_dir)
        _remove_store_files(store_dir, existing)
    build = _read_json(store_dir / BUILD_MANIFEST)
    stale = build is not None and (build.get("key") != key or build.get("build") != manifest["build"])
    if stale and parts.is_dir():
        log.warning("graph store %s: the unfinished build there is of other settings, items or chunk size; "
                    "starting over", store_dir)
        shutil.rmtree(parts)
    # Leftovers of an interrupted write are never whole. Those in parts/ stay until finish_build removes the folder:
    # on a resumed torchrun build another rank may already be writing its chunks there (through temporary files of
    # their own names, never mistaken for a chunk), and deleting them here made its rename fail.
    for tmp in store_dir.glob("*.tmp"):  # (only rank 0 writes here)
        tmp.unlink()
    parts.mkdir(exist_ok=True)
    atomic_write(store_dir / BUILD_MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1) + "\n"))
    return plan, False


class _ChunkWriter:
    """Collects results in item order and writes each chunk when its last item is in."""

    def __init__(self, plan: BuildPlan, chunks: Iterable[int], scene_of: Callable[[str], str | None] | None,
                 on_item: Callable[[], None] | None = None) -> None:
        self.plan, self.scene_of, self.on_item = plan, scene_of, on_item
        self.remaining = {k: len(plan.chunk_indices(k)) for k in chunks}
        self.pending: dict[int, list[tuple[str, dict[str, Tensor]]]] = {}
        self.failed = 0

    def add(self, index: int, result: Result) -> None:
        k = index // self.plan.chunk_size
        if result is None:
            self.failed += 1
        else:
            self.pending.setdefault(k, []).append(result)
        self.remaining[k] -= 1
        if self.remaining[k] == 0:
            graphs = self.pending.pop(k, [])
            names = [n for n, _ in graphs]
            scenes = [self.scene_of(n) if self.scene_of else None for n in names]
            write_chunk(self.plan.chunk_path(k), pack_chunk(names, scenes, [g for _, g in graphs]))
        if self.on_item is not None:
            self.on_item()


# --------------------------------------------------------------------------------------------------------------------
# Building and finishing
# --------------------------------------------------------------------------------------------------------------------


def build_chunks(plan: BuildPlan, results: Iterator[tuple[int, Result]] | Callable[[list[int]], Iterator],
                 chunks: Sequence[int], *, scene_of: Callable[[str], str | None] | None = None,
                 progress: bool = False, desc: str = "graphs") -> int:
    """Write the chunks ``chunks`` of ``plan`` from ``results(indices)``: ``(item index, result)`` in index order.

    Returns the number of items that failed (``None`` results; the source logged why).
    """
    from tqdm.auto import tqdm

    indices = [i for k in sorted(chunks) for i in plan.chunk_indices(k)]
    bar = tqdm(total=len(indices), desc=desc, unit="img", disable=not progress)
    writer = _ChunkWriter(plan, chunks, scene_of, on_item=lambda: bar.update(1))
    for index, result in results(indices) if callable(results) else results:
        writer.add(index, result)
    bar.close()
    return writer.failed


def _chunk_index(path: Path) -> dict[str, Any]:
    """The small members of a chunk (names, scenes, counts) and, per field, its kind, dtype, shape and range."""
    with np.load(path, allow_pickle=False) as z:
        out: dict[str, Any] = {k: z[k] for k in ("names", "scenes", "num_nodes", "num_edges")}
        out["fields"] = {}
        for member in z.files:
            kind, _, key = member.partition(".")
            if kind in ("node", "edge", "graph"):
                out["fields"][key] = kind
        out["ranges"] = {k.split(".", 1)[1]: z[k] for k in z.files if k.startswith("range.")}
    return out


def _member_header(z: Any, member: str) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape of array ``member`` of the open ``.npz`` ``z``, from its header alone (the copy pass reads
    the rows; reading them here too would read every chunk twice)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with z.zip.open(f"{member}.npy") as f:
        read = readers.get(np.lib.format.read_magic(f))
        if read is not None:
            shape, _, dtype = read(f)
            return dtype, shape
    array = z[member]  # a header version of a later numpy: read the array
    return array.dtype, array.shape


def _field_specs(plan: BuildPlan, index: list[dict]) -> dict[str, dict]:
    """One spec per field (kind, dtype, stored dtype, trailing shape), checked for agreement across chunks."""
    specs: dict[str, dict] = {}
    for k, chunk in enumerate(index):
        if not len(chunk["names"]):
            continue
        with np.load(plan.chunk_path(k), allow_pickle=False) as z:
            for key, kind in chunk["fields"].items():
                dtype, shape = _member_header(z, f"{kind}.{key}")
                spec = {"kind": kind, "dtype": dtype.name, "shape": list(shape[1:])}
                if key not in specs:
                    specs[key] = {**spec, "range": [0, 0]}
                elif {k2: specs[key][k2] for k2 in spec} != spec:
                    raise StoreError(f"{plan.store_dir}: chunk {k} stores field '{key}' as {spec}, an earlier chunk "
                                     f"as {specs[key]}; rebuild the store from scratch")
                if key in chunk["ranges"]:
                    lo, hi = (int(v) for v in chunk["ranges"][key])
                    specs[key]["range"] = [min(specs[key]["range"][0], lo), max(specs[key]["range"][1], hi)]
            if set(chunk["fields"]) != set(specs):
                raise StoreError(f"{plan.store_dir}: chunk {k} has fields {sorted(chunk['fields'])}, others "
                                 f"{sorted(specs)}; rebuild the store from scratch")
    for spec in specs.values():
        narrow = spec["dtype"] == "int64" and spec["range"][0] >= -2**31 and spec["range"][1] < 2**31
        spec["stored"] = "int32" if narrow else spec["dtype"]
        del spec["range"]
    return specs


def _save(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: given a path, np.save would append ".npy" to the temporary name
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)

    atomic_write(path, write)


def finish_build(plan: BuildPlan) -> GraphStore:
    """Concatenate the finished chunks of ``plan`` into the store's flat files, write ``store.json``, drop the chunks.

    A name that occurs twice (a bad item a dataset replaced by its neighbour) keeps its first graph.

    Raises:
        StoreError: a chunk is missing (a process of the build has not finished) or the chunks disagree.
    """
    missing = plan.missing_chunks()
    if missing:
        raise StoreError(f"{plan.store_dir}: {len(missing)} of {plan.num_chunks} chunks are not built yet (first: "
                         f"{plan.chunk_path(missing[0]).name}); run the build again to finish them")
    d = plan.store_dir
    index = [_chunk_index(plan.chunk_path(k)) for k in range(plan.num_chunks)]
    names = np.concatenate([c["names"] for c in index])
    if not len(names):
        raise StoreError(f"{d}: no graph could be built ({plan.num_items} items, every one failed to load; see "
                         "the log)")
    scenes = np.concatenate([c["scenes"] for c in index])
    num_nodes = np.concatenate([c["num_nodes"] for c in index])
    num_edges = np.concatenate([c["num_edges"] for c in index])
    specs = _field_specs(plan, index)

    _, first = np.unique(names, return_index=True)
    keep = np.zeros(len(names), dtype=bool)
    keep[first] = True
    if not keep.all():
        log.info("graph store %s: %d repeated item name(s) keep their first graph", d, int((~keep).sum()))
    node_keep, edge_keep = np.repeat(keep, num_nodes), np.repeat(keep, num_edges)
    names, scenes = names[keep], scenes[keep]
    node_ptr = np.concatenate([[0], np.cumsum(num_nodes[keep])]).astype(np.int64)
    edge_ptr = np.concatenate([[0], np.cumsum(num_edges[keep])]).astype(np.int64)
    totals = {"node": int(node_ptr[-1]), "edge": int(edge_ptr[-1]), "graph": len(names)}

    # Fields: one pass over the chunks, each chunk's rows copied into every field's memory-mapped output
    outputs, tmps = {}, {}
    for key, spec in specs.items():
        path = d / f"{spec['kind']}.{key}.npy"
        tmps[key] = path.with_name(path.name + ".tmp")
        outputs[key] = np.lib.format.open_memmap(tmps[key], mode="w+", dtype=spec["stored"],
                                                 shape=(totals[spec["kind"]], *spec["shape"]))
    offsets = dict.fromkeys(specs, 0)
    graph_at, node_at, edge_at = 0, 0, 0
    for k, chunk in enumerate(index):
        g = len(chunk["names"])
        masks = {"graph": keep[graph_at:graph_at + g],
                 "node": node_keep[node_at:node_at + int(chunk["num_nodes"].sum())],
                 "edge": edge_keep[edge_at:edge_at + int(chunk["num_edges"].sum())]}
        graph_at, node_at, edge_at = graph_at + g, node_at + len(masks["node"]), edge_at + len(masks["edge"])
        if not g:
            continue
        with np.load(plan.chunk_path(k), allow_pickle=False) as z:
            for key, spec in specs.items():
                rows = z[f"{spec['kind']}.{key}"][masks[spec["kind"]]]
                outputs[key][offsets[key]:offsets[key] + len(rows)] = rows
                offsets[key] += len(rows)
    for out in outputs.values():
        out.flush()
    outputs.clear()  # closes the maps before their files are renamed
    for key, spec in specs.items():
        tmps[key].replace(d / f"{spec['kind']}.{key}.npy")

    order = np.argsort(names, kind="stable")
    scene_table = sorted({s.decode("utf-8") for s in np.unique(scenes).tolist()} - {""})
    lookup = _encode(scene_table)
    scene_idx = np.where(scenes == b"", -1, np.searchsorted(lookup, scenes) if len(lookup) else -1).astype(np.int32)
    for name, array in (("node_ptr", node_ptr), ("edge_ptr", edge_ptr), ("names", names),
                        ("names_sorted", names[order]), ("names_order", order.astype(np.int64)),
                        ("scene", scene_idx)):
        _save(d / f"{name}.npy", array)

    manifest = {**plan.manifest, "num_graphs": totals["graph"], "num_nodes": totals["node"],
                "num_edges": totals["edge"], "fields": specs, "scenes": scene_table, "complete": True}
    atomic_write(d / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n"))
    shutil.rmtree(d / PARTS, ignore_errors=True)
    (d / BUILD_MANIFEST).unlink(missing_ok=True)
    return GraphStore(d)


def build_graph_store(
    store_dir: str | Path,
    source: Sequence,
    builder: SceneGraphBuilder,
    *,
    kind: str = "gt",
    predict: Predict | None = None,
    segmenter: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    num_workers: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    map_size: dict | None = None,
) -> GraphStore:
    """Build (or finish, or rebuild when stale) the graph store of ``source`` in ``store_dir``, in this process.

    ``torchrun`` builds split the same work over processes: :func:`twostream.engine.graph_caches.build_split_caches`.

    Args:
        store_dir: the store folder (created).
        source: a ``Sequence`` of items: data-contract dicts or ``(name, array)`` pairs (module docstring).
        builder: turns label maps into graphs; its ``settings()`` and class table are part of the key.
        kind: ``"gt"`` (labels from the items) or ``"pred"`` (labels from ``predict`` on the items' images).
        predict: ``pred`` only: ``images (B, 3, H, W)`` float in [0, 1] on ``device`` -> ``(B, K, H, W)`` class
            logits (labels and node confidence from one pass), e.g. ``segmenter.segment``, or ``(B, H, W)`` int
            labels, e.g. ``segmenter.predict``.
        segmenter: ``pred`` only: the segmenter's identity, an opaque string that is part of the key.
        device: where ``predict`` runs. batch_size: images per ``predict`` call.
        num_workers: DataLoader worker processes (``gt``: they also build the graphs; 0 = in this process).
        chunk_size: items per chunk (the unit a resumed build keeps).
        progress: show a tqdm progress bar.
        map_size: how the items' maps are sized (e.g. the segmenter's input size), JSON-ready; part of the key.
    """
    store = run_build(lambda write: plan_graph_build(store_dir, source, builder, kind=kind, predict=predict,
                                                     segmenter=segmenter, chunk_size=chunk_size, write=write,
                                                     map_size=map_size),
                      item_results(source, builder, kind=kind, predict=predict, device=device, batch_size=batch_size,
                                   num_workers=num_workers),
                      scene_of=scene_lookup(source), progress=progress, desc=f"graphs ({kind})")
    assert store is not None  # one process: rank 0
    return store


def plan_graph_build(store_dir: str | Path, source: Sequence, builder: SceneGraphBuilder, *, kind: str,
                     predict: Predict | None, segmenter: str | None, chunk_size: int,
                     write: bool = True, map_size: dict | None = None) -> tuple[BuildPlan, bool]:
    """:func:`plan_build` for items of ``source`` built by ``builder`` (checks ``kind`` and ``predict``)."""
    if kind not in ("gt", "pred"):
        raise ValueError(f"build_graph_store: kind must be gt or pred, got '{kind}'")
    if kind == "pred" and predict is None:
        raise ValueError("build_graph_store: kind='pred' needs predict (images -> label maps), e.g. segmenter.predict")
    return plan_build(store_dir, source=kind, settings=builder.settings(), class_table=builder.class_table,
                      segmenter=segmenter if kind == "pred" else None, names=item_names(source),
                      num_items=len(source), chunk_size=chunk_size, write=write, map_size=map_size)


def _wait(what: str, ready: Callable[[], bool], poll_s: float) -> None:
    """Poll ``ready()`` until it holds, logging once a minute what is awaited."""
    last = time.monotonic()
    while not ready():
        if time.monotonic() - last > 60:
            log.info("waiting for %s", what)
            last = time.monotonic()
        time.sleep(poll_s)


def run_build(plan_fn: Callable[[bool], tuple[BuildPlan, bool]], results: Callable[[list[int]], Iterator], *,
              scene_of: Callable[[str], str | None] | None, progress: bool, desc: str, rank: int = 0,
              world_size: int = 1, poll_s: float = 2.0) -> GraphStore | None:
    """One store, built by this process alone or as rank ``rank`` of ``world_size`` processes sharing the folder.

    ``plan_fn(write)`` gives ``(plan, done)`` (:func:`plan_build`; ``write`` only on rank 0, which prepares the
    folder: the other ranks wait until ``build.json`` carries this build's key). Every rank builds the missing
    chunks ``k`` with ``k % world_size == rank`` from ``results(indices)``; rank 0 waits until every chunk is on disk
    (polling the folder: no collective, so ranks of unequal speed never meet a collective's timeout) and writes the
    store. Returns the opened store on rank 0, ``None`` on the others.
    """
    if rank == 0:
        plan, done = plan_fn(True)
    else:
        plan, done = plan_fn(False)

        def finished() -> bool:
            existing = _read_json(plan.store_dir / MANIFEST)
            return existing is not None and _same_graphs(existing, plan.manifest)

        def prepared() -> bool:  # (the plan is not recomputed: its key hashes every item name)
            return (_read_json(plan.store_dir / BUILD_MANIFEST) or {}).get("key") == plan.key or finished()

        if not done:
            _wait(f"rank 0 to prepare {plan.store_dir}", prepared, poll_s)
            done = finished()
    if done:
        log.info("graph store %s is complete and current (%d items)", plan.store_dir, plan.num_items)
        return GraphStore(plan.store_dir) if rank == 0 else None
    mine = [k for k in range(plan.num_chunks) if k % world_size == rank and not plan.chunk_path(k).is_file()]
    missing = len(plan.missing_chunks())
    if rank == 0 and missing < plan.num_chunks:
        log.info("graph store %s: %d of %d chunks already built; building the rest", plan.store_dir,
                 plan.num_chunks - missing, plan.num_chunks)
    if world_size > 1:
        log.info("rank %d of %d: %d chunk(s) of up to %d items to build", rank, world_size, len(mine),
                 plan.chunk_size)
    failed = build_chunks(plan, results, mine, scene_of=scene_of, progress=progress and rank == 0, desc=desc)
    if failed:
        log.warning("graph store %s: %d item(s) failed to load and have no graph", plan.store_dir, failed)
    if rank != 0:
        return None
    _wait(f"the other ranks' chunks of {plan.store_dir}", lambda: not plan.missing_chunks(), poll_s)
    return finish_build(plan)
