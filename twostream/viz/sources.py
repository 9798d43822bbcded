"""Where the views to draw come from: a prediction file written by inference, or a dataset annotation.

A prediction file is JSON (``tools/infer.py`` writes it)::

    {"image": "ADE_val_00000001.jpg",                       # optional, for the title
     "scenes": [{"scene": "abbey", "prob": 0.83}, ...],     # scene top-k, best first (or [["abbey", 0.83], ...])
     "graph": {...SceneGraph fields...},                    # labels, area, centroid, bbox, edge_index, boundary,
                                                            # image_size, class_table (ClassTable.to_dict())
     "sem_seg": "ADE_val_00000001_sem.png"}                 # optional: the predicted label map (a path relative
                                                            # to the JSON file); without it regions are not drawn

With a ``region``-granularity graph the node of a pixel is not known from its label alone: the viewer then highlights
a node's bounding box instead of its region.

A ground-truth view is built from an ADE20K annotation PNG with :class:`~twostream.graph.builder.SceneGraphBuilder`,
which also returns the node-id map (so region granularity is drawn correctly too).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from twostream.data.classes import ClassTable, ade20k150
from twostream.data.io import DataError, load_label
from twostream.graph.scene_graph import SceneGraph
from twostream.viz.common import GraphView, as_label_map

__all__ = ["annotation_view", "graph_from_dict", "prediction_view", "resize_labels"]

_GRAPH_FIELDS = {"labels": torch.int64, "area": torch.float32, "centroid": torch.float32, "bbox": torch.float32,
                 "edge_index": torch.int64, "boundary": torch.float32}
_GRAPH_SHAPES = {"centroid": (-1, 2), "bbox": (-1, 4), "edge_index": (2, -1)}


def resize_labels(label_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(h, w)`` label map to ``shape`` ``(H, W)`` (labels must not be blended)."""
    h, w = label_map.shape
    rows = np.minimum((np.arange(shape[0]) + 0.5) * h / shape[0], h - 1).astype(np.int64)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * w / shape[1], w - 1).astype(np.int64)
    return label_map[rows][:, cols]


def graph_from_dict(d: dict, class_table: ClassTable | None = None, what: str = "graph") -> SceneGraph:
    """A :class:`SceneGraph` from its JSON form (field names as in the dataclass); validated.

    Uses ``SceneGraph.from_dict`` when the graph module provides it, so the two never disagree.
    """
    if hasattr(SceneGraph, "from_dict"):
        return SceneGraph.from_dict(d).validate()
    if not isinstance(d, dict):
        raise ValueError(f"{what}: expected a JSON object with the scene-graph fields, got {type(d).__name__}")
    missing = [k for k in (*_GRAPH_FIELDS, "image_size") if k not in d]
    if missing:
        raise ValueError(f"{what}: missing field(s) {', '.join(missing)}")
    table = ClassTable.from_dict(d["class_table"]) if "class_table" in d else (class_table or ade20k150())
    fields = {}
    for name, dtype in _GRAPH_FIELDS.items():
        t = torch.as_tensor(d[name], dtype=dtype)
        fields[name] = t.reshape(_GRAPH_SHAPES[name]) if name in _GRAPH_SHAPES else t.reshape(-1)
    features = torch.as_tensor(d["features"], dtype=torch.float32) if d.get("features") is not None else None
    h, w = (int(s) for s in d["image_size"])
    return SceneGraph(**fields, image_size=(h, w), class_table=table, features=features).validate()


def _scene_topk(record: dict) -> list[tuple[str, float]] | None:
    raw = record.get("scenes", record.get("scene_topk", record.get("topk")))
    if not raw:
        return None
    out = []
    for item in raw:
        if isinstance(item, dict):
            out.append((str(item.get("scene", item.get("name"))), float(item.get("prob", item.get("score", 0.0)))))
        else:
            out.append((str(item[0]), float(item[1])))
    return out


def prediction_view(path: str | Path, image_shape: tuple[int, int], name: str = "prediction") -> GraphView:
    """The view of a prediction JSON file (format in this module's docstring) over an image of ``image_shape``.

    Raises:
        DataError: (a ``ValueError``) one line naming the file: missing, unreadable JSON, malformed fields, an
            unreadable label map.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prediction file not found")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a prediction JSON file ({e})") from None
    if not isinstance(record, dict) or "graph" not in record:
        raise DataError(f"{path}: a prediction file is a JSON object with a 'graph' field")
    try:
        graph = graph_from_dict(record["graph"], ClassTable.from_dict(record["class_table"])
                                if "class_table" in record else None)
        topk = _scene_topk(record)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{path}: malformed prediction: {e}") from None
    sem = None
    sem_path = record.get("sem_seg") or record.get("semantic_map")
    if sem_path:
        sem_path = path.parent / sem_path
        sem = load_label(sem_path).astype(np.int64)
        if sem.shape != tuple(image_shape):
            sem = resize_labels(sem, image_shape)
    return GraphView(name, graph, sem, scene_topk=topk)


def annotation_view(path: str | Path, image_shape: tuple[int, int], builder=None,
                    name: str = "ground truth") -> GraphView:
    """The ground-truth view of an annotation PNG (``(H, W)`` labels, 0 = other) over an image of ``image_shape``.

    Args:
        builder: a :class:`~twostream.graph.builder.SceneGraphBuilder`; default: class granularity, ADE20K-150.

    Raises:
        DataError: (a ``ValueError``) one line naming the file: missing, unreadable, or not the image's size.
    """
    from twostream.graph.builder import SceneGraphBuilder

    path = Path(path)
    sem = load_label(path).astype(np.int64)
    if sem.shape != tuple(image_shape):
        raise DataError(f"{path}: annotation is {sem.shape[1]}x{sem.shape[0]} but the image is "
                         f"{image_shape[1]}x{image_shape[0]}; give the annotation of this image")
    builder = builder or SceneGraphBuilder()
    graph, node_map = builder(sem, return_node_map=True)
    return GraphView(name, graph, as_label_map(sem), node_map=node_map.cpu().numpy())
