"""Where the views to draw come from: a prediction file written by inference, or a dataset annotation.

A prediction file is JSON (``tools/infer.py`` writes it): the scene graph's own JSON form
(:meth:`SceneGraph.to_json <twostream.graph.scene_graph.SceneGraph.to_json>`: ``format``, ``image_size``,
``class_table``, ``nodes``, ``edges``), either at the top level or under ``"graph"``, plus optional keys::

    {...graph keys..., or "graph": {...},
     "scenes": [{"scene": "abbey", "prob": 0.83}, ...],     # scene top-k, best first (or [["abbey", 0.83], ...])
     "sem_seg": "ADE_val_00000001_sem.png",                 # the predicted label map, a path relative to the JSON
                                                            # file; without it, regions are not drawn
     "explanation": {...}}                                  # tools/infer.py --explain: drawn as importance (the
                                                            # CAM lives in <stem>_cam.png, not in the JSON)

With a ``region``-granularity graph the node of a pixel is not known from its label alone: the viewer then highlights
a node's bounding box instead of its region.

A ground-truth view is built from an ADE20K annotation PNG with :class:`~twostream.graph.builder.SceneGraphBuilder`,
which also returns the node-id map (so region granularity is drawn correctly too).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from twostream.data.io import DataError, load_label
from twostream.graph.scene_graph import SceneGraph
from twostream.viz.common import GraphView, as_label_map

__all__ = ["annotation_view", "prediction_view", "resize_labels"]


def resize_labels(label_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(h, w)`` label map to ``shape`` ``(H, W)`` (labels must not be blended)."""
    h, w = label_map.shape
    rows = np.minimum((np.arange(shape[0]) + 0.5) * h / shape[0], h - 1).astype(np.int64)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * w / shape[1], w - 1).astype(np.int64)
    return label_map[rows][:, cols]


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
    if not isinstance(record, dict) or not ("graph" in record or "nodes" in record):
        raise DataError(f"{path}: a prediction file is a JSON object holding a scene graph (its 'nodes' and "
                        "'edges', or a 'graph' object)")
    try:
        graph = SceneGraph.from_json(record.get("graph", record))
        topk = _scene_topk(record)
        explanation = None
        if record.get("explanation"):
            from twostream.explain.explanation import SceneExplanation

            explanation = SceneExplanation.from_json(record["explanation"], graph=graph)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{path}: malformed prediction: {e}") from None
    sem = None
    sem_path = record.get("sem_seg") or record.get("semantic_map")
    if sem_path:
        sem_path = path.parent / sem_path
        sem = load_label(sem_path).astype(np.int64)
        if sem.shape != tuple(image_shape):
            sem = resize_labels(sem, image_shape)
    return GraphView(name, graph, sem, scene_topk=topk, explanation=explanation)


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
