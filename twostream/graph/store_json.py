"""A graph store from a folder of JSON files: the predictions ``tools/infer.py --out`` writes
(:meth:`Prediction.to_json` plus extra keys: the scene graph under ``"graph"``) or scene-graph JSONs
(:meth:`SceneGraph.to_json`), with scene labels from a two-column file (``<stem> <scene>``, the format of
``sceneCategories.txt``). Graphs without pixels: a user can train a graph-only classifier on graphs alone.

Each file's stem is the item's name. A file that is neither (not JSON, no graph in it, a graph that does not
validate, another class table than the first graph's) is named in the log, skipped and counted; every graph of a
store shares one class table. The store records no builder settings (the files do not say how their graphs were
built), so readers do not check them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from twostream.graph.scene_graph import SceneGraph
from twostream.graph.store import GraphStore, StoreError

log = logging.getLogger(__name__)

__all__ = ["build_store_from_json", "graph_from_json_file"]


def graph_from_json_file(path: Path) -> SceneGraph:
    """The scene graph in ``path``: a prediction JSON (its ``"graph"``) or a scene-graph JSON.

    Raises:
        ValueError: not JSON, no scene graph in it, or a graph that does not validate.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a JSON file ({type(e).__name__})") from None
    if isinstance(data, dict) and isinstance(data.get("graph"), dict):
        data = data["graph"]  # a prediction: image_size, scenes, graph, (image, sem_seg, ...)
    elif isinstance(data, dict) and "graph" in data:
        raise ValueError("a prediction without a scene graph (an image-only model's output)")
    return SceneGraph.from_json(data)


class _JsonGraphs(Dataset):
    """Files -> ``("ok", name, tensors)``, or ``("bad", path, reason)`` for a file that is not a scene graph or whose
    class table is not ``expected`` (a store holds one label set), read in workers: a table of thousands of names is
    compared there, not sent back with every graph."""

    def __init__(self, files: list[Path], expected: dict, expected_name: str) -> None:
        self.files, self.expected, self.expected_name = files, expected, expected_name

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple:
        path = self.files[i]
        try:
            graph = graph_from_json_file(path)
        except (ValueError, KeyError, TypeError) as e:
            return "bad", str(path), str(e).split("\n")[0]
        if graph.class_table.to_dict() != self.expected:
            return "bad", str(path), (f"class table '{graph.class_table.name}' is not the first graph's "
                                      f"'{self.expected_name}'; a store holds one label set")
        return "ok", path.stem, graph.to_tensors()


def _list_json(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise StoreError(f"{folder}: folder of JSON files not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".json" and not p.name.startswith("."))
    if not files:
        raise StoreError(f"{folder}: no .json files (predictions from tools/infer.py --out, or scene-graph JSONs)")
    return files


def build_store_from_json(folder: str | Path, store_dir: str | Path, *, scenes: Mapping[str, str] | None = None,
                          num_workers: int = 0, chunk_size: int | None = None, progress: bool = True,
                          rank: int = 0, world_size: int = 1) -> GraphStore | None:
    """Build the graph store of every ``*.json`` in ``folder`` into ``store_dir``; return it (``None`` on ranks other
    than 0 of a ``torchrun`` build).

    Args:
        scenes: item name (file stem) -> scene name; graphs without one are stored without a scene (graphs-only
            training leaves them out).
        num_workers: processes parsing the files.
        rank, world_size: this process among those building the store together (:func:`run_build`).

    Raises:
        StoreError: the folder has no JSON files, or none of them holds a scene graph.
    """
    from twostream.graph.store_build import DEFAULT_CHUNK_SIZE, plan_build, run_build

    files = _list_json(Path(folder))
    table = None
    for path in files:  # the class table every graph must share: the first readable graph's
        try:
            table = graph_from_json_file(path).class_table
            break
        except (ValueError, KeyError, TypeError):
            continue
    if table is None:
        raise StoreError(f"{folder}: none of its {len(files)} JSON files holds a scene graph")
    expected = table.to_dict()
    bad: list[tuple[str, str]] = []

    def plan_fn(write: bool):
        return plan_build(store_dir, source="json", settings=None, class_table=table, segmenter=None,
                          names=[p.stem for p in files], num_items=len(files),
                          chunk_size=chunk_size or DEFAULT_CHUNK_SIZE, write=write)

    def results(indices: list[int]) -> Iterator[tuple[int, tuple | None]]:
        loader = DataLoader(_JsonGraphs(files, expected, table.name), batch_size=None, sampler=indices,
                            num_workers=num_workers)
        for index, out in zip(indices, loader):
            if out[0] == "bad":
                bad.append((out[1], out[2]))
                yield index, None
            else:
                yield index, (out[1], out[2])

    store = run_build(plan_fn, results, scene_of=scenes.get if scenes is not None else None, progress=progress,
                      desc="graphs (json)", rank=rank, world_size=world_size)
    for path, reason in bad[:10]:
        log.warning("%s: not a scene graph, skipped (%s)", path, reason)
    if len(bad) > 10:
        log.warning("... and %d more files skipped", len(bad) - 10)
    if bad:
        log.warning("%s: %d of %d files skipped as not scene graphs", folder, len(bad), len(files))
    if store is not None and scenes is not None:
        missing = int((store.scene_index < 0).sum())
        if missing:
            log.warning("%s: %d graph(s) have no line in the scene file", store_dir, missing)
    return store
