"""Edge ablations of the graph stream: edges none / shuffled, node_input class; every GNN type, every fusion."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch_geometric.data import Batch

from twostream.config import config_from_dict
from twostream.data.classes import ade20k150
from twostream.graph.rewire import EVAL_EPOCH, graph_seeds, rewire_degree_preserving
from twostream.graph.scene_graph import SceneGraph
from twostream.models.fusion import FUSIONS
from twostream.models.gnn import CONVS, EDGE_MODES, GraphEncoder, build_graph_encoder
from twostream.models.two_stream import build_model

TABLE = ade20k150()
K = len(TABLE)

# Parameters that act only on a node's neighbours: with edges=none they are kept (same shape, same initial weights
# as full) but unused, so their gradient is zero.
NEIGHBOUR_ONLY = {"gcn": set(), "sage": {"conv.lin_l.weight"},
                  "gat": {"conv.att_src", "conv.att_dst", "conv.att_edge", "conv.lin_edge.weight"},
                  "gatv2": {"conv.att", "conv.lin_r.weight", "conv.lin_r.bias", "conv.lin_edge.weight"}}


def random_graph(n: int, p: float, seed: int) -> SceneGraph:
    """A random simple undirected scene graph (Erdos-Renyi, both directions, sorted) with random geometry."""
    g = torch.Generator().manual_seed(seed)
    upper = torch.triu(torch.rand(n, n, generator=g) < p, diagonal=1)
    pairs = torch.nonzero(upper).t()  # (2, M) source < target
    xy0 = torch.rand(n, 2, generator=g) * 0.5
    bbox = torch.cat([xy0, xy0 + 0.1 + torch.rand(n, 2, generator=g) * 0.4], dim=1)
    return SceneGraph._from_undirected(
        pairs, torch.randint(1, 60, (pairs.shape[1],), generator=g).float(),
        labels=torch.randint(1, K, (n,), generator=g), area=torch.rand(n, generator=g),
        centroid=(bbox[:, :2] + bbox[:, 2:]) / 2, bbox=bbox, image_size=(64, 64), class_table=TABLE).validate()


def star(n: int) -> SceneGraph:
    """Node 0 touches every other node: no double edge swap is valid."""
    g = random_graph(n, 0.0, seed=n)
    pairs = torch.stack([torch.zeros(n - 1, dtype=torch.long), torch.arange(1, n)])
    return SceneGraph._from_undirected(pairs, torch.ones(n - 1), labels=g.labels, area=g.area, centroid=g.centroid,
                                       bbox=g.bbox, image_size=g.image_size, class_table=TABLE)


def batch_of(graphs) -> Batch:
    return Batch.from_data_list([g.to_pyg() for g in graphs])


def encoder(conv: str, **kw) -> GraphEncoder:
    torch.manual_seed(0)
    args = dict(conv=conv, hidden_dim=16, num_layers=2, heads=2, class_embed_dim=8, dropout=0.0)
    args.update(kw)
    return GraphEncoder(K, **args)


def rewire(batch: Batch, epoch: int = 0, rounds: int = 10):
    seeds = graph_seeds(batch.labels, batch.edge_index, batch.batch, batch.num_graphs)
    return rewire_degree_preserving(batch.edge_index, batch.batch, batch.num_graphs, seeds, epoch=epoch,
                                    rounds=rounds)


def undirected(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in edge_index.t().tolist()}


GRAPHS = [random_graph(12, 0.35, 1), random_graph(5, 0.6, 2), random_graph(20, 0.2, 3)]


# ---- edges: none ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", list(CONVS))
def test_none_gives_the_same_output_for_any_edge_set(conv):
    batch = batch_of(GRAPHS)
    bag, full = encoder(conv, edges="none").eval(), encoder(conv).eval()
    g = torch.Generator().manual_seed(0)
    permuted = batch.clone()  # edges scattered at random over the nodes of each graph
    permuted.edge_index = batch.edge_index[:, torch.randperm(batch.num_edges, generator=g)]
    permuted.edge_index[1] = permuted.edge_index[1][torch.randperm(batch.num_edges, generator=g)]
    permuted.edge_attr = torch.rand(batch.num_edges, 4, generator=g)
    removed = batch.clone()
    removed.edge_index, removed.edge_attr = batch.edge_index[:, ::3], batch.edge_attr[::3]
    added = batch.clone()
    extra = torch.stack([torch.zeros(5, dtype=torch.long), torch.arange(1, 6)])
    added.edge_index = torch.cat([batch.edge_index, extra], dim=1)
    added.edge_attr = torch.cat([batch.edge_attr, torch.rand(5, 4, generator=g)])
    reference = bag(batch)
    for other in (permuted, removed, added):
        out = bag(other)
        assert torch.equal(out[0], reference[0]) and torch.equal(out[1], reference[1])
        assert not torch.allclose(full(other)[0], full(batch)[0])  # the same changes do move the full graph


@pytest.mark.parametrize("conv", list(CONVS))
def test_none_is_a_per_node_encoder_and_neighbour_weights_get_no_gradient(conv):
    """Each node's embedding under edges=none equals that of the node alone in a graph of its own (DeepSets)."""
    enc = encoder(conv, edges="none").train()
    batch = batch_of(GRAPHS[:2])
    graph_emb, node_emb = enc(batch)
    alone = []
    for i in range(batch.num_nodes):
        single = SceneGraph(labels=batch.labels[i:i + 1], area=batch.x[i:i + 1, 0], centroid=batch.x[i:i + 1, 1:3],
                            bbox=batch.x[i:i + 1, 3:], edge_index=torch.zeros(2, 0, dtype=torch.long),
                            boundary=torch.zeros(0), image_size=(64, 64), class_table=TABLE)
        one = batch_of([single])
        alone.append(enc(one)[1])
    torch.testing.assert_close(node_emb, torch.cat(alone), rtol=1e-5, atol=1e-6)
    (graph_emb * torch.randn_like(graph_emb)).sum().backward()
    zero = {name.split(".", 2)[2] for name, p in enc.named_parameters()
            if name.startswith("layers.") and (p.grad is None or p.grad.abs().sum() == 0)}
    assert zero == NEIGHBOUR_ONLY[conv]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in enc.named_parameters()
               if not n.startswith("layers.") and n != "empty_embedding")


# ---- edges: shuffled ------------------------------------------------------------------------------------------------


def test_shuffled_keeps_every_degree_and_makes_a_simple_symmetric_graph():
    graphs = GRAPHS + [random_graph(30, 0.15, s) for s in range(4, 8)]
    batch = batch_of(graphs)
    out, changed = rewire(batch)
    n = batch.num_nodes
    assert torch.equal(torch.bincount(out[0], minlength=n), torch.bincount(batch.edge_index[0], minlength=n))
    assert torch.equal(torch.bincount(out[1], minlength=n), torch.bincount(batch.edge_index[1], minlength=n))
    assert (out[0] != out[1]).all()  # no self loops
    keys = (out[0] * n + out[1]).tolist()
    assert len(set(keys)) == len(keys)  # no duplicate edges
    assert set(keys) == set((out[1] * n + out[0]).tolist())  # every edge in both directions
    assert (batch.batch[out[0]] == batch.batch[out[1]]).all()  # no edge between graphs
    assert changed.float().mean() > 0.8  # most edges now join other pairs
    unchanged = ~changed
    assert torch.equal(out[:, unchanged], batch.edge_index[:, unchanged])
    assert (out[:, changed] != batch.edge_index[:, changed]).any(dim=0).all()


def test_shuffled_is_seeded_by_graph_and_epoch_not_by_batch():
    graphs = GRAPHS
    batch = batch_of(graphs)
    a, _ = rewire(batch, epoch=3)
    b, _ = rewire(batch_of(graphs), epoch=3)
    assert torch.equal(a, b)  # same seed, same result
    c, _ = rewire(batch, epoch=4)
    for i in range(len(graphs)):  # another epoch rewires every graph anew
        mask = batch.batch[batch.edge_index[0]] == i
        assert not torch.equal(a[:, mask], c[:, mask])
    # the same graph alone, or elsewhere in another batch, is rewired the same way (in its own node indices)
    shifted = batch_of([random_graph(9, 0.5, 99), graphs[2], graphs[0]])
    d, _ = rewire(shifted, epoch=3)
    for mine, there in ((0, 2), (2, 1)):
        here = a[:, batch.batch[batch.edge_index[0]] == mine] - batch.ptr[mine]
        other = d[:, shifted.batch[shifted.edge_index[0]] == there] - shifted.ptr[there]
        assert torch.equal(here, other)
        alone, _ = rewire(batch_of([graphs[mine]]), epoch=3)
        assert torch.equal(here, alone)


def test_graphs_too_small_to_rewire_stay_as_they_are():
    tiny = [random_graph(1, 0.0, 0), random_graph(2, 1.0, 0), star(6), random_graph(3, 1.0, 0)]  # 0, 1, star, triangle
    assert [g.num_edges // 2 for g in tiny] == [0, 1, 5, 3]
    batch = batch_of([*tiny, GRAPHS[0], random_graph(0, 0.0, 0)])  # beside a graph that is rewired, and an empty one
    out, changed = rewire(batch, rounds=20)
    small = batch.batch[batch.edge_index[0]] < len(tiny)
    assert torch.equal(out[:, small], batch.edge_index[:, small]) and not changed[small].any()
    assert changed[~small].any()
    alone, changed_alone = rewire(batch_of([star(6)]))
    assert torch.equal(alone, batch_of([star(6)]).edge_index) and not changed_alone.any()


def test_shuffled_mixes_over_epochs():
    ring = SceneGraph._from_undirected(torch.stack([torch.arange(8), (torch.arange(8) + 1) % 8]), torch.ones(8),
                                       **{k: getattr(random_graph(8, 0, 5), k) for k in
                                          ("labels", "area", "centroid", "bbox", "image_size", "class_table")})
    batch = batch_of([ring])
    seen = {frozenset(undirected(rewire(batch, epoch=e)[0])) for e in range(40)}
    assert len(seen) > 30  # 2-regular graphs on 8 nodes: hundreds of them; nearly every epoch draws a new one
    pairs = set().union(*seen)
    assert len(pairs) == 28  # every possible pair of the 8 nodes turns up as an edge


@pytest.mark.parametrize("conv", list(CONVS))
def test_shuffled_encoder_sees_the_rewired_graph_with_recomputed_offsets(conv):
    graphs = GRAPHS
    batch = batch_of(graphs)
    enc = encoder(conv, edges="shuffled")
    # independent: rewire, rebuild each graph as a SceneGraph (its edge_attr from the new pairs, boundary carried)
    new_index, _ = rewire(batch, epoch=EVAL_EPOCH)
    rebuilt = batch.clone()
    rebuilt.edge_index = new_index
    sg = SceneGraph(labels=batch.labels, area=batch.x[:, 0], centroid=batch.x[:, 1:3], bbox=batch.x[:, 3:],
                    edge_index=new_index, boundary=batch.boundary, image_size=(64, 64), class_table=TABLE)
    rebuilt.edge_attr = sg.edge_attr()
    full = encoder(conv).eval()
    torch.testing.assert_close(enc.eval()(batch)[0], full(rebuilt)[0], rtol=1e-5, atol=1e-6)
    # training rewires with the epoch it is told; evaluation always with the same fixed epoch
    enc.train().set_epoch(0)
    first = enc(batch)[0]
    enc.set_epoch(1)
    second = enc(batch)[0]
    assert not torch.allclose(first, second)
    enc.set_epoch(0)
    assert torch.equal(enc(batch)[0], first)
    enc.eval()
    reference = enc(batch)[0]
    enc.set_epoch(7)
    assert torch.equal(enc(batch)[0], reference)


# ---- node_input: class ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("conv", "edges"), list(itertools.product(CONVS, EDGE_MODES)))
def test_class_input_ignores_every_geometric_attribute(conv, edges):
    batch = batch_of(GRAPHS)
    enc = encoder(conv, node_input="class", edges=edges).eval()
    moved = batch.clone()
    g = torch.Generator().manual_seed(1)
    moved.x = torch.rand(moved.x.shape, generator=g)  # area, centroid, bbox
    moved.pos = moved.x[:, 1:3]
    moved.edge_attr = torch.rand(moved.edge_attr.shape, generator=g)  # boundary, offsets, distance
    assert torch.equal(enc(batch)[0], enc(moved)[0])
    geometric = encoder(conv, edges=edges).eval()
    assert not torch.allclose(geometric(batch)[0], geometric(moved)[0])
    assert enc.input_proj.in_features == 8 and "node_input=class" in repr(enc)
    if edges == "full":  # class + adjacency: the edges still matter
        rewired = batch.clone()
        rewired.edge_index = rewire(batch)[0]
        assert not torch.allclose(enc(batch)[0], enc(rewired)[0])


def test_errors_and_config():
    with pytest.raises(ValueError, match="unknown GNN edges mode 'random'; known: full, none, shuffled"):
        GraphEncoder(K, edges="random")
    with pytest.raises(ValueError, match="unknown GNN node input 'geometry'; known: class_geometry, class"):
        GraphEncoder(K, node_input="geometry")
    cfg = config_from_dict({"model": {"gnn": {"edges": "shuffled", "node_input": "class", "hidden_dim": 16}}})
    enc = build_graph_encoder(cfg.model.gnn, K)
    assert (enc.edges, enc.node_input, enc.edge_attr_used) == ("shuffled", "class", False)
    from twostream.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"model\.gnn\.edges: 'bag' is not allowed; choose one of: full, none, sh"):
        load_config(None, ["model.gnn.edges=bag"])


# ---- through the whole model: every fusion, every GNN type --------------------------------------------------------

MODES = [("none", "class_geometry"), ("shuffled", "class_geometry"), ("full", "class"), ("none", "class")]
CASES = [(fusion, list(CONVS)[i % len(CONVS)], *MODES[i % len(MODES)])
         for i, fusion in enumerate(list(FUSIONS) * 2)]


@pytest.mark.parametrize(("fusion", "conv", "edges", "node_input"), CASES)
def test_two_stream_forward_backward_with_every_fusion(fusion, conv, edges, node_input):
    cfg = config_from_dict({
        "data": {"image_size": [64, 64]}, "graph": {"source": "gt"},
        "model": {"segmenter": {"kind": "none"}, "image_encoder": {"name": "test_resnet", "pretrained": False},
                  "gnn": {"type": conv, "hidden_dim": 16, "heads": 2, "num_layers": 2, "class_embed_dim": 8,
                          "dropout": 0.0, "edges": edges, "node_input": node_input},
                  "fusion": {"type": fusion, "dim": 16, "rank": 8, "heads": 2, "dropout": 0.0}}})
    torch.manual_seed(0)
    model = build_model(cfg, num_scenes=3, class_table=TABLE).train()
    model.set_epoch(2)
    assert model.graph_encoder.epoch == 2 and model.graph_encoder.edges == edges
    out = model(torch.rand(3, 3, 64, 64), batch_of(GRAPHS))
    assert out["logits"].shape == (3, 3) and torch.isfinite(out["logits"]).all()
    (out["logits"] * torch.randn_like(out["logits"])).sum().backward()
    dead = NEIGHBOUR_ONLY[conv] if edges == "none" else set()
    if node_input == "class" and conv in ("gat", "gatv2"):
        dead = dead | {"conv.lin_edge.weight", "conv.att_edge"}  # not built: no edge attributes (absent, not dead)
    # (timm's ResNets zero-init each block's last norm, so the image encoder's inner convs start without gradient:
    # its gradients are timm's business; the graph stream, the fusion and the head are checked)
    no_grad = {n for n, p in model.named_parameters()
               if not n.startswith("image_encoder.") and (p.grad is None or p.grad.abs().sum() == 0)}
    expected = {n for n in no_grad if n.startswith("graph_encoder.layers.") and n.split(".", 3)[3] in dead}
    assert no_grad - {"graph_encoder.empty_embedding"} == expected


def test_the_trainer_tells_the_model_its_epoch_and_evaluation_repeats(synthetic_root, tiny_config, tmp_path,
                                                                      monkeypatch):
    from twostream.engine.evaluate import evaluate_checkpoint
    from twostream.engine.trainer import train

    calls = []
    original = GraphEncoder.set_epoch
    monkeypatch.setattr(GraphEncoder, "set_epoch", lambda self, epoch: (calls.append(epoch), original(self, epoch)))
    cfg = tiny_config(synthetic_root, tmp_path / "run", "model.image_encoder.enabled=false", "model.fusion.type=none",
                      "model.gnn.edges=shuffled", "data.max_items=16")
    train(cfg)
    assert calls == [0, 1]
    first = evaluate_checkpoint(tmp_path / "run", out_dir=tmp_path / "a", device="cpu")
    second = evaluate_checkpoint(tmp_path / "run", out_dir=tmp_path / "b", device="cpu")
    assert first["confusion_matrix"] == second["confusion_matrix"] and first["num_images"] == 16


def test_online_graphs_get_the_setting_too():
    """Graphs built inside the model from its segmenter go through the same encoder: shuffled, and fixed in eval."""
    cfg = config_from_dict({
        "data": {"image_size": [64, 64]}, "graph": {"source": "online"},
        "model": {"segmenter": {"kind": "upsnet", "backbone": "resnet10t", "pretrained": False, "fpn_channels": 16,
                                "head_channels": 8, "deformable": False},
                  "image_encoder": {"enabled": False}, "fusion": {"type": "none"},
                  "gnn": {"hidden_dim": 16, "heads": 2, "num_layers": 2, "class_embed_dim": 8, "dropout": 0.0,
                          "edges": "shuffled"}}})
    torch.manual_seed(0)
    model = build_model(cfg, num_scenes=3, class_table=TABLE).eval()
    images = torch.rand(2, 3, 64, 64)
    calls = []
    original = model.graph_encoder.graph_edges
    model.graph_encoder.graph_edges = lambda *a: (calls.append(1), original(*a))[1]
    with torch.no_grad():
        first = model(images)
        model.set_epoch(5)
        second = model(images)
    assert len(calls) == 2 and "graphs" in first
    assert torch.equal(first["logits"], second["logits"])
