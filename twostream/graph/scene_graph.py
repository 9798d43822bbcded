"""The one scene-graph type that crosses every boundary: builder, cache, GNN input, JSON, visualizer.

A scene graph has one node per object (a present class, or a connected region of a class) and one edge per pair of
objects whose pixels touch. Undirected adjacencies are stored in both directions, as torch_geometric expects.

Conversions live here: torch_geometric ``Data`` (:meth:`SceneGraph.to_pyg` / :meth:`~SceneGraph.from_pyg`), networkx
(:meth:`~SceneGraph.to_networkx` / :meth:`~SceneGraph.from_networkx`), the JSON form that ``tools/infer.py`` writes
(:meth:`~SceneGraph.to_json` / :meth:`~SceneGraph.from_json`) and a dict of plain tensors for caches
(:meth:`~SceneGraph.to_tensors` / :meth:`~SceneGraph.from_tensors`). Every round trip is exact: float32 values come
back bit for bit.

The JSON form (``JSON_FORMAT``), readable on its own::

    {"format": "twostream-scene-graph-v1",
     "image_size": [512, 683],                      # (H, W) of the semantic map
     "class_table": "ade20k150",                    # a table name twostream ships, or the table itself (to_dict())
     "nodes": [{"id": 0, "label": 1, "name": "wall",
                "area": 0.2031,                     # fraction of the image
                "centroid": [0.4102, 0.2734],       # (x, y) / (W, H)
                "bbox": [0.0, 0.0, 0.9312, 0.6211]},  # (x0, y0, x1, y1) / (W, H), x1 and y1 exclusive
               ...],
     "edges": [{"source": 0, "target": 3, "boundary": 412.0}, ...]}   # each undirected edge once, source < target

Floats are written as the shortest decimal that reads back to the same float32. ``"features"`` (a list per node)
appears only when asked for; ``"confidence"`` (a number per node: the segmenter's mean max-softmax under the node)
whenever the graph carries it. Unknown top-level keys are ignored on reading, so a file may carry more (scenes, paths).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from twostream.data.classes import ClassTable, ade20k150

__all__ = ["CLASS_TABLES", "EDGE_ATTR_DIM", "JSON_FORMAT", "NODE_ATTR_DIM", "SceneGraph", "dumps_json",
           "resolve_class_table"]

NODE_ATTR_DIM = 7  # area, cx, cy, x0, y0, x1, y1
EDGE_ATTR_DIM = 4  # boundary / sqrt(H*W), dx, dy, distance
JSON_FORMAT = "twostream-scene-graph-v1"

# Class tables a graph file may refer to by name; any other table is embedded in the file (ClassTable.to_dict()).
CLASS_TABLES: dict[str, Callable[[], ClassTable]] = {"ade20k150": ade20k150}


def resolve_class_table(spec: str | dict, class_table: ClassTable | None = None,
                        what: str = "scene graph") -> ClassTable:
    """The class table a serialised graph refers to: ``spec`` is a name in :data:`CLASS_TABLES` or an embedded
    ``ClassTable.to_dict()``. A given ``class_table`` wins, but its name must match the file's."""
    name = spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, dict) else None
    if name is None:
        raise ValueError(f"{what}: class_table must be a table name or an embedded table, got {spec!r}")
    if class_table is not None:
        if class_table.name != name:
            raise ValueError(f"{what}: the graph uses class table '{name}' but '{class_table.name}' was given; "
                             "pass the table the graph was built with")
        return class_table
    if isinstance(spec, dict):
        return ClassTable.from_dict(spec)
    if name not in CLASS_TABLES:
        raise ValueError(f"{what}: unknown class table '{name}'; known: {', '.join(CLASS_TABLES)}. "
                         "Pass class_table=... (or save the graph with its table embedded)")
    return CLASS_TABLES[name]()


def _class_table_spec(table: ClassTable) -> str | dict:
    """The table's name when twostream ships an identical table under that name, else the whole table."""
    if table.name in CLASS_TABLES and CLASS_TABLES[table.name]() == table:
        return table.name
    return table.to_dict()


def _floats(values: Tensor) -> list:
    """float32 values as Python floats with the shortest decimal that reads back to the same float32."""
    array = values.detach().cpu().numpy().astype(np.float32)
    return [float(str(v)) for v in array.reshape(-1)] if array.ndim == 1 else [_floats(torch.from_numpy(r))
                                                                               for r in array]


@dataclass
class SceneGraph:
    """Objects of one image and which of them touch.

    Shapes (``N`` nodes, ``E`` directed edges; each undirected adjacency appears as ``(i, j)`` and ``(j, i)``):
        labels: ``(N,)`` int64, class ids in ``class_table``.
        area: ``(N,)`` float32, the node's pixel count as a fraction of ``H * W``.
        centroid: ``(N, 2)`` float32, mean of the node's pixel centres ``(x + 0.5, y + 0.5)``, divided by
            ``(W, H)``: in ``(0, 1)``.
        bbox: ``(N, 4)`` float32, ``(x0, y0, x1, y1)`` divided by ``(W, H)``; ``x1, y1`` exclusive.
        edge_index: ``(2, E)`` int64 in ``[0, N)``, no self loops, sorted by (source, target).
        boundary: ``(E,)`` float32, shared boundary length in pixels: the number of touching pixel pairs.
        image_size: ``(H, W)`` of the semantic map the graph was built from.
        features: ``(N, C)`` float32 features pooled under each node's mask, or ``None``.
        confidence: ``(N,)`` float32, the segmenter's mean confidence (max softmax probability) over the node's
            pixels, in ``[0, 1]``, when the graph comes from a prediction; ``None`` for graphs of annotations.
        class_table: the label set ``labels`` refer to.
    """

    labels: Tensor
    area: Tensor
    centroid: Tensor
    bbox: Tensor
    edge_index: Tensor
    boundary: Tensor
    image_size: tuple[int, int]
    class_table: ClassTable = field(repr=False)
    features: Tensor | None = None
    confidence: Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.labels.numel())

    @property
    def num_edges(self) -> int:
        """Directed edges (twice the number of touching pairs)."""
        return int(self.edge_index.shape[1])

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def validate(self) -> SceneGraph:
        """Check shapes, dtypes and index ranges once, at a boundary; raise ``ValueError`` naming the field."""
        n, e = self.num_nodes, self.num_edges
        expected = {
            "labels": (self.labels, (n,), torch.int64),
            "area": (self.area, (n,), torch.float32),
            "centroid": (self.centroid, (n, 2), torch.float32),
            "bbox": (self.bbox, (n, 4), torch.float32),
            "edge_index": (self.edge_index, (2, e), torch.int64),
            "boundary": (self.boundary, (e,), torch.float32),
        }
        for name, (tensor, shape, dtype) in expected.items():
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise ValueError(f"SceneGraph.{name}: expected {dtype} of shape {shape}, "
                                 f"got {tensor.dtype} of shape {tuple(tensor.shape)}")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_table)):
            raise ValueError(f"SceneGraph.labels: values must lie in [0, {len(self.class_table)}) "
                             f"({self.class_table.name}), got {self.labels.min().item()}..{self.labels.max().item()}")
        if e and (int(self.edge_index.min()) < 0 or int(self.edge_index.max()) >= n):
            raise ValueError(f"SceneGraph.edge_index: values must lie in [0, {n}), "
                             f"got {self.edge_index.min().item()}..{self.edge_index.max().item()}")
        if self.features is not None and self.features.shape[0] != n:
            raise ValueError(f"SceneGraph.features: expected {n} rows, got {self.features.shape[0]}")
        if self.confidence is not None and (tuple(self.confidence.shape) != (n,)
                                            or self.confidence.dtype != torch.float32):
            raise ValueError(f"SceneGraph.confidence: expected torch.float32 of shape ({n},), got "
                             f"{self.confidence.dtype} of shape {tuple(self.confidence.shape)}")
        return self

    def node_attr(self) -> Tensor:
        """``(N, 7)`` float32 geometric node attributes: area, cx, cy, x0, y0, x1, y1 (all in [0, 1])."""
        return torch.cat([self.area[:, None], self.centroid, self.bbox], dim=1)

    def edge_attr(self) -> Tensor:
        """``(E, 4)`` float32 edge attributes: boundary / sqrt(H*W), dx, dy, distance (centroid of target - source)."""
        h, w = self.image_size
        src, dst = self.edge_index
        offset = self.centroid[dst] - self.centroid[src]  # (E, 2)
        dist = offset.norm(dim=1, keepdim=True)  # (E, 1)
        boundary = (self.boundary / float(h * w) ** 0.5)[:, None]  # (E, 1)
        return torch.cat([boundary, offset, dist], dim=1)

    def to(self, device: torch.device | str) -> SceneGraph:
        moved = {k: getattr(self, k).to(device) for k in ("labels", "area", "centroid", "bbox", "edge_index",
                                                         "boundary")}
        features = self.features.to(device) if self.features is not None else None
        confidence = self.confidence.to(device) if self.confidence is not None else None
        return SceneGraph(**moved, image_size=self.image_size, class_table=self.class_table, features=features,
                          confidence=confidence)

    def equal(self, other: SceneGraph) -> bool:
        """Exactly the same graph: fields, image size, class table, features and confidence (bit for bit)."""
        fields = ("labels", "area", "centroid", "bbox", "edge_index", "boundary")
        same = (self.image_size == other.image_size and self.class_table == other.class_table
                and all(torch.equal(getattr(self, f).cpu(), getattr(other, f).cpu()) for f in fields))
        for name in ("features", "confidence"):
            a, b = getattr(self, name), getattr(other, name)
            if (a is None) != (b is None) or (a is not None and not torch.equal(a.cpu(), b.cpu())):
                return False
        return same

    def undirected_edges(self) -> tuple[Tensor, Tensor]:
        """Each touching pair once: ``(2, E/2)`` int64 with source < target, and its ``(E/2,)`` boundary."""
        keep = self.edge_index[0] < self.edge_index[1]
        return self.edge_index[:, keep], self.boundary[keep]

    @classmethod
    def _from_undirected(cls, pairs: Tensor, boundary: Tensor, **fields: Any) -> SceneGraph:
        """Both directions of ``pairs (2, M)``, sorted by (source, target) as the builder writes them."""
        n = int(fields["labels"].numel())
        edge_index = torch.cat([pairs, pairs.flip(0)], dim=1)
        boundary = torch.cat([boundary, boundary])
        order = torch.argsort(edge_index[0] * max(n, 1) + edge_index[1])
        return cls(edge_index=edge_index[:, order].contiguous(), boundary=boundary[order].contiguous(), **fields)

    # ----------------------------------------------------------------------------------------------------------------
    # torch_geometric
    # ----------------------------------------------------------------------------------------------------------------

    def to_pyg(self):
        """A ``torch_geometric.data.Data``: ``labels (N,)``, ``x (N, 7)`` node attributes, ``pos (N, 2)`` centroids,
        ``edge_index (2, E)``, ``edge_attr (E, 4)``, ``boundary (E,)`` in pixels, ``features (N, C)`` when
        pooled and ``confidence (N,)`` when the graph carries it."""
        from torch_geometric.data import Data

        data = Data(labels=self.labels, x=self.node_attr(), pos=self.centroid, edge_index=self.edge_index,
                    edge_attr=self.edge_attr(), boundary=self.boundary, num_nodes=self.num_nodes)
        if self.features is not None:
            data.features = self.features
        if self.confidence is not None:
            data.confidence = self.confidence
        return data

    @classmethod
    def from_pyg(cls, data, image_size: tuple[int, int], class_table: ClassTable) -> SceneGraph:
        """Back from :meth:`to_pyg` (``Data`` does not carry the image size or the class table: pass them)."""
        x = data.x
        if getattr(data, "boundary", None) is not None:
            boundary = data.boundary
        else:  # a Data made elsewhere: boundary from the normalised edge attribute (not bit-exact)
            boundary = data.edge_attr[:, 0] * float(image_size[0] * image_size[1]) ** 0.5
        return cls(labels=data.labels, area=x[:, 0].contiguous(), centroid=x[:, 1:3].contiguous(),
                   bbox=x[:, 3:7].contiguous(), edge_index=data.edge_index, boundary=boundary,
                   image_size=(int(image_size[0]), int(image_size[1])), class_table=class_table,
                   features=getattr(data, "features", None), confidence=getattr(data, "confidence", None)).validate()

    # ----------------------------------------------------------------------------------------------------------------
    # networkx
    # ----------------------------------------------------------------------------------------------------------------

    def to_networkx(self):
        """An undirected ``networkx.Graph``: nodes ``0..N-1`` with ``label``, ``name``, ``area``, ``centroid (x, y)``,
        ``bbox (x0, y0, x1, y1)`` (and ``features`` when pooled, ``confidence`` when known); edges with
        ``boundary``; graph attributes ``image_size`` and ``class_table`` (the table's name; the table itself is
        ``graph.graph["table"]``)."""
        import networkx as nx

        g = nx.Graph(image_size=tuple(self.image_size), class_table=self.class_table.name, table=self.class_table)
        labels = self.labels.tolist()
        area = self.area.tolist()
        centroid = self.centroid.tolist()
        bbox = self.bbox.tolist()
        features = self.features.detach().cpu().tolist() if self.features is not None else None
        confidence = self.confidence.detach().cpu().tolist() if self.confidence is not None else None
        for i, label in enumerate(labels):
            attrs = {"label": label, "name": self.class_table.short_name(label), "area": area[i],
                     "centroid": tuple(centroid[i]), "bbox": tuple(bbox[i])}
            if features is not None:
                attrs["features"] = tuple(features[i])
            if confidence is not None:
                attrs["confidence"] = confidence[i]
            g.add_node(i, **attrs)
        pairs, boundary = self.undirected_edges()
        g.add_edges_from((a, b, {"boundary": w}) for (a, b), w in zip(pairs.t().tolist(), boundary.tolist()))
        return g

    @classmethod
    def from_networkx(cls, g, class_table: ClassTable | None = None) -> SceneGraph:
        """Back from :meth:`to_networkx` (nodes must be ``0..N-1``); floats are cast to float32."""
        n = g.number_of_nodes()
        if sorted(g.nodes) != list(range(n)):
            raise ValueError("SceneGraph.from_networkx: nodes must be the integers 0..N-1")
        table = g.graph.get("table") if class_table is None else class_table
        table = table if isinstance(table, ClassTable) else resolve_class_table(g.graph["class_table"], None,
                                                                                "networkx graph")
        nodes = [g.nodes[i] for i in range(n)]
        edges = sorted((min(a, b), max(a, b), d["boundary"]) for a, b, d in g.edges(data=True))
        features = None
        if n and "features" in nodes[0]:
            features = torch.tensor([d["features"] for d in nodes], dtype=torch.float32)
        fields = _node_fields(nodes, (int(g.graph["image_size"][0]), int(g.graph["image_size"][1])), table,
                              features)
        pairs = torch.tensor([[a for a, _, _ in edges], [b for _, b, _ in edges]], dtype=torch.int64).reshape(2, -1)
        boundary = torch.tensor([w for _, _, w in edges], dtype=torch.float32)
        return cls._from_undirected(pairs, boundary, **fields).validate()

    # ----------------------------------------------------------------------------------------------------------------
    # JSON
    # ----------------------------------------------------------------------------------------------------------------

    def to_json(self, include_features: bool = False) -> dict:
        """The JSON form (module docstring) as a dict ready for ``json.dump``."""
        names = self.class_table.short_names
        labels = self.labels.tolist()
        area, centroid, bbox = _floats(self.area), _floats(self.centroid), _floats(self.bbox)
        features = _floats(self.features) if include_features and self.features is not None else None
        confidence = _floats(self.confidence) if self.confidence is not None else None
        nodes = []
        for i, label in enumerate(labels):
            node = {"id": i, "label": label, "name": names[label], "area": area[i], "centroid": centroid[i],
                    "bbox": bbox[i]}
            if features is not None:
                node["features"] = features[i]
            if confidence is not None:
                node["confidence"] = confidence[i]
            nodes.append(node)
        pairs, boundary = self.undirected_edges()
        edges = [{"source": a, "target": b, "boundary": w}
                 for (a, b), w in zip(pairs.t().tolist(), _floats(boundary))]
        return {"format": JSON_FORMAT, "image_size": list(self.image_size),
                "class_table": _class_table_spec(self.class_table), "nodes": nodes, "edges": edges}

    @classmethod
    def from_json(cls, d: dict, class_table: ClassTable | None = None) -> SceneGraph:
        """Back from :meth:`to_json`. The class table comes from the file (a known name, or embedded) unless
        ``class_table`` is given; node names are checked against it so that a wrong table is caught."""
        what = "scene-graph JSON"
        if not isinstance(d, dict) or not all(k in d for k in ("image_size", "class_table", "nodes", "edges")):
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{what}: expected an object with image_size, class_table, nodes, edges; got {got}")
        if d.get("format", JSON_FORMAT) != JSON_FORMAT:
            raise ValueError(f"{what}: format '{d['format']}' is not '{JSON_FORMAT}'")
        table = resolve_class_table(d["class_table"], class_table, what)
        nodes = sorted(d["nodes"], key=lambda node: node["id"])
        if [node["id"] for node in nodes] != list(range(len(nodes))):
            raise ValueError(f"{what}: node ids must be 0..N-1, each once")
        names = table.short_names
        for node in nodes:
            if not 0 <= node["label"] < len(table) or node.get("name", names[node["label"]]) != names[node["label"]]:
                raise ValueError(f"{what}: node {node['id']} has label {node['label']} named '{node.get('name')}', "
                                 f"which is not that class of the {table.name} table; wrong class table?")
        features = None
        if nodes and "features" in nodes[0]:
            features = torch.tensor([node["features"] for node in nodes], dtype=torch.float32)
        h, w = (int(v) for v in d["image_size"])
        fields = _node_fields(nodes, (h, w), table, features)
        edges = d["edges"]
        if any(not (0 <= e["source"] < len(nodes) and 0 <= e["target"] < len(nodes)) or e["source"] == e["target"]
               for e in edges):
            raise ValueError(f"{what}: edges must join two different node ids in 0..{len(nodes) - 1}")
        pairs = torch.tensor([[min(e["source"], e["target"]) for e in edges],
                              [max(e["source"], e["target"]) for e in edges]], dtype=torch.int64).reshape(2, -1)
        if torch.unique(pairs[0] * max(len(nodes), 1) + pairs[1]).numel() != pairs.shape[1]:
            raise ValueError(f"{what}: an undirected edge is listed twice; list each edge once")
        boundary = torch.tensor([e["boundary"] for e in edges], dtype=torch.float32)
        return cls._from_undirected(pairs, boundary, **fields).validate()

    from_dict = from_json  # the name twostream.viz looks for

    def save_json(self, path: str | Path, include_features: bool = False) -> Path:
        """Write :meth:`to_json` to ``path`` (UTF-8), one node or edge per line."""
        path = Path(path)
        path.write_text(dumps_json(self.to_json(include_features)), encoding="utf-8")
        return path

    @classmethod
    def load_json(cls, path: str | Path, class_table: ClassTable | None = None) -> SceneGraph:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")), class_table)

    # ----------------------------------------------------------------------------------------------------------------
    # Plain tensors (caches)
    # ----------------------------------------------------------------------------------------------------------------

    def to_tensors(self) -> dict[str, Tensor]:
        """The graph as a dict of plain CPU tensors (``torch.load(weights_only=True)`` reads it); no class table."""
        out = {k: getattr(self, k).detach().cpu() for k in ("labels", "area", "centroid", "bbox", "edge_index",
                                                             "boundary")}
        out["image_size"] = torch.tensor(self.image_size, dtype=torch.int64)
        if self.features is not None:
            out["features"] = self.features.detach().cpu()
        if self.confidence is not None:
            out["confidence"] = self.confidence.detach().cpu()
        return out

    @classmethod
    def from_tensors(cls, d: dict[str, Tensor], class_table: ClassTable) -> SceneGraph:
        h, w = (int(v) for v in d["image_size"])
        return cls(labels=d["labels"], area=d["area"], centroid=d["centroid"], bbox=d["bbox"],
                   edge_index=d["edge_index"], boundary=d["boundary"], image_size=(h, w), class_table=class_table,
                   features=d.get("features"), confidence=d.get("confidence"))


def dumps_json(d: dict) -> str:
    """A graph's JSON form as text that reads well: top-level keys first, then one node or edge per line."""
    head = {k: v for k, v in d.items() if k not in ("nodes", "edges")}
    lines = [json.dumps(head)[:-1] + ","]
    for key in ("nodes", "edges"):
        items = d.get(key, [])
        body = ",\n".join(f"  {json.dumps(item)}" for item in items)
        lines.append(f' "{key}": [\n{body}\n ]' if items else f' "{key}": []')
        lines[-1] += "," if key == "nodes" else "}"
    return "\n".join(lines) + "\n"


def _node_fields(nodes: list[dict], image_size: tuple[int, int], table: ClassTable,
                 features: Tensor | None) -> dict[str, Any]:
    """SceneGraph node fields from per-node dicts with ``label``, ``area``, ``centroid``, ``bbox`` (and optionally
    ``confidence``, present on every node or on none)."""
    n = len(nodes)
    confidence = None
    if n and "confidence" in nodes[0]:
        confidence = torch.tensor([node["confidence"] for node in nodes], dtype=torch.float32)
    return {
        "labels": torch.tensor([node["label"] for node in nodes], dtype=torch.int64),
        "area": torch.tensor([node["area"] for node in nodes], dtype=torch.float32),
        "centroid": torch.tensor([list(node["centroid"]) for node in nodes], dtype=torch.float32).reshape(n, 2),
        "bbox": torch.tensor([list(node["bbox"]) for node in nodes], dtype=torch.float32).reshape(n, 4),
        "image_size": image_size,
        "class_table": table,
        "features": features,
        "confidence": confidence,
    }
