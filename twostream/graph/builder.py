"""Semantic map -> scene graph, vectorised: numpy on the CPU, torch on a GPU; one map or a batch at a time.

The builder never loops over pixels or nodes. It works on *runs* (:mod:`twostream.graph.runs`: maximal horizontal
stretches of one label in one row; a 512x512 ADE20K-like map has ~10k of them against 262k pixels):

1. Runs come from one comparison of each row with itself shifted by one pixel, and one ``flatnonzero``.
2. Nodes group runs: by label (``class``), or by connected region (``region``: a vectorised union-find over the
   runs of consecutive rows that touch, hooking to the smaller root and jumping pointers, a few rounds).
   Per-node geometry (area, centroid, bbox) is segment sums / minima / maxima over the runs: exact integers.
3. Edges count touching pixel pairs. Horizontal pairs are consecutive runs of a row. Other offsets compare the map
   with itself shifted (one flat comparison and ``flatnonzero`` per offset); 8-connected diagonals of a label map are
   found beside run starts and vertical changes without another pass; for regions the pairs across rows are the
   union-find's run contacts with their pixel-pair counts. Pairs are encoded as one integer ``(image, a, b)`` and
   counted with ``bincount`` (``unique`` when the code space is large).
4. Optional node features are pooled from a feature map per run (:mod:`twostream.graph.pooling`), and so is the
   optional per-pixel confidence of the segmenter (each node's mean max-softmax probability).

A batch ``(B, H, W)`` is processed as one array: node and run indices are global over the batch and split per image
at the end, so a batch on a GPU costs a handful of kernel launches rather than ``B`` times as many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from twostream.data.classes import IGNORE_INDEX, ClassTable, ade20k150
from twostream.graph._ops import NumpyOps, TorchOps
from twostream.graph.pooling import pool_run_features
from twostream.graph.runs import (
    Runs,
    connected_runs,
    diagonal_label_pairs,
    find_runs,
    offset_positions,
    run_contacts,
)
from twostream.graph.scene_graph import SceneGraph

__all__ = ["BUILDER_VERSION", "GRANULARITIES", "SceneGraphBuilder", "labels_and_confidence", "neighbourhood_offsets",
           "pixel_confidence",
           "shaping_settings"]

# Bump when a change to this file changes the graphs it builds: caches keyed on `settings()` are then rebuilt.
BUILDER_VERSION = 1
GRANULARITIES = ("class", "region")

# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def labels_and_confidence(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, K, H, W)`` class logits -> ``(B, H, W)`` int64 labels (the argmax) and ``(B, H, W)`` float32 max softmax
    probability, from one max over the classes and a logsumexp, not a softmax:
    ``max_k p_k = exp(max_k l_k - logsumexp_k l_k)``. (The logsumexp makes one ``(B, K, H, W)`` float32 temporary;
    half-precision logits are also copied to float32 once for it.)"""
    top, labels = logits.detach().max(dim=1)
    return labels, torch.exp(top.float() - torch.logsumexp(logits.detach().float(), dim=1))


def pixel_confidence(logits: Tensor) -> Tensor:
    """``(B, K, H, W)`` class logits -> ``(B, H, W)`` float32 max softmax probability (:func:`labels_and_confidence`
    without the labels)."""
    return labels_and_confidence(logits)[1]


def neighbourhood_offsets(connectivity: int, radius: int = 1) -> list[tuple[int, int]]:
    """The half neighbourhood ``(dy, dx)`` (``dy > 0``, or ``dy == 0`` and ``dx > 0``) within ``radius`` pixels.

    ``connectivity=4`` uses the city-block distance ``|dy| + |dx| <= radius``, ``8`` the chessboard distance
    ``max(|dy|, |dx|) <= radius``. Each unordered pixel pair within the distance appears exactly once across the
    offsets. ``radius=1`` gives ``[(0, 1), (1, 0)]`` for 4 and adds ``(1, -1), (1, 1)`` for 8.
    """
    offsets = []
    for dy in range(radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx <= 0:
                continue
            dist = abs(dy) + abs(dx) if connectivity == 4 else max(abs(dy), abs(dx))
            if dist <= radius:
                offsets.append((dy, dx))
    return offsets


@dataclass
class _Built:
    """Graphs of a whole batch, concatenated (``N`` nodes, ``E`` directed edges over the batch)."""

    node_image: Any  # (N,) image of each node, non-decreasing
    label: Any  # (N,)
    area: Any  # (N,) pixels
    sum_x2: Any  # (N,) 2 * sum of the pixel-centre x coordinates (x + 0.5): an integer
    sum_y2: Any  # (N,)
    box: tuple  # x0, y0, x1, y1 (N,) each, in pixels, x1 / y1 exclusive
    edge_image: Any  # (E,)
    src: Any  # (E,) local node index in its image
    dst: Any  # (E,)
    boundary: Any  # (E,) touching pixel pairs
    run_node: Any  # (R,) global node of each run, -1 if none
    node_first: Any  # (B,) global index of each image's first node
    runs: Runs


def _as_label_array(sem_maps: Any, what: str) -> np.ndarray | Tensor:
    """Check the type and dtype of a label map; return it (numpy array or tensor) unchanged otherwise."""
    if isinstance(sem_maps, Tensor):
        if sem_maps.dtype == torch.bool or sem_maps.is_floating_point() or sem_maps.is_complex():
            raise TypeError(f"{what}: expected an integer label map, got a {sem_maps.dtype} tensor; pass class ids "
                            "(e.g. logits.argmax(dim=1) for (B, K, H, W) logits)")
        return sem_maps
    if isinstance(sem_maps, np.ndarray):
        if not np.issubdtype(sem_maps.dtype, np.integer):
            raise TypeError(f"{what}: expected an integer label map, got a {sem_maps.dtype} array; pass class ids "
                            "(e.g. logits.argmax(axis=1) for (B, K, H, W) logits)")
        return sem_maps
    raise TypeError(f"{what}: expected a numpy array or a torch tensor, got {type(sem_maps).__name__}")


# --------------------------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------------------------


def shaping_settings(source: Any) -> dict:
    """The settings that shape a graph, read from a :class:`SceneGraphBuilder` or a ``cfg.graph``
    (:class:`~twostream.config.GraphConfig`), which name them alike. ``min_area`` only acts on regions."""
    return {
        "builder_version": BUILDER_VERSION,
        "granularity": source.granularity,
        "connectivity": source.connectivity,
        "tolerance": source.tolerance,
        "min_area": source.min_area if source.granularity == "region" else 0,
        "ignore_label0": source.ignore_label0,
    }


class SceneGraphBuilder:
    """Build :class:`SceneGraph` s from semantic label maps.

    **Nodes.** ``granularity="class"``: one node per class present in the map, ordered by class id.
    ``granularity="region"``: one node per connected region of one class (pixels joined through ``connectivity``
    neighbours of the same label) with at least ``min_area`` pixels, ordered by class id and then by the raster
    position of the region's first pixel. Pixels of a region smaller than ``min_area`` belong to no node: they make
    no node and no edges, and they do not connect their neighbours to each other (they are treated like ignored
    pixels, not merged into a neighbour). ``min_area`` applies to regions only. Label 0 makes no node when
    ``ignore_label0`` is set, and pixels equal to ``ignore_index`` (255, padding) never do; such pixels are "void".

    **Edges.** Two nodes are joined when one of their pixels ``p`` and one of their pixels ``q`` are neighbours:
    ``q - p`` lies within distance ``tolerance + 1``, in the city-block metric (``|dy| + |dx|``) for
    ``connectivity=4`` and the chessboard metric (``max(|dy|, |dx|)``) for ``8``. With ``tolerance=0`` that is plain
    4- or 8-adjacency (diagonal neighbours touch only under 8); with ``tolerance=k`` nodes separated by a gap of at
    most ``k`` pixels (of any label, void included) touch too. The **boundary** of an edge is the number of such
    unordered pixel pairs ``{p, q}`` with ``p`` in one node and ``q`` in the other: under 4-connectivity and
    tolerance 0, the number of unit-length pixel sides the two nodes share; under 8-connectivity, that plus the
    number of diagonal pixel pairs. Void pixels belong to no node, so they never make or lengthen an edge.
    Two regions of the same class can touch only through the tolerance (otherwise they would be one region).

    **Geometry.** ``area`` is the pixel count divided by ``H * W``; ``centroid`` the mean of the pixel centres
    ``(x + 0.5, y + 0.5)`` divided by ``(W, H)``; ``bbox`` ``(x0, y0, x1, y1)`` in pixels divided by ``(W, H)``,
    ``x1, y1`` exclusive.

    **Features.** ``build_batch(maps, features)`` pools a feature map under each node: the features are resized to
    the map's size by nearest neighbour (pixel ``(y, x)`` reads cell ``(y * h // H, x * w // W)``, which is what
    ``F.interpolate(mode="nearest")`` does when ``H / h`` and ``W / w`` are integers) and averaged over the node's
    pixels. The result is differentiable with respect to ``features`` and costs ``O(B C h w + R C)`` (``R`` runs),
    never ``O(B C H W)``.

    **Confidence.** ``build_batch(maps, confidence=conf)`` with the segmenter's per-pixel confidence ``(B, H, W)``
    (its max softmax probability; :func:`pixel_confidence` computes it from logits) gives each graph
    ``confidence (N,)``: the mean over each node's pixels, pooled from the same runs (no per-node loop), so a reader
    sees when a node was itself a guess.

    Args:
        granularity: ``"class"`` or ``"region"``.
        connectivity: 4 or 8; used for touching and, for regions, for connectedness.
        tolerance: extra gap in pixels across which nodes still touch (0 = strict adjacency).
        min_area: regions with fewer pixels make no node (``"region"`` only).
        ignore_label0: label 0 (``other`` / unlabelled in ADE20K) makes no node.
        class_table: the label set of the maps; labels must lie in ``[0, len(class_table))`` or equal
            ``ignore_index``.
        ignore_index: label of void pixels (padding) or ``None``; may not be a class of ``class_table``.
        backend: ``"auto"`` (numpy for numpy arrays and CPU tensors, torch on the tensor's device otherwise),
            ``"numpy"`` or ``"torch"``. Both give identical graphs.

    Shapes:
        input: ``sem_map (H, W)`` or ``sem_maps (B, H, W)``, any integer dtype, numpy or torch on any device;
            ``features (B, C, h, w)`` float tensor.
        output: per image a :class:`SceneGraph` on the input's device (numpy input: CPU) with
            ``labels (N,)`` int64, ``area (N,)``, ``centroid (N, 2)``, ``bbox (N, 4)`` float32,
            ``edge_index (2, E)`` int64 (both directions, sorted), ``boundary (E,)`` float32,
            ``features (N, C)`` float32 or ``None``, ``confidence (N,)`` float32 or ``None``; optionally the
            node-id map ``(H, W)`` / ``(B, H, W)`` int64
            (the node index of each pixel, ``-1`` for void pixels and dropped regions).

    Example::

        >>> builder = SceneGraphBuilder(granularity="class", connectivity=4)
        >>> graph = builder(np.array([[1, 1, 2], [1, 3, 2]]))
        >>> graph.labels.tolist(), graph.edge_index.tolist(), graph.boundary.tolist()
        ([1, 2, 3], [[0, 0, 1, 1, 2, 2], [1, 2, 0, 2, 0, 1]], [1.0, 2.0, 1.0, 1.0, 2.0, 1.0])
    """

    def __init__(
        self,
        *,
        granularity: Literal["class", "region"] = "class",
        connectivity: Literal[4, 8] = 4,
        tolerance: int = 0,
        min_area: int = 16,
        ignore_label0: bool = True,
        class_table: ClassTable | None = None,
        ignore_index: int | None = IGNORE_INDEX,
        backend: Literal["auto", "numpy", "torch"] = "auto",
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"SceneGraphBuilder: unknown granularity '{granularity}'; "
                             f"choose one of: {', '.join(GRANULARITIES)}")
        if connectivity not in (4, 8):
            raise ValueError(f"SceneGraphBuilder: connectivity must be 4 or 8, got {connectivity!r}")
        if not isinstance(tolerance, int) or tolerance < 0:
            raise ValueError(f"SceneGraphBuilder: tolerance must be a non-negative integer (pixels), got {tolerance!r}")
        if not isinstance(min_area, int) or min_area < 0:
            raise ValueError(f"SceneGraphBuilder: min_area must be a non-negative integer (pixels), got {min_area!r}")
        if backend not in ("auto", "numpy", "torch"):
            raise ValueError(f"SceneGraphBuilder: backend must be auto, numpy or torch, got {backend!r}")
        self.class_table = class_table if class_table is not None else ade20k150()
        num_classes = len(self.class_table)
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"SceneGraphBuilder: ignore_index {ignore_index} is a class of the "
                             f"{self.class_table.name} table ({num_classes} classes); pass ignore_index=None "
                             "or a label outside the table")
        self.granularity = granularity
        self.connectivity = connectivity
        self.tolerance = tolerance
        self.min_area = min_area
        self.ignore_label0 = ignore_label0
        self.ignore_index = ignore_index
        self.backend = backend
        # Label values a map may hold: the classes, and the ignore label. Void labels make no node.
        self._num_values = max(num_classes, (ignore_index + 1) if ignore_index is not None and ignore_index >= 0 else 0)
        is_node = np.ones(self._num_values, dtype=bool)
        is_node[num_classes:] = False
        if ignore_label0:
            is_node[0] = False
        self._is_node = is_node
        self._edge_offsets = neighbourhood_offsets(connectivity, tolerance + 1)

    @classmethod
    def from_config(cls, cfg: Any, class_table: ClassTable | None = None) -> SceneGraphBuilder:
        """The builder ``cfg.graph`` (a :class:`~twostream.config.GraphConfig`) describes, for ``class_table``.

        Label sets of more than 255 classes (full ADE20K) have 255 as a class, not the transforms' padding: no label
        is void then (the config refuses padding for them)."""
        large = class_table is not None and len(class_table) > IGNORE_INDEX
        return cls(granularity=cfg.granularity, connectivity=cfg.connectivity, tolerance=cfg.tolerance,
                   min_area=cfg.min_area, ignore_label0=cfg.ignore_label0, class_table=class_table,
                   ignore_index=None if large else IGNORE_INDEX)

    def settings(self) -> dict:
        """Everything that shapes the graphs (JSON-ready). Caches key on it: equal settings, equal graphs."""
        return {
            **shaping_settings(self),
            "ignore_index": self.ignore_index,
            "class_table": self.class_table.name,
            "num_classes": len(self.class_table),
        }

    def __repr__(self) -> str:
        region = f", min_area={self.min_area}" if self.granularity == "region" else ""
        return (f"{type(self).__name__}(granularity={self.granularity!r}, connectivity={self.connectivity}, "
                f"tolerance={self.tolerance}{region}, ignore_label0={self.ignore_label0}, "
                f"class_table={self.class_table.name!r})")

    # ----------------------------------------------------------------------------------------------------------------
    # Public entry points
    # ----------------------------------------------------------------------------------------------------------------

    def __call__(self, sem_map: np.ndarray | Tensor, features: Tensor | None = None,
                 return_node_map: bool = False, confidence: np.ndarray | Tensor | None = None
                 ) -> SceneGraph | tuple[SceneGraph, Tensor]:
        """One ``(H, W)`` map -> a :class:`SceneGraph` (and its ``(H, W)`` node-id map when asked).

        ``features``: optional ``(C, h, w)`` or ``(1, C, h, w)`` feature map to pool under each node.
        ``confidence``: optional ``(H, W)`` per-pixel confidence to average under each node.
        """
        sem_map = _as_label_array(sem_map, "SceneGraphBuilder: sem_map")
        if sem_map.ndim != 2:
            raise ValueError(f"SceneGraphBuilder: sem_map must be (H, W), got shape {tuple(sem_map.shape)}; "
                             "use build_batch for (B, H, W)")
        if features is not None and features.ndim == 3:
            features = features[None]
        if confidence is not None:
            confidence = confidence[None]
        out = self.build_batch(sem_map[None], features=features, return_node_map=return_node_map,
                               confidence=confidence)
        if return_node_map:
            graphs, node_maps = out
            return graphs[0], node_maps[0]
        return out[0]

    def build_batch(self, sem_maps: np.ndarray | Tensor, features: Tensor | None = None,
                    return_node_map: bool = False, confidence: np.ndarray | Tensor | None = None
                    ) -> list[SceneGraph] | tuple[list[SceneGraph], Tensor]:
        """``(B, H, W)`` maps -> ``B`` :class:`SceneGraph` s, built together (identical to one-by-one builds).

        Args:
            sem_maps: ``(B, H, W)`` integer labels, numpy or torch (CPU or GPU).
            features: optional ``(B, C, h, w)`` float tensor; each graph gets ``features (N, C)`` float32 pooled
                under its nodes' pixels (differentiable).
            return_node_map: also return the ``(B, H, W)`` int64 node-id map (``-1``: no node).
            confidence: optional ``(B, H, W)`` float per-pixel confidence (numpy or torch); each graph gets
                ``confidence (N,)`` float32, its mean over each node's pixels (no gradient).
        """
        sem_maps = _as_label_array(sem_maps, "SceneGraphBuilder.build_batch: sem_maps")
        if sem_maps.ndim != 3:
            raise ValueError(f"SceneGraphBuilder.build_batch: sem_maps must be (B, H, W), got shape "
                             f"{tuple(sem_maps.shape)}; call the builder itself for one (H, W) map")
        batch, height, width = (int(s) for s in sem_maps.shape)
        if height == 0 or width == 0:
            raise ValueError(f"SceneGraphBuilder: empty label map of shape {tuple(sem_maps.shape)}")
        if features is not None and (not isinstance(features, Tensor) or features.ndim != 4
                                     or features.shape[0] != batch):
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"SceneGraphBuilder: features must be a (B, C, h, w) tensor with B={batch}, got {shape}")
        if confidence is not None:
            confidence = torch.as_tensor(confidence)
            if tuple(confidence.shape) != (batch, height, width) or not confidence.is_floating_point():
                raise ValueError(f"SceneGraphBuilder: confidence must be a float (B, H, W) map of the label maps' "
                                 f"shape {(batch, height, width)}, got {confidence.dtype} of shape "
                                 f"{tuple(confidence.shape)}")
        device = sem_maps.device if isinstance(sem_maps, Tensor) else torch.device("cpu")
        use_torch = self.backend == "torch" or (self.backend == "auto" and device.type != "cpu")
        if use_torch:
            xp: Any = TorchOps
            lab = self._prepare_torch(torch.as_tensor(sem_maps))
        else:
            xp = NumpyOps
            array = sem_maps.detach().cpu().numpy() if isinstance(sem_maps, Tensor) else sem_maps
            lab = self._prepare_numpy(array)
        if batch == 0:
            graphs: list[SceneGraph] = []
            node_maps = torch.empty((0, height, width), dtype=torch.int64, device=device)
            return (graphs, node_maps) if return_node_map else graphs
        built = self._build(lab, xp)
        graphs = self._split(built, xp, batch, (height, width), device)
        if features is not None:
            pooled = pool_run_features(built.runs, built.run_node, built.area, xp, features, (height, width))
            for graph, f in zip(graphs, pooled.split([g.num_nodes for g in graphs])):
                graph.features = f
        if confidence is not None:
            with torch.no_grad():
                mean = pool_run_features(built.runs, built.run_node, built.area, xp,
                                         confidence.detach().to(device)[:, None], (height, width))[:, 0]  # (N,)
            for graph, c in zip(graphs, mean.clamp(0, 1).split([g.num_nodes for g in graphs])):
                graph.confidence = c.contiguous()
        if not return_node_map:
            return graphs
        # Node ids local to each image (index into that image's graph), -1 for void pixels.
        local = xp.where_node(built.run_node, built.run_node - built.node_first[built.runs.image])
        node_map = xp.to_torch(xp.repeat(local, built.runs.length)).view(batch, height, width)
        return graphs, node_map.to(device)

    # ----------------------------------------------------------------------------------------------------------------
    # Input checks and dtype narrowing
    # ----------------------------------------------------------------------------------------------------------------

    def _label_error(self, bad_max: int, bad_min: int) -> ValueError:
        allowed = f"[0, {len(self.class_table)})"
        if self.ignore_index is not None:
            allowed += f" or the ignore label {self.ignore_index}"
        return ValueError(f"SceneGraphBuilder: label map holds labels {bad_min}..{bad_max} outside the "
                          f"{self.class_table.name} class table ({len(self.class_table)} classes); labels must lie in "
                          f"{allowed}. Use the class table of the model or dataset that produced the map")

    def _narrow_dtype(self) -> tuple[np.dtype, int]:
        """The smallest dtype holding every valid label (uint8 for ADE20K): comparisons then move 1 byte a pixel."""
        if self._num_values <= 256:
            return np.dtype(np.uint8), 255
        if self._num_values <= 32768:
            return np.dtype(np.int16), 32767
        return np.dtype(np.int32), 2**31 - 1

    def _prepare_numpy(self, array: np.ndarray) -> np.ndarray:
        dtype, top = self._narrow_dtype()
        if array.dtype != dtype:
            # A narrowing cast would wrap out-of-range labels onto valid ones: range-check first (the exact check of
            # every label against the table happens on the runs, which are far fewer than pixels).
            if array.size:
                if array.dtype.kind == "i" and array.dtype.itemsize >= 2:
                    # one pass: viewed as unsigned, a negative label becomes at least 2**15 > top
                    out_of_range = int(array.view(array.dtype.str.replace("i", "u")).max()) > top
                else:
                    out_of_range = int(array.min()) < 0 or int(array.max()) > top
                if out_of_range:
                    bad = array[(array < 0) | (array > top)]
                    raise self._label_error(int(bad.max()), int(bad.min()))
            array = array.astype(dtype)
        return np.ascontiguousarray(array)

    def _prepare_torch(self, tensor: Tensor) -> Tensor:
        dtype, top = self._narrow_dtype()
        torch_dtype = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int16): torch.int16,
                       np.dtype(np.int32): torch.int32}[dtype]
        if tensor.dtype != torch_dtype:
            if tensor.numel():
                lo, hi = (int(v) for v in torch.aminmax(tensor.long() if tensor.dtype == torch.uint8 else tensor))
                if lo < 0 or hi > top:
                    raise self._label_error(hi, lo)
            tensor = tensor.to(torch_dtype)
        return tensor.contiguous()

    # ----------------------------------------------------------------------------------------------------------------
    # The vectorised core (one code path for numpy and torch)
    # ----------------------------------------------------------------------------------------------------------------

    def _check_labels(self, runs: Runs, xp: Any) -> None:
        """Every label must be a class of the table or the ignore label (checked on runs: one entry per run)."""
        if int(runs.label.max()) < len(self.class_table) and int(runs.label.min()) >= 0:
            return
        bad = (runs.label >= len(self.class_table)) | (runs.label < 0)
        if self.ignore_index is not None:
            bad &= runs.label != self.ignore_index
        if bool(bad.any()):
            values = runs.label[bad]
            raise self._label_error(int(values.max()), int(values.min()))

    def _build(self, lab: Any, xp: Any) -> _Built:
        batch, height, width = lab.shape
        start_mask = xp.row_starts(lab)
        runs = find_runs(lab, start_mask, xp)
        self._check_labels(runs, xp)
        is_node = xp.asarray(self._is_node, runs.label)
        nv = self._num_values

        # Nodes: group the runs (class: by (image, label); region: by connected region), keep the node groups.
        if self.granularity == "class":
            group = runs.label if batch == 1 else runs.image * nv + runs.label
            num_groups = batch * nv
            group_area = xp.segment_sum(group, runs.length, num_groups)
            keep = (group_area > 0) & (is_node if batch == 1 else is_node[xp.arange(num_groups, group) % nv])
            node_groups = xp.flatnonzero(keep)  # ascending: by image, then label
            node_image, node_label = node_groups // nv, node_groups % nv
        else:
            contacts = run_contacts(start_mask, self.connectivity, xp) if height > 1 else None
            group = connected_runs(runs, contacts, xp)
            num_groups = int(group.shape[0])
            group_area = xp.segment_sum(group, runs.length, num_groups)  # non-zero only at roots
            keep = (group_area >= max(self.min_area, 1)) & is_node[runs.label]
            roots = xp.flatnonzero(keep)
            order = xp.argsort((runs.image[roots] * nv + runs.label[roots]) * num_groups + roots)
            node_groups = roots[order]  # by image, then label, then raster position of the first pixel
            node_image, node_label = runs.image[node_groups], runs.label[node_groups]
        num_nodes = int(node_groups.shape[0])
        group_node = xp.full(num_groups, -1, group)
        group_node[node_groups] = xp.arange(num_nodes, group)
        run_node = group_node[group]  # (R,)
        per_image = xp.count(node_image, batch)
        first = xp.cat([xp.full(1, 0, per_image), per_image.cumsum(0)[:-1]])  # (B,) first node of each image

        # Geometry: segment sums / minima / maxima over the runs of each group (integers, exact), then the nodes'.
        length, x0, y = runs.length, runs.x0, runs.y
        area = group_area[node_groups]
        sum_x2 = xp.segment_sum(group, length * (2 * x0 + length), num_groups)[node_groups]  # 2 * sum of (x + 0.5)
        sum_y2 = xp.segment_sum(group, length * (2 * y + 1), num_groups)[node_groups]
        box = tuple(v[node_groups] for v in (
            xp.segment_min(group, x0, num_groups, fill=width), xp.segment_min(group, y, num_groups, fill=height),
            xp.segment_max(group, x0 + length, num_groups, fill=0), xp.segment_max(group, y + 1, num_groups, fill=0)))

        # Edges: count touching pixel pairs per pair of nodes, over the half neighbourhood.
        if self.granularity == "class":
            na, nb, weight = self._class_pairs(lab, runs, start_mask, group_area, group_node, xp)
        else:
            na, nb, weight = self._region_pairs(lab, runs, run_node, contacts, xp)
        src, dst, e_img, boundary = self._edges(na, nb, weight, node_image, first, per_image, batch, xp)
        return _Built(node_image=node_image, label=node_label, area=area, sum_x2=sum_x2, sum_y2=sum_y2, box=box,
                      edge_image=e_img, src=src, dst=dst, boundary=boundary, run_node=run_node, node_first=first,
                      runs=runs)

    def _class_pairs(self, lab: Any, runs: Runs, start_mask: Any, group_area: Any, group_node: Any,
                     xp: Any) -> tuple[Any, Any, Any]:
        """Class granularity: touching pixel pairs counted per (image, label, label) code, then mapped to nodes.

        Labels are renumbered among those present in the batch (``P`` of them, ~20 for an ADE20K image) so that
        the codes span ``B * P * P`` values: a small ``bincount``.
        """
        batch, height, width = lab.shape
        nv = self._num_values
        present = xp.flatnonzero(group_area.reshape(batch, nv).sum(0) > 0)  # (P,) labels with pixels
        rank = xp.full(nv, 0, present)
        rank[present] = xp.arange(int(present.shape[0]), present)
        num_present = int(present.shape[0])
        flat = lab.reshape(-1)
        diagonal_shortcut = self.connectivity == 8 and self.tolerance == 0
        pairs = []  # (a labels, b labels, image or None, pixel pairs each or None for 1)
        for dy, dx in self._edge_offsets:
            if (dy, dx) == (0, 1):  # horizontal neighbours that differ are exactly consecutive runs of one row
                same_row = runs.x0[1:] != 0
                pairs.append((runs.label[:-1][same_row], runs.label[1:][same_row],
                              runs.image[1:][same_row] if batch > 1 else None, None))
            elif not (diagonal_shortcut and dy == 1 and dx != 0):
                p = offset_positions(lab, xp, dy, dx)
                image = p // (height * width) if batch > 1 else None
                pair = (xp.i64(flat[p]), xp.i64(flat[p + dy * width + dx]), image, None)
                if (dy, dx) == (1, 0) and diagonal_shortcut:
                    diagonal, extra = diagonal_label_pairs(lab, runs, p, start_mask, xp)
                    pair = (*pair[:3], extra + 1)  # a vertical change also stands for 0-2 diagonal pairs
                    pairs.extend((*d, None) for d in diagonal)
                pairs.append(pair)
        codes = rank[xp.cat([a for a, _, _, _ in pairs])] * num_present + rank[xp.cat([b for _, b, _, _ in pairs])]
        if batch > 1:
            codes = codes + xp.cat([img for _, _, img, _ in pairs]) * (num_present * num_present)
        weight = None
        if any(w is not None for _, _, _, w in pairs):
            weight = xp.cat([w if w is not None else xp.full(int(a.shape[0]), 1, a) for a, _, _, w in pairs])
        ucode, ucount = self._count_codes(codes, weight, batch * num_present * num_present, xp)
        img = ucode // (num_present * num_present)
        a, b = present[(ucode // num_present) % num_present], present[ucode % num_present]
        na, nb = group_node[img * nv + a], group_node[img * nv + b]  # -1 for void labels
        keep = (na >= 0) & (nb >= 0) & (a != b)
        return na[keep], nb[keep], ucount[keep]

    def _region_pairs(self, lab: Any, runs: Runs, run_node: Any, contacts: tuple[Any, Any, Any] | None,
                      xp: Any) -> tuple[Any, Any, Any]:
        """Region granularity: node pairs of touching pixels with their number of pixel pairs."""
        batch, height, width = lab.shape
        same_row = runs.x0[1:] != 0  # a row's node changes only where its label does: between consecutive runs
        nas, nbs = [run_node[:-1][same_row]], [run_node[1:][same_row]]
        weights = [xp.full(int(nas[0].shape[0]), 1, runs.start)]
        if self.tolerance == 0:
            # Pairs across rows are the run contacts of different labels, with their pixel-pair counts. (Touching
            # pixels of different regions always differ in label: same-label neighbours are one region.)
            if contacts is not None:
                above, below, pairs = contacts
                differ = runs.label[above] != runs.label[below]
                nas.append(run_node[above[differ]])
                nbs.append(run_node[below[differ]])
                weights.append(pairs[differ])
        else:
            # Two regions of one class can touch within the tolerance: compare node ids, not labels.
            node_map = xp.repeat(run_node, runs.length).reshape(batch, height, width)
            flat = node_map.reshape(-1)
            for dy, dx in self._edge_offsets[1:]:  # [0] is (0, 1), done above
                p = offset_positions(node_map, xp, dy, dx)
                nas.append(flat[p])
                nbs.append(flat[p + dy * width + dx])
                weights.append(xp.full(int(p.shape[0]), 1, p))
        na, nb, weight = xp.cat(nas), xp.cat(nbs), xp.cat(weights)
        both = (na >= 0) & (nb >= 0)
        return na[both], nb[both], weight[both]

    def _count_codes(self, code: Any, weight: Any, space: int, xp: Any) -> tuple[Any, Any]:
        """Distinct codes (sorted) and their counts (or summed ``weight``): ``bincount`` over a small code space,
        a sort (``unique``) over a large one."""
        if space <= max(1 << 17, 4 * int(code.shape[0])):
            counts = xp.count(code, space) if weight is None else xp.segment_sum(code, weight, space)
            ucode = xp.flatnonzero(counts > 0)  # nonzero of a bool mask: several times faster than of integers
            return ucode, counts[ucode]
        if weight is None:
            return xp.unique_counts(code)
        ucode, inverse = xp.unique_inverse(code)
        return ucode, xp.segment_sum(inverse, weight, int(ucode.shape[0]))

    def _edges(self, na: Any, nb: Any, weight: Any, node_image: Any, first: Any, per_image: Any, batch: int,
               xp: Any) -> tuple[Any, Any, Any, Any]:
        """Directed edges ``(src, dst)`` local to their image, sorted by (image, src, dst), and their boundary."""
        nmax = max(int(per_image.max()), 1)
        img = node_image[na]
        la, lb = na - first[img], nb - first[img]
        code = (img * nmax + xp.minimum(la, lb)) * nmax + xp.maximum(la, lb)
        ucode, ucount = self._count_codes(code, weight, batch * nmax * nmax, xp)
        e_img = ucode // (nmax * nmax)
        rest = ucode - e_img * (nmax * nmax)
        lo, hi = rest // nmax, rest % nmax
        # Both directions, sorted by (image, source, target).
        src, dst, e_img, ucount = xp.cat([lo, hi]), xp.cat([hi, lo]), xp.cat([e_img, e_img]), xp.cat([ucount, ucount])
        order = xp.argsort((e_img * nmax + src) * nmax + dst)
        return src[order], dst[order], e_img[order], ucount[order]

    def _split(self, built: _Built, xp: Any, batch: int, image_size: tuple[int, int],
               device: torch.device) -> list[SceneGraph]:
        """Per-image :class:`SceneGraph` s from the concatenated batch arrays (geometry computed in float64)."""
        height, width = image_size
        area_px = xp.f64(built.area)
        half = 0.5 / area_px  # 1 / (2 * area): every node has at least one pixel
        x0, y0, x1, y1 = (xp.f64(v) for v in built.box)
        fields = {
            "labels": built.label,
            "area": xp.f32(area_px / (height * width)),
            "centroid": xp.f32(xp.stack1([xp.f64(built.sum_x2) * half / width, xp.f64(built.sum_y2) * half / height])),
            "bbox": xp.f32(xp.stack1([x0 / width, y0 / height, x1 / width, y1 / height])),
            "edge_index": xp.cat([built.src, built.dst]).reshape(2, -1),
            "boundary": xp.f32(built.boundary),
        }
        tensors = {k: xp.to_torch(v).to(device) for k, v in fields.items()}
        tensors["labels"] = tensors["labels"].long()
        tensors["edge_index"] = tensors["edge_index"].long()
        if batch == 1:
            return [SceneGraph(**tensors, image_size=(height, width), class_table=self.class_table)]
        node_counts = xp.tolist(xp.count(built.node_image, batch))
        edge_counts = xp.tolist(xp.count(built.edge_image, batch))
        parts = {k: v.split(edge_counts if k == "boundary" else node_counts) for k, v in tensors.items()
                 if k != "edge_index"}
        parts["edge_index"] = tensors["edge_index"].split(edge_counts, dim=1)
        return [SceneGraph(**{k: v[i] for k, v in parts.items()}, image_size=(height, width),
                           class_table=self.class_table) for i in range(batch)]
