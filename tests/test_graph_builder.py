"""SceneGraphBuilder: hand-drawn maps with known graphs, a brute-force reference, skimage's RAG, regions, tolerance,
ignore rules, bad input, batches, backends and feature pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twostream.config import GraphConfig
from twostream.data.classes import ClassTable, ade20k150
from twostream.graph.builder import SceneGraphBuilder, neighbourhood_offsets


def _table(k: int) -> ClassTable:
    return ClassTable(name=f"test{k}", names=tuple(f"c{i}" for i in range(k)), palette=np.zeros((k, 3), np.uint8))


def _edges(graph) -> dict[tuple[int, int], float]:
    """{(low label-or-node, high): boundary} of the undirected edges, keyed by node index."""
    pairs, boundary = graph.undirected_edges()
    return {(int(a), int(b)): float(w) for (a, b), w in zip(pairs.t().tolist(), boundary.tolist())}


def _label_edges(graph) -> dict[tuple[int, int], float]:
    labels = graph.labels.tolist()
    return {(labels[a], labels[b]): w for (a, b), w in _edges(graph).items()}


def _reference(node_map: np.ndarray, connectivity: int, tolerance: int) -> dict[tuple[int, int], int]:
    """Brute force: every unordered pixel pair within the neighbourhood, counted per pair of node ids (>= 0)."""
    h, w = node_map.shape
    radius = tolerance + 1
    counts: dict[tuple[int, int], int] = {}
    for y in range(h):
        for x in range(w):
            for yy in range(y, min(h, y + radius + 1)):
                for xx in range(max(0, x - radius), min(w, x + radius + 1)):
                    if (yy, xx) <= (y, x):
                        continue
                    dy, dx = yy - y, abs(xx - x)
                    if (dy + dx if connectivity == 4 else max(dy, dx)) > radius:
                        continue
                    a, b = int(node_map[y, x]), int(node_map[yy, xx])
                    if a >= 0 and b >= 0 and a != b:
                        key = (min(a, b), max(a, b))
                        counts[key] = counts.get(key, 0) + 1
    return counts


# The 6x6 quadrants: 1 | 2 over 3 | 4. Under 4-connectivity each quadrant touches its two side neighbours along a
# 3-pixel side; under 8-connectivity those boundaries gain 4 diagonal pairs each (3 + 4 = 7) and the diagonal
# quadrants (1-4, 2-3) touch through exactly one diagonal pixel pair at the centre.
QUADRANTS = np.array([[1, 1, 1, 2, 2, 2]] * 3 + [[3, 3, 3, 4, 4, 4]] * 3)


def test_quadrants_4_connectivity_exact_boundaries():
    graph = SceneGraphBuilder(connectivity=4)(QUADRANTS)
    assert graph.labels.tolist() == [1, 2, 3, 4]
    assert _label_edges(graph) == {(1, 2): 3.0, (1, 3): 3.0, (2, 4): 3.0, (3, 4): 3.0}
    assert graph.edge_index.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3], [1, 2, 0, 3, 0, 3, 1, 2]]
    graph.validate()


def test_quadrants_8_connectivity_exact_boundaries():
    graph = SceneGraphBuilder(connectivity=8)(QUADRANTS)
    assert _label_edges(graph) == {(1, 2): 7.0, (1, 3): 7.0, (1, 4): 1.0, (2, 3): 1.0, (2, 4): 7.0, (3, 4): 7.0}


def test_quadrants_geometry():
    graph = SceneGraphBuilder()(QUADRANTS)
    assert torch.equal(graph.area, torch.full((4,), 0.25))
    # pixel centres of the top-left quadrant: x, y in {0.5, 1.5, 2.5} -> mean 1.5 -> / 6
    assert torch.allclose(graph.centroid, torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]))
    assert torch.equal(graph.bbox, torch.tensor([[0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5], [0, 0.5, 0.5, 1],
                                                 [0.5, 0.5, 1, 1]]))


def test_geometry_against_direct_computation():
    rng = np.random.default_rng(1)
    sem = rng.integers(0, 6, (9, 13))
    graph = SceneGraphBuilder(ignore_label0=False)(sem)
    h, w = sem.shape
    for i, label in enumerate(graph.labels.tolist()):
        ys, xs = np.nonzero(sem == label)
        assert graph.area[i].item() == pytest.approx(len(ys) / (h * w), rel=1e-6)
        assert graph.centroid[i].tolist() == pytest.approx([(xs + 0.5).mean() / w, (ys + 0.5).mean() / h], rel=1e-6)
        assert graph.bbox[i].tolist() == pytest.approx([xs.min() / w, ys.min() / h, (xs.max() + 1) / w,
                                                        (ys.max() + 1) / h], rel=1e-6)


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("tolerance", [0, 1, 2])
@pytest.mark.parametrize("granularity", ["class", "region"])
def test_matches_brute_force_reference(granularity, connectivity, tolerance):
    rng = np.random.default_rng(connectivity * 10 + tolerance)
    # blocky random maps (so regions span several pixels) with label 0 and 255 sprinkled in
    sem = np.kron(rng.integers(0, 5, (6, 8)), np.ones((2, 2), np.int64))[:11, :15]
    sem[rng.random(sem.shape) < 0.08] = 255
    builder = SceneGraphBuilder(granularity=granularity, connectivity=connectivity, tolerance=tolerance, min_area=3)
    graph, node_map = builder(sem, return_node_map=True)
    assert {k: int(v) for k, v in _edges(graph).items()} == _reference(node_map.numpy(), connectivity, tolerance)
    graph.validate()


def test_neighbourhood_offsets():
    assert neighbourhood_offsets(4, 1) == [(0, 1), (1, 0)]
    assert neighbourhood_offsets(8, 1) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    assert len(neighbourhood_offsets(4, 2)) == 6 and len(neighbourhood_offsets(8, 2)) == 12


# ---------------------------------------------------------------------------------------------------- skimage RAG


def _segmentations():
    skimage = pytest.importorskip("skimage")
    from skimage import data, segmentation, transform

    coffee = transform.resize(data.coffee(), (80, 120), anti_aliasing=True)
    astronaut = transform.resize(data.astronaut(), (96, 96), anti_aliasing=True)
    assert skimage  # imported for the skip
    return {
        "felzenszwalb-coffee": segmentation.felzenszwalb(coffee, scale=40, sigma=0.5, min_size=8),
        "slic-astronaut": segmentation.slic(astronaut, n_segments=120, compactness=10, start_label=0),
    }


@pytest.mark.parametrize("connectivity", [4, 8])
def test_edges_equal_skimage_rag(connectivity):
    from skimage import graph as skgraph
    from skimage import measure

    for name, seg in _segmentations().items():
        table = _table(int(seg.max()) + 1)
        rag_connectivity = 1 if connectivity == 4 else 2  # 1: 4-neighbourhood, 2: 8-neighbourhood
        # class granularity: nodes are the segment labels
        builder = SceneGraphBuilder(connectivity=connectivity, ignore_label0=False, class_table=table,
                                    ignore_index=None)
        graph = builder(seg)
        expected = {tuple(sorted(e)) for e in skgraph.RAG(seg, connectivity=rag_connectivity).edges()}
        assert set(_label_edges(graph)) == expected, name
        # region granularity: nodes are connected components; compare with the RAG of skimage's own components
        regions = SceneGraphBuilder(granularity="region", connectivity=connectivity, min_area=0,
                                    ignore_label0=False, class_table=table, ignore_index=None)
        rgraph, node_map = regions(seg, return_node_map=True)
        components = measure.label(seg, connectivity=rag_connectivity, background=-1)
        ours = node_map.numpy()
        # the partitions agree: each skimage component is exactly one of our nodes
        pairs = np.unique(np.stack([components.ravel(), ours.ravel()]), axis=1)
        assert pairs.shape[1] == components.max() == rgraph.num_nodes, name
        to_ours = dict(zip(pairs[0].tolist(), pairs[1].tolist()))
        rag = skgraph.RAG(components, connectivity=rag_connectivity)
        expected = {tuple(sorted((to_ours[a], to_ours[b]))) for a, b in rag.edges()}
        assert set(_edges(rgraph)) == expected, name


# ---------------------------------------------------------------------------------------------------- options


def test_region_two_blobs_of_one_class():
    sem = np.full((5, 7), 3)
    sem[1:3, 1:3] = 8  # first blob (raster-first)
    sem[2:4, 4:6] = 8  # second blob, apart from the first
    graph, node_map = SceneGraphBuilder(granularity="region", min_area=1)(sem, return_node_map=True)
    assert graph.labels.tolist() == [3, 8, 8]
    assert _edges(graph) == {(0, 1): 8.0, (0, 2): 8.0}
    assert node_map[1, 1].item() == 1 and node_map[3, 5].item() == 2 and node_map[0, 0].item() == 0
    assert graph.area[1:].tolist() == pytest.approx([4 / 35, 4 / 35])
    class_graph = SceneGraphBuilder(granularity="class")(sem)
    assert class_graph.labels.tolist() == [3, 8] and _edges(class_graph) == {(0, 1): 16.0}


def test_region_diagonal_blob_is_one_region_only_under_8():
    sem = np.array([[5, 0], [0, 5]])
    assert SceneGraphBuilder(granularity="region", connectivity=4, min_area=1)(sem).labels.tolist() == [5, 5]
    assert SceneGraphBuilder(granularity="region", connectivity=8, min_area=1)(sem).labels.tolist() == [5]


def test_min_area_drops_small_regions_and_their_edges():
    sem = np.array([[1, 1, 1, 2, 3, 3, 3]] * 2)  # a 2-pixel region of class 2 between two 6-pixel regions
    builder = SceneGraphBuilder(granularity="region", min_area=3)
    graph, node_map = builder(sem, return_node_map=True)
    assert graph.labels.tolist() == [1, 3]
    assert graph.num_edges == 0  # the dropped pixels are void: they neither make nor bridge an edge
    assert node_map[:, 3].tolist() == [-1, -1]
    assert graph.area.tolist() == pytest.approx([6 / 14, 6 / 14])
    bridged = SceneGraphBuilder(granularity="region", min_area=3, tolerance=1)(sem)
    assert _edges(bridged) == {(0, 1): 2.0}  # a 1-pixel gap is within tolerance 1: two pairs at distance 2
    assert SceneGraphBuilder(granularity="region", min_area=2)(sem).labels.tolist() == [1, 2, 3]


def test_tolerance_hand_example():
    sem = np.array([[5, 0, 7]])
    assert SceneGraphBuilder(tolerance=0)(sem).num_edges == 0
    assert _label_edges(SceneGraphBuilder(tolerance=1)(sem)) == {(5, 7): 1.0}
    diag = np.array([[5, 0, 0], [0, 0, 7]])  # offset (1, 2): city-block 3, chessboard 2
    assert SceneGraphBuilder(tolerance=1, connectivity=4)(diag).num_edges == 0
    assert _label_edges(SceneGraphBuilder(tolerance=1, connectivity=8)(diag)) == {(5, 7): 1.0}
    assert _label_edges(SceneGraphBuilder(tolerance=2, connectivity=4)(diag)) == {(5, 7): 1.0}


def test_ignore_label0_and_ignore_index():
    sem = np.array([[0, 0, 4], [255, 4, 4], [6, 6, 6]])
    with_zero = SceneGraphBuilder(ignore_label0=False)(sem)
    assert with_zero.labels.tolist() == [0, 4, 6]
    assert _label_edges(with_zero) == {(0, 4): 2.0, (4, 6): 2.0}  # 255 is void: no node, no (0, 6) edge
    without = SceneGraphBuilder(ignore_label0=True)(sem)
    assert without.labels.tolist() == [4, 6] and _label_edges(without) == {(4, 6): 2.0}


def test_empty_and_single_class_maps():
    empty = SceneGraphBuilder()(np.zeros((8, 8), np.uint8))
    assert empty.num_nodes == 0 and empty.num_edges == 0
    empty.validate()
    data = empty.to_pyg()
    assert data.x.shape == (0, 7) and data.edge_attr.shape == (0, 4)
    single = SceneGraphBuilder()(torch.full((8, 8), 12))
    assert single.labels.tolist() == [12] and single.num_edges == 0 and single.area.tolist() == [1.0]


def test_bad_input():
    builder = SceneGraphBuilder()
    with pytest.raises(TypeError, match="integer label map"):
        builder(np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError, match="integer label map"):
        builder(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        builder([[1, 2]])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        builder(np.zeros((2, 4, 4), np.int64))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        builder.build_batch(np.zeros((4, 4), np.int64))
    with pytest.raises(ValueError, match=r"200.*ade20k150"):
        builder(np.array([[1, 200]], np.uint8))
    with pytest.raises(ValueError, match=r"300.*ade20k150"):
        builder(np.array([[1, 300]]))
    with pytest.raises(ValueError, match="-1"):
        builder(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="-3"):
        builder(np.array([[1, -3]], np.int8))
    with pytest.raises(ValueError, match="empty label map"):
        builder(np.zeros((0, 4), np.int64))
    with pytest.raises(ValueError, match="granularity"):
        SceneGraphBuilder(granularity="pixel")
    with pytest.raises(ValueError, match="ignore_index 3 is a class"):
        SceneGraphBuilder(class_table=_table(10), ignore_index=3)
    with pytest.raises(ValueError, match=r"features must be a \(B, C, h, w\)"):
        builder.build_batch(np.zeros((2, 4, 4), np.int64), features=torch.zeros(1, 3, 2, 2))


def test_from_config_and_settings():
    cfg = GraphConfig(granularity="region", connectivity=8, tolerance=1, min_area=5, ignore_label0=False)
    builder = SceneGraphBuilder.from_config(cfg, ade20k150())
    settings = builder.settings()
    assert settings["granularity"] == "region" and settings["connectivity"] == 8 and settings["min_area"] == 5
    assert settings["class_table"] == "ade20k150" and settings["num_classes"] == 151
    assert SceneGraphBuilder.from_config(GraphConfig()).settings() != settings
    assert "region" in repr(builder)


# ---------------------------------------------------------------------------------------------------- batches, backends


def _random_maps(batch: int = 3, h: int = 24, w: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 7, (batch, h // 4 + 1, w // 4 + 1))
    maps = np.kron(small, np.ones((1, 4, 4), np.int64))[:, :h, :w]
    maps[rng.random(maps.shape) < 0.1] = rng.integers(0, 7)  # specks: small regions
    return maps


@pytest.mark.parametrize("granularity,tolerance", [("class", 0), ("region", 0), ("region", 1)])
def test_batch_equals_single_builds(granularity, tolerance):
    maps = _random_maps()
    builder = SceneGraphBuilder(granularity=granularity, connectivity=8, tolerance=tolerance, min_area=2)
    graphs, node_maps = builder.build_batch(maps, return_node_map=True)
    assert len(graphs) == len(maps) and node_maps.shape == maps.shape
    for graph, node_map, sem in zip(graphs, node_maps, maps):
        single, single_map = builder(sem, return_node_map=True)
        assert graph.equal(single)
        assert torch.equal(node_map, single_map)
    assert builder.build_batch(maps[:0]) == []


@pytest.mark.parametrize("granularity,connectivity,tolerance",
                         [("class", 4, 1), ("region", 4, 1), ("class", 8, 0), ("region", 8, 0)])
def test_torch_and_numpy_give_identical_graphs(granularity, connectivity, tolerance):
    maps = _random_maps(seed=3)
    settings = {"granularity": granularity, "connectivity": connectivity, "tolerance": tolerance, "min_area": 2}
    builder = SceneGraphBuilder(**settings)
    reference, reference_maps = builder.build_batch(maps, return_node_map=True)
    as_tensor = builder.build_batch(torch.from_numpy(maps))
    as_uint8 = builder.build_batch(torch.from_numpy(maps.astype(np.uint8)))
    torch_backend, node_maps = SceneGraphBuilder(**settings, backend="torch").build_batch(torch.from_numpy(maps),
                                                                                          return_node_map=True)
    for ref, a, b, c in zip(reference, as_tensor, as_uint8, torch_backend):
        assert ref.equal(a) and ref.equal(b) and ref.equal(c)
    assert torch.equal(reference_maps, node_maps)


# ---------------------------------------------------------------------------------------------------- pooling


def _direct_pool(features: torch.Tensor, node_maps: torch.Tensor, num_nodes: list[int]) -> list[torch.Tensor]:
    """Mean of nearest-upsampled features over each node's pixels, one mask at a time."""
    up = F.interpolate(features, size=node_maps.shape[-2:], mode="nearest")  # (B, C, H, W)
    out = []
    for b, n in enumerate(num_nodes):
        out.append(torch.stack([up[b][:, node_maps[b] == i].mean(dim=1) for i in range(n)]) if n
                   else up.new_zeros(0, up.shape[1]))
    return out


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_feature_pooling_values_and_gradient(backend):
    maps = _random_maps(batch=2, h=24, w=20, seed=5)
    features = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)  # H / h = W / w = 4
    builder = SceneGraphBuilder(granularity="region", min_area=2, backend=backend)
    graphs, node_maps = builder.build_batch(maps, features=features, return_node_map=True)
    expected = _direct_pool(features, node_maps, [g.num_nodes for g in graphs])
    for graph, exp in zip(graphs, expected):
        assert graph.features.dtype == torch.float32 and graph.features.shape == (graph.num_nodes, 3)
        assert torch.allclose(graph.features.double(), exp, atol=1e-5)
    weights = [torch.randn(g.num_nodes, 3, dtype=torch.float64) for g in graphs]
    (grad,) = torch.autograd.grad(sum((g.features.double() * w).sum() for g, w in zip(graphs, weights)), features)
    (grad_direct,) = torch.autograd.grad(sum((e * w).sum() for e, w in zip(expected, weights)), features)
    assert torch.allclose(grad, grad_direct, atol=1e-5)


def test_feature_pooling_non_integer_ratio():
    sem = _random_maps(batch=1, h=17, w=13, seed=7)[0]
    features = torch.randn(1, 2, 5, 4)
    graph, node_map = SceneGraphBuilder()(sem, features=features, return_node_map=True)
    h, w = sem.shape
    rows = torch.arange(h) * 5 // h
    cols = torch.arange(w) * 4 // w
    up = features[0][:, rows][:, :, cols]  # (C, H, W): pixel (y, x) reads cell (y * h // H, x * w // W)
    expected = torch.stack([up[:, node_map == i].mean(dim=1) for i in range(graph.num_nodes)])
    assert torch.allclose(graph.features, expected, atol=1e-5)


def test_from_config_makes_label_255_a_class_for_label_sets_above_255():
    """Full ADE20K (3,688 classes): 255 is a class, not padding, for every builder the config makes (stores, online
    graphs, evaluation, inference); with 151 classes it stays void."""
    big = SceneGraphBuilder.from_config(GraphConfig(), _table(300))
    sem = np.full((4, 6), 3, np.int64)
    sem[:, 3:] = 255
    assert big.ignore_index is None and big(sem).labels.tolist() == [3, 255]
    small = SceneGraphBuilder.from_config(GraphConfig(), ade20k150())
    assert small.ignore_index == 255 and small(sem).labels.tolist() == [3]
