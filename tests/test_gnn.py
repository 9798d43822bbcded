"""GraphEncoder: shapes, every layer/norm/readout, mixed and empty batches, edge weights, reset, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch_geometric.data import Batch

from twostream.config import GNNConfig
from twostream.data.classes import ade20k150
from twostream.graph.scene_graph import EDGE_ATTR_DIM, NODE_ATTR_DIM, SceneGraph
from twostream.models.gnn import CONVS, NORMS, READOUTS, GraphEncoder, boundary_share, build_graph_encoder

TABLE = ade20k150()
K = len(TABLE)


def make_graph(n: int, seed: int = 0, features: int = 0) -> SceneGraph:
    """A valid random scene graph with ``n`` nodes in a ring (both directions); 0 or 1 node: no edges."""
    g = torch.Generator().manual_seed(seed)
    xy0 = torch.rand(n, 2, generator=g) * 0.5
    bbox = torch.cat([xy0, xy0 + 0.1 + torch.rand(n, 2, generator=g) * 0.4], dim=1)
    if n > 1:
        src = torch.arange(n)
        dst = (src + 1) % n
        pairs = torch.unique(torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]), dim=1)
        pairs = pairs[:, pairs[0] != pairs[1]]
    else:
        pairs = torch.zeros(2, 0, dtype=torch.long)
    sg = SceneGraph(labels=torch.randint(1, K, (n,), generator=g), area=torch.rand(n, generator=g),
                    centroid=(bbox[:, :2] + bbox[:, 2:]) / 2, bbox=bbox, edge_index=pairs,
                    boundary=torch.randint(1, 50, (pairs.shape[1],), generator=g).float(), image_size=(64, 64),
                    class_table=TABLE,
                    features=torch.randn(n, features, generator=g) if features else None)
    return sg.validate()


def batch_of(*sizes: int, features: int = 0) -> Batch:
    return Batch.from_data_list([make_graph(n, seed=i + n, features=features).to_pyg() for i, n in enumerate(sizes)])


def small(**kw) -> GraphEncoder:
    args = dict(conv="gat", hidden_dim=16, num_layers=2, heads=2, class_embed_dim=8, dropout=0.0)
    args.update(kw)
    return GraphEncoder(K, **args)


def test_four_node_graph_shapes_and_repr():
    enc = small()
    graph_emb, node_emb = enc(batch_of(4))
    assert graph_emb.shape == (1, 16) and node_emb.shape == (4, 16) and enc.num_features == 16
    assert str(enc) == ("GraphEncoder(gat, num_classes=151, hidden_dim=16, num_layers=2, heads=2, norm=layer, "
                        "readout=attention, residual=True, edge_attr)")
    assert "boundary_weight" in str(small(conv="gcn")) and "no_edge_attr" in str(small(conv="sage"))


# every layer x norm pair; the readouts rotate so each layer meets each readout (16 cases instead of 64)
COMBOS = [(c, n, list(READOUTS)[(ci + ni) % len(READOUTS)])
          for (ci, c), (ni, n) in itertools.product(enumerate(CONVS), enumerate(NORMS))]


@pytest.mark.parametrize(("conv", "norm", "readout"), COMBOS)
def test_every_combination_handles_mixed_and_empty_batches(conv, norm, readout):
    enc = small(conv=conv, norm=norm, readout=readout).train()
    graph_emb, node_emb = enc(batch_of(1, 40, 0, 3))  # single node, large, empty, small
    assert graph_emb.shape == (4, 16) and node_emb.shape == (44, 16)
    assert torch.isfinite(graph_emb).all() and torch.isfinite(node_emb).all()
    graph_emb.square().sum().backward()
    empty_emb, empty_nodes = enc(batch_of(0, 0))  # a batch whose graphs all have no nodes
    assert empty_emb.shape == (2, 16) and empty_nodes.shape == (0, 16)
    assert torch.equal(empty_emb, enc.empty_embedding.expand(2, -1))


@pytest.mark.parametrize("conv", list(CONVS))
def test_batching_does_not_mix_graphs(conv):
    """Each graph's embedding in a mixed batch equals the embedding of that graph alone (eval mode, per-graph norm)."""
    torch.manual_seed(0)
    enc = small(conv=conv, norm="graph", readout="attention").eval()
    sizes = (1, 40, 0, 5)
    graph_emb, _ = enc(batch_of(*sizes))
    for i, n in enumerate(sizes):
        alone, _ = enc(Batch.from_data_list([make_graph(n, seed=i + n).to_pyg()]))
        torch.testing.assert_close(graph_emb[i], alone[0], atol=1e-5, rtol=1e-5)


def test_readouts_match_an_independent_pooling():
    torch.manual_seed(0)
    batch = batch_of(3, 1, 0, 6)
    for name, reduce in (("mean", torch.mean), ("sum", torch.sum), ("max", lambda t, dim: t.max(dim).values)):
        enc = small(readout=name).eval()
        graph_emb, node_emb = enc(batch)
        for i in range(batch.num_graphs):
            nodes = node_emb[batch.batch == i]
            expected = reduce(nodes, dim=0) if len(nodes) else enc.empty_embedding
            torch.testing.assert_close(graph_emb[i], expected)


def test_every_parameter_gets_a_gradient():
    enc = small(conv="gatv2", norm="batch", feature_dim=5).train()
    graph_emb, _ = enc(batch_of(2, 0, 7, features=5))  # the empty graph trains the empty-graph embedding
    (graph_emb * torch.randn_like(graph_emb)).sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_pooled_features_change_the_output():
    enc = small(feature_dim=5).eval()
    batch = batch_of(4, features=5)
    before, _ = enc(batch)
    batch.features = batch.features + 1.0
    after, _ = enc(batch)
    assert not torch.allclose(before, after)
    with pytest.raises(ValueError, match=r"graph\.pool_features"):
        enc(batch_of(4))


def test_edge_attributes_matter_only_where_used():
    batch = batch_of(6)
    changed = batch.clone()
    changed.edge_attr = changed.edge_attr.flip(0)  # same graph, edge attributes permuted over edges
    for conv, used in (("gat", True), ("gatv2", True), ("gcn", True), ("sage", False)):
        enc = small(conv=conv).eval()
        a, b = enc(batch)[0], enc(changed)[0]
        assert torch.allclose(a, b) != used, conv
        off = small(conv=conv, use_edge_attr=False).eval()
        assert torch.allclose(off(batch)[0], off(changed)[0]), conv


def test_boundary_share_is_the_fraction_of_the_target_boundary():
    # node 0 touches 1 (10 px) and 2 (30 px); 1 and 2 touch only 0
    edge_index = torch.tensor([[1, 2, 0, 0], [0, 0, 1, 2]])
    boundary = torch.tensor([10.0, 30.0, 10.0, 30.0])
    w = boundary_share(boundary, edge_index, 3)
    torch.testing.assert_close(w, torch.tensor([0.25, 0.75, 1.0, 1.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(boundary_share(boundary * 7.3, edge_index, 3), w)  # scale-free


def test_reset_parameters_really_resets():
    torch.manual_seed(1)
    a = small(conv="gat", feature_dim=3, norm="graph")
    torch.manual_seed(2)
    b = small(conv="gat", feature_dim=3, norm="graph")
    batch = batch_of(5, 0, 2, features=3)
    a.eval(), b.eval()
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p))  # every parameter off its init, the empty embedding too
    before = a(batch)[0]
    torch.manual_seed(3)
    a.reset_parameters()
    after = a(batch)[0]
    assert not torch.allclose(before, after)
    torch.manual_seed(3)
    b.reset_parameters()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    torch.testing.assert_close(after, b(batch)[0])


def test_errors_name_the_choice_and_the_fix():
    with pytest.raises(ValueError, match="unknown GNN layer 'gin'; known: gcn, sage, gat, gatv2"):
        GraphEncoder(K, conv="gin")
    with pytest.raises(ValueError, match="unknown GNN readout 'median'; known: mean, max, sum, attention"):
        GraphEncoder(K, readout="median")
    with pytest.raises(ValueError, match=r"hidden_dim \(30\) must be divisible by heads \(4\)"):
        GraphEncoder(K, conv="gat", hidden_dim=30, heads=4)
    GraphEncoder(K, conv="sage", hidden_dim=30, heads=4)  # heads do not apply to sage


def test_build_from_config():
    cfg = GNNConfig(type="sage", hidden_dim=32, num_layers=1, norm="none", readout="max", class_embed_dim=4)
    enc = build_graph_encoder(cfg, K, feature_dim=6)
    assert (enc.conv, enc.hidden_dim, enc.num_layers, enc.norm, enc.readout_name, enc.feature_dim) == (
        "sage", 32, 1, "none", "max", 6)
    assert enc.class_embed.weight.shape == (K, 4) and enc.input_proj.in_features == 4 + NODE_ATTR_DIM + 4
    assert EDGE_ATTR_DIM == 4  # GAT's edge_dim follows the SceneGraph contract
