"""What the PNG panel and the HTML viewer share: input checks, the node-id map, the graph layout, one view of a graph.

A *view* is one scene graph drawn over the image it came from: the predicted graph, the ground-truth graph, or both
side by side for comparison (:class:`GraphView`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from twostream.graph.scene_graph import SceneGraph

if TYPE_CHECKING:
    from twostream.explain.explanation import SceneExplanation

__all__ = [
    "GraphView",
    "as_image",
    "as_label_map",
    "graph_layout",
    "hex_colour",
    "node_id_map",
    "short_label",
    "undirected_edges",
]

MAX_LABEL_CHARS = 16  # longer class names are cut with an ellipsis so labels stay short on the drawing


@dataclass
class GraphView:
    """One scene graph to draw over the image.

    Args:
        name: what the view shows, e.g. ``"prediction"`` or ``"ground truth"``.
        graph: the scene graph.
        sem_map: ``(H, W)`` int semantic map the graph was built from (at the image's size), or ``None`` when only the
            graph is known (then regions are not drawn: nodes sit at their centroids, the HTML highlights bboxes).
        node_map: ``(H, W)`` int, which node each pixel belongs to (``-1`` none); ``None`` = derived from ``sem_map``
            for ``class`` granularity (node ``i`` <-> ``graph.labels[i]``).
        scene_topk: the scene prediction, ``[(scene name, probability), ...]`` best first, or ``None``.
        explanation: why the model scored a scene so (:class:`~twostream.explain.SceneExplanation` of this graph,
            its CAM at the image's size), or ``None``; drawn as node and edge importance, a CAM and a streams bar.
    """

    name: str
    graph: SceneGraph
    sem_map: np.ndarray | None = None
    node_map: np.ndarray | None = None
    scene_topk: Sequence[tuple[str, float]] | None = None
    explanation: SceneExplanation | None = None

    def resolved_node_map(self) -> np.ndarray | None:
        """``(H, W)`` int64 node ids (``-1`` = no node), or ``None`` when unknown: no semantic map, or a graph with
        several nodes of one class (region granularity) and no node map."""
        if self.node_map is not None:
            return _to_numpy(self.node_map).astype(np.int64, copy=False)
        if self.sem_map is None or _has_repeated_labels(self.graph):
            return None
        return node_id_map(self.sem_map, self.graph)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _has_repeated_labels(graph: SceneGraph) -> bool:
    labels = _to_numpy(graph.labels)
    return len(np.unique(labels)) != len(labels)


def as_image(image) -> np.ndarray:
    """Check and convert an image to ``(H, W, 3)`` uint8 RGB (grey ``(H, W)`` and RGBA ``(H, W, 4)`` are converted)."""
    img = _to_numpy(image)
    if img.dtype != np.uint8:
        raise TypeError(f"image: expected uint8 (H, W, 3) RGB, got dtype {img.dtype}; "
                        "convert with (img * 255).round().astype(np.uint8) for floats in [0, 1]")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"image: expected shape (H, W, 3), got {img.shape}")
    return np.ascontiguousarray(img[:, :, :3])


def as_label_map(label_map, shape: tuple[int, int] | None = None, what: str = "sem_map") -> np.ndarray:
    """Check and convert an integer label map to ``(H, W)`` int64; ``shape`` (H, W) must match when given."""
    m = _to_numpy(label_map)
    if m.ndim != 2 or not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"{what}: expected an integer (H, W) map, got dtype {m.dtype} of shape {m.shape}")
    if shape is not None and m.shape != tuple(shape):
        raise ValueError(f"{what}: shape {m.shape} differs from the image's {tuple(shape)}; "
                         "resize it with nearest-neighbour interpolation first")
    return m.astype(np.int64, copy=False)


def node_id_map(sem_map: np.ndarray, graph: SceneGraph) -> np.ndarray:
    """``(H, W)`` int64: which node each pixel belongs to (``-1`` = none), for a ``class``-granularity graph.

    Node ``i`` owns every pixel labelled ``graph.labels[i]``. A graph with several nodes of one class (``region``
    granularity) cannot be resolved this way: pass the builder's node map instead.
    """
    sem = as_label_map(sem_map)
    labels = _to_numpy(graph.labels).astype(np.int64)
    if _has_repeated_labels(graph):
        raise ValueError("node_id_map: the graph has several nodes of one class (region granularity); "
                         "pass node_map= from SceneGraphBuilder instead of deriving it from the semantic map")
    size = max(int(sem.max(initial=0)), int(labels.max(initial=0))) + 1
    lut = np.full(size, -1, dtype=np.int64)
    lut[labels] = np.arange(len(labels))
    return np.where(sem >= 0, lut[np.clip(sem, 0, size - 1)], -1)


def undirected_edges(graph: SceneGraph) -> tuple[np.ndarray, np.ndarray]:
    """Each touching pair once: ``(P, 2)`` int64 node pairs ``i < j`` and ``(P,)`` float32 boundary lengths (px)."""
    ei = _to_numpy(graph.edge_index).astype(np.int64).reshape(2, -1)
    boundary = _to_numpy(graph.boundary).astype(np.float32).reshape(-1)
    keep = ei[0] < ei[1]
    return ei[:, keep].T.copy(), boundary[keep]


def graph_layout(graph: SceneGraph, seed: int = 0) -> np.ndarray:
    """``(N, 2)`` float positions in ``[0, 1]`` (x right, y down) for drawing the graph on its own.

    A networkx spring layout started from the node centroids, so the drawing keeps the scene's rough arrangement
    (sky on top, floor below) while touching objects pull together, weighted by their shared boundary.
    """
    import networkx as nx

    n = graph.num_nodes
    if n == 0:
        return np.zeros((0, 2))
    centroid = _to_numpy(graph.centroid).astype(np.float64)
    if n == 1:
        return np.array([[0.5, 0.5]])
    pairs, boundary = undirected_edges(graph)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    scale = float(boundary.max(initial=1.0)) or 1.0
    g.add_weighted_edges_from((int(i), int(j), 0.2 + float(b) / scale) for (i, j), b in zip(pairs, boundary))
    # y up for networkx is irrelevant: we keep image coordinates (y down) throughout
    init = {i: tuple(centroid[i]) for i in range(n)}
    pos = nx.spring_layout(g, pos=init, k=1.2 / np.sqrt(n), iterations=80, seed=seed, weight="weight")
    xy = np.array([pos[i] for i in range(n)], dtype=np.float64)  # (N, 2)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi - lo > 1e-9, hi - lo, 1.0)
    return 0.08 + 0.84 * (xy - lo) / span


def hex_colour(rgb) -> str:
    """``(3,)`` uint8 RGB -> ``"#rrggbb"``."""
    r, g, b = (int(c) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def short_label(class_table, label: int) -> str:
    """The class's first name, cut to ``MAX_LABEL_CHARS`` characters."""
    name = class_table.short_name(int(label)) if 0 <= int(label) < len(class_table) else f"#{int(label)}"
    return name if len(name) <= MAX_LABEL_CHARS else name[: MAX_LABEL_CHARS - 1] + "…"
