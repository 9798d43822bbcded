"""The graph store at Places365 size, against the old shard cache in the same run, and a graphs-only epoch against
the same epoch reading images.

Synthetic graphs are written straight from flat arrays (vectorised; 1 M graphs in seconds), not through the builder:
node counts uniform in 3..24 (mean 13.5, ADE20K class graphs have about 12), four directed edges per node, ADE20K-150
labels. The store gets them as chunks of 4,096 graphs through its own :func:`finish_build`; the shard cache as shards
of 256 in its own format. Rows:

- **shuffled access**: ``get(name)`` of names in a random order over the whole set (what a shuffled epoch asks of
  every loader worker), ms per graph; the pages are in the page cache (written moments ago), as after a first epoch;
  **cold** (graph store only): the same after the store's files were dropped from the page cache
  (``posix_fadvise(DONTNEED)``): every graph is a disk read;
- **in-order access**: the first names in item order;
- **open**: opening the folder (manifest, maps; for the shard cache its name index) and the first ``get``;
- **private memory**: growth of the process's anonymous memory (``RssAnon``, what each worker pays alone) after
  opening and after the shuffled reads, at a small and at the full size; pages of the store's files are the page
  cache's, shared by every worker, and reported apart (``RssFile``);
- **build**: graphs per second into each format from per-graph tensor dicts (``SceneGraph.to_tensors()``), the
  builder excluded (its own table is ``benchmarks/graph_builder.py``);
- **graphs-only epoch**: one pass of a DataLoader (no workers) over a synthetic ADE20K-format training split for a
  graph-only model: graphs from the ``gt`` store (no image opened) against the path it replaces, reading each image
  and annotation, transforming them and building the graph from the annotation.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = ["StoreResult", "bench_graphs_only_epoch", "bench_store", "write_synthetic_cache", "write_synthetic_store"]

CHUNK = 4096
SHARD = 256
_MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------------------------------
# Synthetic graphs, vectorised
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Graphs:
    """``n`` graphs as flat arrays: per-graph node / edge counts and every field concatenated."""

    names: np.ndarray  # (G,) bytes
    num_nodes: np.ndarray  # (G,) int64
    num_edges: np.ndarray
    fields: dict[str, np.ndarray]  # "node.labels" (sum N,), ..., "edge.edge_index" (sum E, 2), "graph.image_size"

    def __len__(self) -> int:
        return len(self.names)


def synthetic_graphs(n: int, seed: int = 0) -> _Graphs:
    """``n`` random scene graphs as flat arrays (a few seconds per million)."""
    rng = np.random.default_rng(seed)
    nodes = rng.integers(3, 25, n).astype(np.int64)
    edges = 4 * nodes
    total_n, total_e = int(nodes.sum()), int(edges.sum())
    local_n = np.repeat(nodes, edges)  # (sum E,) the node count of each edge's graph
    src = (rng.random(total_e) * local_n).astype(np.int64)
    dst = (src + 1 + (rng.random(total_e) * (local_n - 1)).astype(np.int64)) % local_n  # no self loops
    lo = rng.random((total_n, 2), dtype=np.float32) * 0.5
    fields = {
        "node.labels": rng.integers(1, 151, total_n).astype(np.int64),
        "node.area": rng.random(total_n, dtype=np.float32),
        "node.centroid": rng.random((total_n, 2), dtype=np.float32),
        "node.bbox": np.concatenate([lo, lo + 0.5], axis=1),
        "edge.edge_index": np.stack([src, dst], axis=1),
        "edge.boundary": rng.integers(1, 400, total_e).astype(np.float32),
        "graph.image_size": np.tile(np.array([[224, 224]], dtype=np.int64), (n, 1)),
    }
    names = np.strings.add(b"img_", np.char.zfill(np.arange(n).astype("S"), 8)) if n else np.zeros(0, "S1")
    return _Graphs(names.astype("S"), nodes, edges, fields)


def _ptr(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _slice(graphs: _Graphs, g0: int, g1: int, node_ptr: np.ndarray, edge_ptr: np.ndarray) -> dict[str, np.ndarray]:
    n0, n1, e0, e1 = node_ptr[g0], node_ptr[g1], edge_ptr[g0], edge_ptr[g1]
    rows = {"node": slice(n0, n1), "edge": slice(e0, e1), "graph": slice(g0, g1)}
    return {k: v[rows[k.split(".")[0]]] for k, v in graphs.fields.items()}


def write_synthetic_store(store_dir: Path, graphs: _Graphs) -> None:
    """The graphs as a finished graph store, through the store's own chunks and :func:`finish_build`."""
    from twostream.data.classes import ade20k150
    from twostream.graph.store_build import finish_build, plan_build, write_chunk

    plan, _ = plan_build(store_dir, source="gt", settings={"synthetic": True}, class_table=ade20k150(),
                         segmenter=None, names=None, num_items=len(graphs), chunk_size=CHUNK)
    node_ptr, edge_ptr = _ptr(graphs.num_nodes), _ptr(graphs.num_edges)
    for k in range(plan.num_chunks):
        g0, g1 = k * CHUNK, min((k + 1) * CHUNK, len(graphs))
        chunk = {"names": graphs.names[g0:g1], "scenes": np.full(g1 - g0, b"street", dtype="S6"),
                 "num_nodes": graphs.num_nodes[g0:g1], "num_edges": graphs.num_edges[g0:g1],
                 **_slice(graphs, g0, g1, node_ptr, edge_ptr)}
        for key in ("labels", "edge_index"):
            values = chunk[("node." if key == "labels" else "edge.") + key]
            chunk[f"range.{key}"] = np.array([values.min(initial=0), values.max(initial=0)], dtype=np.int64)
        write_chunk(plan.chunk_path(k), chunk)
    finish_build(plan)


def write_synthetic_cache(cache_dir: Path, graphs: _Graphs) -> None:
    """The same graphs as an old shard cache (shards of 256, its format)."""
    from twostream.data.classes import ade20k150
    from twostream.graph.cache import write_shard_cache

    node_ptr, edge_ptr = _ptr(graphs.num_nodes), _ptr(graphs.num_edges)
    names = [n.decode() for n in graphs.names.tolist()]

    def shards():
        for g0 in range(0, len(graphs), SHARD):
            g1 = min(g0 + SHARD, len(graphs))
            part = _slice(graphs, g0, g1, node_ptr, edge_ptr)
            yield {"names": names[g0:g1],
                   "node_ptr": torch.from_numpy(node_ptr[g0:g1 + 1] - node_ptr[g0]),
                   "edge_ptr": torch.from_numpy(edge_ptr[g0:g1 + 1] - edge_ptr[g0]),
                   "image_size": torch.from_numpy(part["graph.image_size"]),
                   **{f: torch.from_numpy(part[f"node.{f}"]) for f in ("labels", "area", "centroid", "bbox")},
                   "boundary": torch.from_numpy(part["edge.boundary"]),
                   "edge_index": torch.from_numpy(np.ascontiguousarray(part["edge.edge_index"].T))}

    write_shard_cache(cache_dir, shards(), settings={"synthetic": True}, class_table=ade20k150(), shard_size=SHARD)


def _tensor_dicts(graphs: _Graphs) -> list[dict[str, torch.Tensor]]:
    node_ptr, edge_ptr = _ptr(graphs.num_nodes), _ptr(graphs.num_edges)
    out = []
    for g in range(len(graphs)):
        part = _slice(graphs, g, g + 1, node_ptr, edge_ptr)
        t = {k.split(".", 1)[1]: torch.from_numpy(v.copy()) for k, v in part.items()}
        t["edge_index"] = t["edge_index"].T.contiguous()
        t["image_size"] = t["image_size"][0]
        out.append(t)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------------------


def _status_mib(key: str) -> float | None:
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


@dataclass
class Access:
    """Per-graph read times (seconds) of one format at one size."""

    shuffled: float | None = None
    shuffled_reads: int = 0
    cold: float | None = None
    in_order: float | None = None
    open_s: float | None = None
    private_open_mib: float | None = None
    private_read_mib: float | None = None
    shared_read_mib: float | None = None


@dataclass
class StoreResult:
    """What the store section measured; ``size`` graphs, baseline at the same size."""

    size: int
    small: int
    store: Access
    cache: Access
    store_small: Access
    cache_small: Access
    build_graphs: int = 0
    store_build_gps: float | None = None
    cache_build_gps: float | None = None
    store_bytes: int = 0
    cache_bytes: int = 0
    epoch_items: int = 0
    epoch_graphs_only_s: float | None = None
    epoch_images_s: float | None = None


def _drop_page_cache(folder: Path) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def _time_reads(reader, names: list[str], budget_s: float) -> tuple[float, int]:
    """Mean seconds per ``get`` over ``names`` (stops once ``budget_s`` is spent, after at least 50 reads)."""
    t0 = time.perf_counter()
    done = 0
    for name in names:
        reader.get(name)
        done += 1
        if done >= 50 and time.perf_counter() - t0 > budget_s:
            break
    return (time.perf_counter() - t0) / done, done


def _measure(kind: str, folder: Path, names: list[str], shuffled: list[str], budget_s: float,
             cold: bool) -> Access:
    from twostream.graph.cache import ShardCache
    from twostream.graph.store import GraphStore

    open_reader = (lambda: GraphStore(folder)) if kind == "store" else (lambda: ShardCache(folder))
    gc.collect()
    anon0, file0 = _status_mib("RssAnon"), _status_mib("RssFile")
    t0 = time.perf_counter()
    reader = open_reader()
    reader.get(names[0])
    access = Access(open_s=time.perf_counter() - t0)
    anon1 = _status_mib("RssAnon")
    access.shuffled, access.shuffled_reads = _time_reads(reader, shuffled, budget_s)
    anon2, file2 = _status_mib("RssAnon"), _status_mib("RssFile")
    if anon0 is not None:
        access.private_open_mib, access.private_read_mib = anon1 - anon0, anon2 - anon0
        access.shared_read_mib = file2 - file0
    access.in_order, _ = _time_reads(reader, names[:len(shuffled)], budget_s)
    del reader
    gc.collect()
    if cold and kind == "store" and _drop_page_cache(folder):
        reader = open_reader()
        access.cold, _ = _time_reads(reader, shuffled[:min(len(shuffled), 2000)], budget_s)
        del reader
    return access


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _build_throughput(root: Path, graphs: _Graphs) -> tuple[float, float]:
    """Graphs per second into the store (chunks + finish) and into the shard cache, from tensor dicts."""
    from twostream.data.classes import ade20k150
    from twostream.graph.cache import pack_shard, write_shard_cache
    from twostream.graph.store_build import build_chunks, finish_build, plan_build

    dicts = _tensor_dicts(graphs)
    names = [n.decode() for n in graphs.names.tolist()]
    t0 = time.perf_counter()
    plan, _ = plan_build(root / "build-store", source="gt", settings={"synthetic": True}, class_table=ade20k150(),
                         segmenter=None, names=names, num_items=len(dicts), chunk_size=1024)
    build_chunks(plan, lambda idx: ((i, (names[i], dicts[i])) for i in idx), range(plan.num_chunks))
    finish_build(plan)
    store_gps = len(dicts) / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    def shards():  # as the old builder packed them, per shard of 256
        for g0 in range(0, len(dicts), SHARD):
            yield pack_shard(names[g0:g0 + SHARD], dicts[g0:g0 + SHARD])

    write_shard_cache(root / "build-cache", shards(), settings={"synthetic": True}, class_table=ade20k150())
    cache_gps = len(dicts) / (time.perf_counter() - t0)
    return store_gps, cache_gps


def bench_store(root: Path, *, size: int, small: int = 10_000, reads: int = 20_000, build_graphs: int = 20_000,
                budget_s: float = 30.0, seed: int = 0) -> StoreResult:
    """The store rows at ``size`` graphs (and ``small`` for the memory comparison) under ``root``."""
    small = min(small, size)
    result: dict[str, Access] = {}
    stats: dict = {}
    for n, tag in ((size, ""), (small, "_small")):
        log.info("graph store: %d synthetic graphs", n)
        graphs = synthetic_graphs(n, seed)
        names = [s.decode() for s in graphs.names.tolist()]
        shuffled = [names[i] for i in np.random.default_rng(seed + 1).permutation(n)[:reads].tolist()]
        for kind, write in (("store", write_synthetic_store), ("cache", write_synthetic_cache)):
            folder = root / f"{kind}-{n}"
            write(folder, graphs)
            if not tag:
                stats[f"{kind}_bytes"] = _folder_bytes(folder)
            log.info("graph store: %s of %d graphs, reading", kind, n)
            result[f"{kind}{tag}"] = _measure(kind, folder, names, shuffled, budget_s, cold=not tag)
        del graphs
        gc.collect()
    build_n = min(build_graphs, size)
    log.info("graph store: build throughput at %d graphs", build_n)
    store_gps, cache_gps = _build_throughput(root, synthetic_graphs(build_n, seed + 2))
    return StoreResult(size=size, small=small, store=result["store"], cache=result["cache"],
                       store_small=result["store_small"], cache_small=result["cache_small"], build_graphs=build_n,
                       store_build_gps=store_gps, cache_build_gps=cache_gps, store_bytes=stats["store_bytes"],
                       cache_bytes=stats["cache_bytes"])


def bench_graphs_only_epoch(root: Path, config_dir: Path, *, size: int | None, ci: bool, seed: int = 0,
                            per_scene: int = 16) -> tuple[int, float, float]:
    """``(items, graphs-only epoch s, image-reading epoch s)`` for a graph-only GAT on a synthetic training split.

    Both epochs pass every training item through a DataLoader without workers and collate batches of 16: from the
    ``gt`` store (``StoreGraphs``), and from the images and annotations (``ADE20KDataset`` with the training
    transforms and ``WithGraphs`` building each graph from the augmented annotation), as before the store.
    """
    from torch.utils.data import DataLoader

    from twostream.benchmark.inference import ModelSpec, spec_config
    from twostream.data.ade20k import ADE20KDataset
    from twostream.data.graph_items import StoreGraphs
    from twostream.data.synthetic import SCENES, make_synthetic
    from twostream.data.transforms import build_transforms
    from twostream.engine.data import WithGraphs, collate
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.graph.store import GraphStore
    from twostream.graph.store_build import build_graph_store

    data_root = root / "epoch-data"
    cfg = spec_config(ModelSpec("graph_only_gat", "graph_only_gat"), config_dir, size=size, ci=ci,
                      extra=[f"data.root={data_root}", "graph.source=gt", "model.segmenter.kind=none"])
    h, w = cfg.data.image_size
    make_synthetic(data_root, train_per_scene=per_scene, val_per_scene=1, size=(h, w), seed=seed)
    builder = SceneGraphBuilder.from_config(cfg.graph)
    plain = ADE20KDataset(data_root, "training", None, transform=build_transforms(cfg.data, train=False))
    build_graph_store(root / "epoch-store", plain, builder, progress=False)
    images = WithGraphs(ADE20KDataset(data_root, "training", None, transform=build_transforms(cfg.data, train=True)),
                        builder=builder)
    graphs = StoreGraphs(GraphStore(root / "epoch-store"), None)
    assert len(graphs) == len(images) == len(SCENES) * per_scene

    def epoch(dataset) -> float:
        t0 = time.perf_counter()
        for _ in DataLoader(dataset, batch_size=16, shuffle=True, collate_fn=collate,
                            generator=torch.Generator().manual_seed(seed)):
            pass
        return time.perf_counter() - t0

    epoch(graphs)  # warm: imports, page cache
    return len(graphs), epoch(graphs), epoch(images)
