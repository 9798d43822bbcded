"""How good is a predicted scene graph? Node and edge precision / recall / F1 against the ground-truth graph.

The reference is the graph the same builder makes from the ground-truth label map. Nodes are matched one to one:

- ``class`` granularity: by class (a class present in both graphs is a true positive);
- ``region`` granularity: by mask, a predicted and a ground-truth region of the *same class* match when their
  mask IoU is at least ``iou_threshold`` (0.5); pairs are taken greedily by decreasing IoU, each node at most once.
  Above 0.5 the match is unique anyway (two disjoint regions cannot both overlap a third by more than half), as in
  panoptic quality. Region matching needs the node-id maps of both graphs (``SceneGraphBuilder(...,
  return_node_map=True)``).

A predicted edge is a true positive when both its nodes are matched and the matched ground-truth nodes share an
edge. Precision = TP / predicted, recall = TP / ground truth, F1 their harmonic mean; for one image with nothing
predicted and nothing to find, all three are 1, and with only one side empty the undefined ratio is 0.

:class:`GraphMetrics` accumulates over a dataset: **micro** scores pool the counts of all images, **macro** scores
average the per-image scores. Its state is a handful of sums (``GraphMetrics.state``), so ranks reduce it exactly:
:class:`~twostream.engine.evaluators.scene_graphs.SceneGraphEvaluator` sums it over them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from twostream.graph.scene_graph import SceneGraph

__all__ = ["GraphMatch", "GraphMetrics", "compare_label_maps", "match_graphs", "prf"]


def prf(tp: float, num_pred: float, num_gt: float) -> tuple[float, float, float]:
    """Precision, recall and F1 of ``tp`` true positives among ``num_pred`` predictions and ``num_gt`` references."""
    if num_pred == 0 and num_gt == 0:
        return 1.0, 1.0, 1.0
    precision = tp / num_pred if num_pred else 0.0
    recall = tp / num_gt if num_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


@dataclass(frozen=True)
class GraphMatch:
    """Counts of one image's comparison; ``node_pairs (M, 2)`` lists the matched (predicted, ground-truth) nodes."""

    node_tp: int
    node_pred: int
    node_gt: int
    edge_tp: int
    edge_pred: int
    edge_gt: int
    node_pairs: np.ndarray

    def scores(self) -> dict[str, float]:
        """``node_precision``, ``node_recall``, ``node_f1``, ``edge_precision``, ``edge_recall``, ``edge_f1``."""
        out = {}
        for kind in ("node", "edge"):
            p, r, f = prf(getattr(self, f"{kind}_tp"), getattr(self, f"{kind}_pred"), getattr(self, f"{kind}_gt"))
            out.update({f"{kind}_precision": p, f"{kind}_recall": r, f"{kind}_f1": f})
        return out


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _pair_codes(graph: SceneGraph, node_to_key: np.ndarray, width: int) -> np.ndarray:
    """Undirected edges of ``graph`` as sorted ``low * width + high`` codes of their nodes' keys (-1 keys dropped)."""
    pairs, _ = graph.undirected_edges()
    a, b = node_to_key[_np(pairs[0])], node_to_key[_np(pairs[1])]
    keep = (a >= 0) & (b >= 0)
    a, b = a[keep], b[keep]
    return np.unique(np.minimum(a, b) * width + np.maximum(a, b))


def _iou_pairs(pred: SceneGraph, gt: SceneGraph, pred_map: np.ndarray, gt_map: np.ndarray,
               threshold: float) -> np.ndarray:
    """``(M, 2)`` one-to-one (pred, gt) node matches of the same class with mask IoU >= ``threshold``."""
    n_pred, n_gt = pred.num_nodes, gt.num_nodes
    if n_pred == 0 or n_gt == 0:
        return np.zeros((0, 2), dtype=np.int64)
    p, g = pred_map.reshape(-1), gt_map.reshape(-1)
    area_p = np.bincount(p[p >= 0], minlength=n_pred)
    area_g = np.bincount(g[g >= 0], minlength=n_gt)
    both = (p >= 0) & (g >= 0)
    codes, inter = np.unique(p[both] * n_gt + g[both], return_counts=True)  # overlapping pairs only
    ip, ig = codes // n_gt, codes % n_gt
    iou = inter / (area_p[ip] + area_g[ig] - inter)
    ok = (iou >= threshold) & (_np(pred.labels)[ip] == _np(gt.labels)[ig])
    ip, ig, iou = ip[ok], ig[ok], iou[ok]
    order = np.argsort(-iou, kind="stable")
    used_p, used_g, matches = set(), set(), []
    for i, j in zip(ip[order].tolist(), ig[order].tolist()):  # candidates: at most one per node above IoU 0.5
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            matches.append((i, j))
    return np.array(sorted(matches), dtype=np.int64).reshape(-1, 2)


def match_graphs(pred: SceneGraph, gt: SceneGraph, pred_node_map: Tensor | np.ndarray | None = None,
                 gt_node_map: Tensor | np.ndarray | None = None, iou_threshold: float = 0.5) -> GraphMatch:
    """Match the nodes and edges of ``pred`` against ``gt`` (one image).

    Without node maps nodes are matched by class (``class`` granularity: each class is one node). With both
    ``(H, W)`` node-id maps (``-1`` = no node) nodes are matched by mask IoU within a class (``region``).
    """
    if pred.class_table.name != gt.class_table.name:
        raise ValueError(f"match_graphs: predicted graph uses class table '{pred.class_table.name}', ground truth "
                         f"'{gt.class_table.name}'; compare graphs over one label set")
    if (pred_node_map is None) != (gt_node_map is None):
        raise ValueError("match_graphs: pass both node maps (region matching by IoU) or neither (matching by class)")
    if pred_node_map is None:
        lp, lg = _np(pred.labels), _np(gt.labels)
        if len(np.unique(lp)) != len(lp) or len(np.unique(lg)) != len(lg):
            raise ValueError("match_graphs: a graph has several nodes of one class (region granularity); pass the "
                             "node maps of both graphs to match regions by IoU")
        _, ip, ig = np.intersect1d(lp, lg, return_indices=True)
        pairs = np.stack([ip, ig], axis=1).astype(np.int64)
    else:
        pm, gm = _np(pred_node_map), _np(gt_node_map)
        if pm.shape != gm.shape:
            raise ValueError(f"match_graphs: node maps differ in size: {pm.shape} (pred) vs {gm.shape} (gt)")
        pairs = _iou_pairs(pred, gt, pm, gm, iou_threshold)
    # Edges: map matched predicted nodes to their ground-truth node ids, then compare undirected pair codes.
    width = max(gt.num_nodes, 1)
    pred_to_gt = np.full(pred.num_nodes, -1, dtype=np.int64)
    pred_to_gt[pairs[:, 0]] = pairs[:, 1]
    matched_pred_edges = _pair_codes(pred, pred_to_gt, width)
    gt_edges = _pair_codes(gt, np.arange(gt.num_nodes, dtype=np.int64), width)
    edge_tp = int(np.isin(matched_pred_edges, gt_edges, assume_unique=True).sum())
    return GraphMatch(node_tp=len(pairs), node_pred=pred.num_nodes, node_gt=gt.num_nodes, edge_tp=edge_tp,
                      edge_pred=pred.num_edges // 2, edge_gt=gt.num_edges // 2, node_pairs=pairs)


def compare_label_maps(pred_map: Tensor | np.ndarray, gt_map: Tensor | np.ndarray, builder,
                       iou_threshold: float = 0.5) -> GraphMatch:
    """Build both graphs of one image with ``builder`` (a ``SceneGraphBuilder``) and match them: by class for
    ``class`` granularity, by region IoU for ``region``.

    The maps may differ in size (a segmenter's map at its own size, the annotation at the image's): each graph is
    built at its map's size, and for region IoU the predicted node map is resized to the annotation's (centre-aligned
    nearest neighbour)."""
    if builder.granularity == "class":
        return match_graphs(builder(pred_map), builder(gt_map))
    pred, pred_nodes = builder(pred_map, return_node_map=True)
    gt, gt_nodes = builder(gt_map, return_node_map=True)
    if tuple(pred_nodes.shape) != tuple(gt_nodes.shape):
        from twostream.data.transforms import resize_labels  # torchvision: imported when maps differ in size

        pred_nodes = resize_labels(pred_nodes.cpu(), tuple(gt_nodes.shape))
    return match_graphs(pred, gt, pred_nodes, gt_nodes, iou_threshold)


_COUNTS = ("node_tp", "node_pred", "node_gt", "edge_tp", "edge_pred", "edge_gt")
_SCORES = ("node_precision", "node_recall", "node_f1", "edge_precision", "edge_recall", "edge_f1")


class GraphMetrics:
    """Scene-graph quality over a dataset: ``update`` per image, ``compute`` for micro and macro scores.

    ``compute()`` returns ``{"micro": {score: value}, "macro": {score: value}, "images": n}`` with the six scores
    ``node_precision``, ``node_recall``, ``node_f1``, ``edge_precision``, ``edge_recall``, ``edge_f1``.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # float64 sums: 6 counts, 6 per-image scores, image count (a fixed layout all ranks share)
        self.state = torch.zeros(len(_COUNTS) + len(_SCORES) + 1, dtype=torch.float64)

    def update(self, match: GraphMatch) -> None:
        counts = [getattr(match, k) for k in _COUNTS]
        scores = match.scores()
        self.state += torch.tensor([*counts, *(scores[k] for k in _SCORES), 1.0], dtype=torch.float64)

    def compute(self) -> dict:
        counts = dict(zip(_COUNTS, self.state[: len(_COUNTS)].tolist()))
        sums = self.state[len(_COUNTS): -1].tolist()
        images = int(self.state[-1])
        micro = {}
        for kind in ("node", "edge"):
            p, r, f = prf(counts[f"{kind}_tp"], counts[f"{kind}_pred"], counts[f"{kind}_gt"])
            micro.update({f"{kind}_precision": p, f"{kind}_recall": r, f"{kind}_f1": f})
        macro = {k: (s / images if images else 0.0) for k, s in zip(_SCORES, sums)}
        return {"micro": micro, "macro": macro, "images": images,
                "counts": {k: int(v) for k, v in counts.items()}}
