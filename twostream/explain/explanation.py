"""One image's explanation: which nodes, edges, pixels and streams drove one scene's score, and its JSON form.

The JSON form (what ``tools/infer.py --explain`` writes under ``"explanation"`` and ``tools/eval.py --explain`` into
``explanations.jsonl``)::

    {"scene": "dining_room",                  # the explained scene (the predicted one unless a scene was named)
     "prob": 0.93,                            # its probability for this image
     "method": "nodes, edges: ...; occlusion: ...; image: ...; streams: ...",
     "nodes": [{"id": 4, "name": "chair", "score": 0.41, "occlusion": 0.38, "confidence": 0.87}, ...],
     "edges": [{"source": 4, "target": 6, "score": 0.52, "occlusion": 0.47}, ...],
     "streams": {"image": 0.02, "graph": 0.61},
     "extras": {...},                         # fusion-specific: stream weights, gate, attention over the nodes
     "notes": ["..."]}                        # what was not explained and why (image-only model, no edges, ...)

``nodes`` and ``edges`` are sorted by ``score``, highest first (ties by id). Ids are the graph's node ids, so a node
is ``graph.to_json()["nodes"][id]``; each undirected edge appears once with ``source < target``. ``score`` is the
gradient attribution to the scene's logit (for an edge: the sum over its two directions); ``occlusion`` the exact
change in the scene's probability when that node or edge is deleted (positive: it supported the scene);
``confidence`` the segmenter's mean confidence under the node (only for graphs from predictions). ``streams`` is the
change in the scene's probability when that stream's embedding is replaced by its training-set mean (``null``: the
model has no such stream). Floats are written as the shortest decimal that reads back to the same float32, so
:meth:`SceneExplanation.from_json` of :meth:`~SceneExplanation.to_json` gives back the same values bit for bit.

The class-activation map is not in the JSON: ``tools/infer.py`` writes it as ``<stem>_cam.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LOW_CONFIDENCE", "SceneExplanation"]

# In the "because" line a node whose segmenter confidence is below this is marked "(confidence 0.41)": a guess.
LOW_CONFIDENCE = 0.6


def _f32(values: np.ndarray | None) -> list[float] | None:
    """float32 values as the shortest decimals that read back to the same float32 (``None`` stays ``None``)."""
    if values is None:
        return None
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32).reshape(-1)]


def _array(values: list | None, n: int, what: str) -> np.ndarray | None:
    if values is None:
        return None
    out = np.asarray(values, dtype=np.float32).reshape(-1)
    if out.shape[0] != n:
        raise ValueError(f"SceneExplanation.{what}: expected {n} values, got {out.shape[0]}")
    return out


@dataclass
class SceneExplanation:
    """Why the model gave ``scene`` the probability ``prob`` for one image.

    Shapes (``N`` graph nodes, ``M`` undirected edges; arrays in node-id / edge order of the graph):
        node_names: ``N`` class names.
        node_scores: ``(N,)`` float32 attribution of each node to the scene's logit, or ``None`` (no graph stream).
        node_occlusion: ``(N,)`` float32 ``p - p_without_node``, or ``None``.
        node_confidence: ``(N,)`` float32 segmenter confidence, or ``None`` (graphs from annotations).
        edges: ``(M, 2)`` int64 node pairs ``source < target``.
        edge_scores: ``(M,)`` float32 attribution (both directions summed), or ``None``.
        edge_occlusion: ``(M,)`` float32 ``p - p_without_edge``, or ``None``.
        cam: ``(H, W)`` float32 in ``[0, 1]``, the class-activation map at the image's size, or ``None``.
    """

    scene: str
    scene_index: int
    prob: float
    method: str
    node_names: list[str] = field(default_factory=list)
    node_scores: np.ndarray | None = None
    node_occlusion: np.ndarray | None = None
    node_confidence: np.ndarray | None = None
    edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    edge_scores: np.ndarray | None = None
    edge_occlusion: np.ndarray | None = None
    streams: dict[str, float | None] = field(default_factory=lambda: {"image": None, "graph": None})
    cam: np.ndarray | None = field(default=None, repr=False)
    extras: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def num_nodes(self) -> int:
        return len(self.node_names)

    # ----------------------------------------------------------------------------------------------------- ranking

    def node_order(self) -> np.ndarray:
        """Node ids by score, highest first (ties by id); by occlusion when there are no scores."""
        key = self.node_scores if self.node_scores is not None else self.node_occlusion
        if key is None:
            return np.arange(self.num_nodes)
        return np.lexsort((np.arange(len(key)), -np.asarray(key, dtype=np.float64)))

    def edge_order(self) -> np.ndarray:
        """Edge positions by score, highest first (ties by position); by occlusion when there are no scores."""
        key = self.edge_scores if self.edge_scores is not None else self.edge_occlusion
        if key is None:
            return np.arange(len(self.edges))
        return np.lexsort((np.arange(len(key)), -np.asarray(key, dtype=np.float64)))

    def top_edge(self) -> tuple[int, int] | None:
        """The highest-scoring undirected edge ``(source, target)``, or ``None`` without edges or scores."""
        if len(self.edges) == 0 or (self.edge_scores is None and self.edge_occlusion is None):
            return None
        a, b = self.edges[self.edge_order()[0]]
        return int(a), int(b)

    def node_label(self, i: int) -> str:
        """``"bed"``, or ``"bed (confidence 0.41)"`` when the segmenter was unsure of it (:data:`LOW_CONFIDENCE`)."""
        name = self.node_names[i]
        if self.node_confidence is not None and float(self.node_confidence[i]) < LOW_CONFIDENCE:
            return f"{name} (confidence {float(self.node_confidence[i]):.2f})"
        return name

    def because(self, max_objects: int = 3, max_pairs: int = 2) -> str:
        """One line for a person: the top objects and adjacencies with their share of the positive evidence, and
        the streams. An object's share is its score over the sum of the positive node scores, a contact's over the
        sum of the positive edge scores (nodes and edges are attributed along separate paths, so their scores are
        not on one scale)."""
        parts = []
        if self.node_scores is not None and self.num_nodes:
            total = float(np.clip(self.node_scores, 0, None).sum())
            top = [int(i) for i in self.node_order()[:max_objects] if self.node_scores[i] > 0]
            if top and total > 0:
                parts.append(", ".join(f"{self.node_label(i)} {self.node_scores[i] / total:.0%}" for i in top))
        if self.edge_scores is not None and len(self.edges):
            total = float(np.clip(self.edge_scores, 0, None).sum())
            top = [int(k) for k in self.edge_order()[:max_pairs] if self.edge_scores[k] > 0]
            if top and total > 0:
                pairs = ", ".join(f"{self.node_names[self.edges[k, 0]]}–{self.node_names[self.edges[k, 1]]} "
                                  f"{self.edge_scores[k] / total:.0%}" for k in top)
                parts.append(f"touching {pairs}")
        streams = [f"{name} {value:+.2f}" for name, value in self.streams.items() if value is not None]
        if streams:
            parts.append("streams Δp " + ", ".join(streams))
        if not parts:
            parts.append("; ".join(self.notes) or "no evidence found")
        return f"{self.scene} {self.prob:.0%} because " + "; ".join(parts)

    # -------------------------------------------------------------------------------------------------------- JSON

    def to_json(self) -> dict:
        """The JSON form (module docstring) as a dict ready for ``json.dump``."""
        scores, occlusion = _f32(self.node_scores), _f32(self.node_occlusion)
        confidence = _f32(self.node_confidence)
        nodes = []
        if scores is not None or occlusion is not None:
            for i in self.node_order().tolist():
                node: dict[str, Any] = {"id": i, "name": self.node_names[i]}
                if scores is not None:
                    node["score"] = scores[i]
                if occlusion is not None:
                    node["occlusion"] = occlusion[i]
                if confidence is not None:
                    node["confidence"] = confidence[i]
                nodes.append(node)
        edges = []
        e_scores, e_occlusion = _f32(self.edge_scores), _f32(self.edge_occlusion)
        if e_scores is not None or e_occlusion is not None:
            for k in self.edge_order().tolist():
                edge: dict[str, Any] = {"source": int(self.edges[k, 0]), "target": int(self.edges[k, 1])}
                if e_scores is not None:
                    edge["score"] = e_scores[k]
                if e_occlusion is not None:
                    edge["occlusion"] = e_occlusion[k]
                edges.append(edge)
        streams = {k: (None if v is None else _f32(np.array([v]))[0]) for k, v in self.streams.items()}
        return {"scene": self.scene, "scene_index": int(self.scene_index), "prob": _f32(np.array([self.prob]))[0],
                "method": self.method, "nodes": nodes, "edges": edges, "streams": streams, "extras": self.extras,
                "notes": list(self.notes)}

    @classmethod
    def from_json(cls, d: dict, node_names: list[str] | None = None, graph: Any = None) -> SceneExplanation:
        """Back from :meth:`to_json` (no CAM). ``node_names`` (the graph's, in id order; or ``graph``, the
        :class:`~twostream.graph.scene_graph.SceneGraph` explained, whose class names they are) are needed only when
        the JSON lists no nodes but the graph has some."""
        if node_names is None and graph is not None:
            node_names = [graph.class_table.short_name(int(c)) for c in graph.labels]
        if not isinstance(d, dict) or not all(k in d for k in ("scene", "method", "nodes", "edges", "streams")):
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"explanation JSON: expected an object with scene, method, nodes, edges, streams; "
                             f"got {got}")
        nodes = sorted(d["nodes"], key=lambda node: node["id"])
        if [node["id"] for node in nodes] != list(range(len(nodes))):
            raise ValueError("explanation JSON: node ids must be 0..N-1, each once")
        names = [node["name"] for node in nodes] if nodes else list(node_names or [])

        def column(items: list[dict], key: str) -> list | None:
            return [item[key] for item in items] if items and key in items[0] else None

        edges = sorted(d["edges"], key=lambda e: (e["source"], e["target"]))
        pairs = np.array([[e["source"], e["target"]] for e in edges], dtype=np.int64).reshape(-1, 2)
        n, m = len(names), len(edges)
        return cls(scene=d["scene"], scene_index=int(d.get("scene_index", -1)), prob=float(d.get("prob", float("nan"))),
                   method=d["method"], node_names=names,
                   node_scores=_array(column(nodes, "score"), n, "node_scores"),
                   node_occlusion=_array(column(nodes, "occlusion"), n, "node_occlusion"),
                   node_confidence=_array(column(nodes, "confidence"), n, "node_confidence"),
                   edges=pairs, edge_scores=_array(column(edges, "score"), m, "edge_scores"),
                   edge_occlusion=_array(column(edges, "occlusion"), m, "edge_occlusion"),
                   streams={k: (None if v is None else float(v)) for k, v in d["streams"].items()},
                   extras=dict(d.get("extras", {})), notes=list(d.get("notes", [])))

    def equal(self, other: SceneExplanation) -> bool:
        """The same explanation, arrays bit for bit (the CAM is not compared: it is not part of the JSON)."""
        def same(a, b) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return np.array_equal(np.asarray(a), np.asarray(b))

        arrays = ("node_scores", "node_occlusion", "node_confidence", "edges", "edge_scores", "edge_occlusion")
        return (self.scene == other.scene and self.scene_index == other.scene_index
                and np.float32(self.prob) == np.float32(other.prob) and self.method == other.method
                and self.node_names == other.node_names and all(same(getattr(self, a), getattr(other, a))
                                                                for a in arrays)
                and {k: None if v is None else np.float32(v) for k, v in self.streams.items()}
                == {k: None if v is None else np.float32(v) for k, v in other.streams.items()}
                and self.extras == other.extras and self.notes == other.notes)
