#!/usr/bin/env python
"""Scene-graph builder throughput against scikit-image's region adjacency graph, on ADE20K-like label maps.

    python benchmarks/graph_builder.py                      # 512x512, 1 CPU thread, markdown table
    python benchmarks/graph_builder.py --maps 32 --skimage-maps 4 --real ../shared/ade20k/sample

Maps are synthesised with ADE20K-like statistics: 10-30 classes per map, large "stuff" regions with irregular
(noise-warped) boundaries, a few dozen small "thing" blobs, a little unlabelled (0) area; ``--real`` adds the
annotations of an ADE20K-layout folder, resized (nearest) to the same size. Both methods see the same maps:
twostream's ``SceneGraphBuilder`` (class and region granularity, 4- and 8-connectivity) and
``skimage.graph.RAG(labels, connectivity=1|2)`` (1 = 4-neighbourhood, 2 = 8). Timing runs on one CPU thread
(``torch.set_num_threads(1)``); ``ms/map`` is the best of ``--repeats`` passes of wall-clock time and ``cpu ms/map``
the process CPU time of that pass (the honest figure on a busy machine). With a GPU, a batched figure is added.

``run(...)`` returns the rows (dicts) so that the project benchmark can call it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = ["ade20k_like_maps", "markdown_table", "run"]


def ade20k_like_maps(num: int, size: int = 512, seed: int = 0) -> list[np.ndarray]:
    """``num`` ``(size, size)`` int64 label maps in 0..150 with ADE20K-like statistics (see the module docstring)."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def noise(cells: int, amplitude: float) -> np.ndarray:
        field = rng.normal(0, amplitude, (cells, cells)).astype(np.float32)
        return cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)

    maps = []
    for _ in range(num):
        k = int(rng.integers(10, 31))
        classes = rng.choice(np.arange(1, 151), size=k, replace=False)
        stuff = classes[: max(3, k // 3)]  # a third of the classes are large regions (wall, floor, sky, ...)
        seeds = rng.uniform(0, size, (len(stuff) * 2, 2)).astype(np.float32)
        seed_class = np.concatenate([stuff, rng.choice(stuff, len(seeds) - len(stuff))])
        weight = rng.uniform(0.5, 2.0, len(seeds)).astype(np.float32)
        wy = yy + noise(6, size / 12) + noise(32, size / 80)
        wx = xx + noise(6, size / 12) + noise(32, size / 80)
        best = np.full((size, size), np.inf, np.float32)
        label = np.zeros((size, size), np.int64)
        for (sy, sx), c, w in zip(seeds, seed_class, weight):  # a loop over a few dozen seeds, not pixels
            d = ((wy - sy) ** 2 + (wx - sx) ** 2) / w
            closer = d < best
            best[closer] = d[closer]
            label[closer] = c
        things = classes[len(stuff):]
        for _ in range(int(rng.integers(15, 50))):  # objects: irregular blobs of the remaining classes
            cy, cx = rng.uniform(0, size, 2)
            r = rng.uniform(size / 100, size / 12)
            blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < (r + noise(8, r / 3)) ** 2
            label[blob] = rng.choice(things) if len(things) else classes[0]
        label[(noise(24, 1.0) > 1.8)] = 0  # unlabelled patches
        maps.append(label)
    return maps


def _real_maps(folder: Path, size: int) -> list[np.ndarray]:
    import cv2

    paths = sorted(folder.glob("annotations/*/*.png")) or sorted(folder.glob("*.png"))
    return [cv2.resize(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), (size, size),
                       interpolation=cv2.INTER_NEAREST).astype(np.int64) for p in paths]


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall-clock seconds over ``repeats`` calls, and the CPU seconds of that call."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best[0]:
            best = (wall, cpu)
    return best


def run(size: int = 512, num_maps: int = 16, skimage_maps: int = 3, repeats: int = 3, seed: int = 0,
        real: str | Path | None = None, threads: int = 1, gpu_batch: int = 32) -> list[dict]:
    """Time the builder and skimage's RAG; return one row per (method, setting).

    Row keys: ``method``, ``granularity``, ``connectivity``, ``maps``, ``ms_per_map``, ``cpu_ms_per_map``,
    ``maps_per_s``, ``speedup`` (vs skimage at the same connectivity; ``None`` for skimage itself).
    """
    from twostream.graph.builder import SceneGraphBuilder

    torch.set_num_threads(threads)
    maps = ade20k_like_maps(num_maps, size, seed)
    if real:
        maps += _real_maps(Path(real), size)
    rows = []
    skimage_ms: dict[int, float] = {}
    try:
        from skimage import graph as skgraph
    except ImportError:
        skgraph = None
    if skgraph is not None and skimage_maps > 0:
        subset = maps[:skimage_maps]
        for connectivity in (4, 8):
            rag_connectivity = 1 if connectivity == 4 else 2
            wall, cpu = _time(lambda c=rag_connectivity: [skgraph.RAG(m, connectivity=c) for m in subset], 1)
            skimage_ms[connectivity] = 1e3 * wall / len(subset)
            rows.append({"method": "skimage.graph.RAG (int64 maps)", "granularity": "class",
                         "connectivity": connectivity, "maps": len(subset), "ms_per_map": skimage_ms[connectivity],
                         "cpu_ms_per_map": 1e3 * cpu / len(subset), "maps_per_s": len(subset) / wall,
                         "speedup": None})
    maps_uint8 = [m.astype(np.uint8) for m in maps]  # what an annotation PNG holds (datasets give int64)
    for granularity, connectivity, dtype in (("class", 4, "int64"), ("class", 4, "uint8"), ("class", 8, "int64"),
                                             ("region", 4, "int64"), ("region", 8, "int64")):
        builder = SceneGraphBuilder(granularity=granularity, connectivity=connectivity)
        inputs = maps if dtype == "int64" else maps_uint8
        for m in inputs[:2]:
            builder(m)  # warm-up
        wall, cpu = _time(lambda b=builder, x=inputs: [b(m) for m in x], repeats)
        ms = 1e3 * wall / len(maps)
        rows.append({"method": f"twostream SceneGraphBuilder ({dtype} maps)", "granularity": granularity,
                     "connectivity": connectivity, "maps": len(maps), "ms_per_map": ms,
                     "cpu_ms_per_map": 1e3 * cpu / len(maps), "maps_per_s": len(maps) / wall,
                     "speedup": skimage_ms[connectivity] / ms if connectivity in skimage_ms else None})
    if torch.cuda.is_available():
        batch = torch.from_numpy(np.stack([maps[i % len(maps)] for i in range(gpu_batch)])).cuda()
        for granularity in ("class", "region"):
            builder = SceneGraphBuilder(granularity=granularity, connectivity=4)
            builder.build_batch(batch)

            def step(b=builder) -> None:
                b.build_batch(batch)
                torch.cuda.synchronize()

            wall, cpu = _time(step, repeats)
            rows.append({"method": f"twostream build_batch, {torch.cuda.get_device_name()}, B={gpu_batch} (int64)",
                         "granularity": granularity, "connectivity": 4, "maps": gpu_batch,
                         "ms_per_map": 1e3 * wall / gpu_batch, "cpu_ms_per_map": 1e3 * cpu / gpu_batch,
                         "maps_per_s": gpu_batch / wall,
                         "speedup": skimage_ms[4] / (1e3 * wall / gpu_batch) if 4 in skimage_ms else None})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| method | granularity | conn. | maps | ms/map | cpu ms/map | maps/s | vs skimage |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speedup = f"{r['speedup']:.0f}x" if r["speedup"] is not None else "1x"
        lines.append(f"| {r['method']} | {r['granularity']} | {r['connectivity']} | {r['maps']} | "
                     f"{r['ms_per_map']:.2f} | {r['cpu_ms_per_map']:.2f} | {r['maps_per_s']:.1f} | {speedup} |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512, help="map side in pixels (default: 512)")
    p.add_argument("--maps", type=int, default=16, help="synthetic maps for the builder (default: 16)")
    p.add_argument("--skimage-maps", type=int, default=3, help="maps timed with skimage, which is slow (default: 3)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the maps; best kept (default: 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--real", default=None, help="also use the annotations of this ADE20K-layout folder")
    p.add_argument("--seed", type=int, default=0, help="map generator seed (default: 0)")
    return p


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    table = markdown_table(run(size=args.size, num_maps=args.maps, skimage_maps=args.skimage_maps,
                               repeats=args.repeats, seed=args.seed, real=args.real, threads=args.threads))
    print(table)
