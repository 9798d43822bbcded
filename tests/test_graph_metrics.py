"""Graph metrics on cases whose counts can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from twostream.graph.builder import SceneGraphBuilder
from twostream.graph.metrics import GraphMetrics, compare_label_maps, match_graphs, prf

# Ground truth: wall (1) top-left, building (2) top-right, sky (3) along the bottom; edges 1-2, 1-3, 2-3.
GT = np.array([[1, 1, 2, 2],
               [1, 1, 2, 2],
               [3, 3, 3, 3]])
# Prediction: the lower half of the building is called floor (4): node 4 is spurious; edges 1-2, 1-4, 2-4, 1-3,
# 3-4 of which 1-2 and 1-3 are right; 2-3 is missed.
PRED = np.array([[1, 1, 2, 2],
                 [1, 1, 4, 4],
                 [3, 3, 3, 3]])


def test_prf_conventions():
    assert prf(0, 0, 0) == (1.0, 1.0, 1.0)
    assert prf(0, 3, 0) == (0.0, 0.0, 0.0)
    assert prf(2, 4, 2) == pytest.approx((0.5, 1.0, 2 / 3))


def test_identical_graphs_score_one():
    for granularity in ("class", "region"):
        m = compare_label_maps(GT, GT, SceneGraphBuilder(granularity=granularity, min_area=1))
        assert m.scores() == {k: 1.0 for k in m.scores()}


def test_class_matching_known_case():
    m = compare_label_maps(PRED, GT, SceneGraphBuilder())
    assert (m.node_tp, m.node_pred, m.node_gt) == (3, 4, 3)
    assert (m.edge_tp, m.edge_pred, m.edge_gt) == (2, 5, 3)
    s = m.scores()
    assert s["node_precision"] == 0.75 and s["node_recall"] == 1.0
    assert s["edge_precision"] == pytest.approx(0.4) and s["edge_recall"] == pytest.approx(2 / 3)
    assert s["edge_f1"] == pytest.approx(0.5)


def test_region_matching_by_iou():
    builder = SceneGraphBuilder(granularity="region", min_area=1)
    # the predicted building covers half of the true one: IoU 2/4 = 0.5 -> matched at the threshold
    m = compare_label_maps(PRED, GT, builder)
    assert (m.node_tp, m.edge_tp) == (3, 2)
    strict = compare_label_maps(PRED, GT, builder, iou_threshold=0.51)
    assert strict.node_tp == 2  # wall and sky only
    assert strict.edge_tp == 1  # 1-3; 1-2 needs the building matched
    # two true regions of one class predicted as one merged region: IoU 4/10 with each, so neither matches
    gt = np.array([[5, 5, 0, 5, 5], [5, 5, 0, 5, 5]])
    merged = compare_label_maps(np.full((2, 5), 5), gt, builder)
    assert (merged.node_tp, merged.node_pred, merged.node_gt) == (0, 1, 2)
    # the other way round, a merged truth and two predicted parts of it: again no match (one-to-one by IoU)
    split = compare_label_maps(gt, np.full((2, 5), 5), builder)
    assert (split.node_tp, split.node_pred, split.node_gt) == (0, 2, 1)


def test_region_matching_requires_same_class():
    builder = SceneGraphBuilder(granularity="region", min_area=1)
    m = compare_label_maps(np.full((3, 3), 7), np.full((3, 3), 8), builder)
    assert m.node_tp == 0 and m.node_pred == m.node_gt == 1


def test_match_graphs_argument_checks():
    builder = SceneGraphBuilder(granularity="region", min_area=1)
    pred, pred_map = builder(PRED, return_node_map=True)
    gt, gt_map = builder(np.array([[1, 0, 1]] * 2), return_node_map=True)
    with pytest.raises(ValueError, match="both node maps"):
        match_graphs(pred, gt, pred_map, None)
    with pytest.raises(ValueError, match="several nodes of one class"):
        match_graphs(pred, gt)
    with pytest.raises(ValueError, match="differ in size"):
        match_graphs(pred, gt, pred_map, gt_map)


def test_dataset_micro_and_macro():
    metrics = GraphMetrics()
    builder = SceneGraphBuilder()
    metrics.update(compare_label_maps(PRED, GT, builder))  # nodes 3/4/3, edges 2/5/3
    metrics.update(compare_label_maps(GT, GT, builder))  # nodes 3/3/3, edges 3/3/3
    empty = np.zeros((3, 4), np.int64)
    metrics.update(compare_label_maps(empty, empty, builder))  # nothing to find, nothing found: all 1
    out = metrics.compute()
    assert out["images"] == 3
    assert out["counts"] == {"node_tp": 6, "node_pred": 7, "node_gt": 6, "edge_tp": 5, "edge_pred": 8, "edge_gt": 6}
    assert out["micro"]["node_precision"] == pytest.approx(6 / 7)
    assert out["micro"]["edge_recall"] == pytest.approx(5 / 6)
    assert out["macro"]["node_precision"] == pytest.approx((0.75 + 1 + 1) / 3)
    assert out["macro"]["edge_f1"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert metrics.compute() == out  # compute does not consume the state
    metrics.reset()
    assert metrics.compute()["images"] == 0
