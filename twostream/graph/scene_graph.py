"""The one scene-graph type that crosses every boundary: builder, cache, GNN input, JSON, visualizer.

A scene graph has one node per object (a present class, or a connected region of a class) and one edge per pair of
objects whose pixels touch. Undirected adjacencies are stored in both directions, as torch_geometric expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from twostream.data.classes import ClassTable

__all__ = ["EDGE_ATTR_DIM", "NODE_ATTR_DIM", "SceneGraph"]

NODE_ATTR_DIM = 7  # area, cx, cy, x0, y0, x1, y1
EDGE_ATTR_DIM = 4  # boundary / sqrt(H*W), dx, dy, distance


@dataclass
class SceneGraph:
    """Objects of one image and which of them touch.

    Shapes (``N`` nodes, ``E`` directed edges; each undirected adjacency appears as ``(i, j)`` and ``(j, i)``):
        labels: ``(N,)`` int64, class ids in ``class_table``.
        area: ``(N,)`` float32, the node's pixel count as a fraction of ``H * W``.
        centroid: ``(N, 2)`` float32, ``(x, y)`` of the node's pixels' mean, divided by ``(W, H)``: in ``[0, 1]``.
        bbox: ``(N, 4)`` float32, ``(x0, y0, x1, y1)`` divided by ``(W, H)``; ``x1, y1`` exclusive.
        edge_index: ``(2, E)`` int64 in ``[0, N)``, no self loops, sorted by (source, target).
        boundary: ``(E,)`` float32, shared boundary length in pixels: the number of touching pixel pairs.
        image_size: ``(H, W)`` of the semantic map the graph was built from.
        features: ``(N, C)`` float32 features pooled under each node's mask, or ``None``.
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
        return SceneGraph(**moved, image_size=self.image_size, class_table=self.class_table, features=features)

    def to_pyg(self):
        """A ``torch_geometric.data.Data``: ``labels (N,)``, ``x (N, 7)`` node attributes, ``pos (N, 2)`` centroids,
        ``edge_index (2, E)``, ``edge_attr (E, 4)``, and ``features (N, C)`` when pooled."""
        from torch_geometric.data import Data

        data = Data(labels=self.labels, x=self.node_attr(), pos=self.centroid, edge_index=self.edge_index,
                    edge_attr=self.edge_attr(), num_nodes=self.num_nodes)
        if self.features is not None:
            data.features = self.features
        return data
