"""Fusion methods: shapes, formulas, gradients into both streams, cross-attention masking, empty graphs, reset."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from twostream.config import FusionConfig
from twostream.models.fusion import FUSIONS, BilinearFusion, CrossAttentionFusion, GatedFusion, SumFusion, build_fusion
from twostream.models.gnn import GraphEncoder
from twostream.models.image_encoder import ImageEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_gnn import K, make_graph

CI, CG, DIM, T = 12, 10, 16, 5


def make(name: str, **kw):
    return build_fusion(FusionConfig(type=name, dim=DIM, heads=4, rank=6, dropout=0.0, **kw), CI, CG)


def inputs(sizes=(3, 1, 0), seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(sizes)
    node_batch = torch.repeat_interleave(torch.arange(b), torch.tensor(sizes))
    return (torch.randn(b, CI, generator=g), torch.randn(b, T, CI, generator=g), torch.randn(b, CG, generator=g),
            torch.randn(int(sum(sizes)), CG, generator=g), node_batch)


@pytest.mark.parametrize("name", list(FUSIONS))
def test_shape_finite_and_gradient_into_both_streams(name):
    fusion = make(name).train()
    assert fusion.num_features == DIM and type(fusion).__name__ in repr(fusion)
    image_pooled, tokens, graph_pooled, nodes, node_batch = (t.requires_grad_() if t.is_floating_point() else t
                                                            for t in inputs())
    z = fusion(image_pooled, tokens, graph_pooled, nodes, node_batch)
    assert z.shape == (3, DIM) and torch.isfinite(z).all()
    z.square().sum().backward()
    image_grad = tokens.grad if name == "cross_attention" else image_pooled.grad
    graph_grad = nodes.grad if name == "cross_attention" else graph_pooled.grad
    assert image_grad is not None and image_grad.abs().sum() > 0
    assert graph_grad is not None and graph_grad.abs().sum() > 0
    if name == "cross_attention":
        assert graph_pooled.grad.abs().sum() > 0  # the graph summary is a key too
    missing = [n for n, p in fusion.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("name", list(FUSIONS))
def test_every_parameter_of_both_encoders_gets_a_gradient(name):
    """The real encoders (a tiny timm ViT and a GAT) through each fusion: the loss reaches every parameter."""
    torch.manual_seed(0)
    image = ImageEncoder("test_vit", img_size=(32, 32))
    gnn = GraphEncoder(K, conv="gat", hidden_dim=CG, heads=2, num_layers=2, class_embed_dim=4, readout="attention")
    fusion = build_fusion(FusionConfig(type=name, dim=DIM, heads=4, rank=6),
                          image.token_dim if name == "cross_attention" else image.num_features, gnn.num_features)
    graphs = Batch.from_data_list([make_graph(n, seed=n).to_pyg() for n in (4, 0)])
    tokens = image.forward_features(torch.rand(2, 3, 32, 32))
    graph_emb, node_emb = gnn(graphs)
    z = fusion(image.forward_head(tokens), tokens, graph_emb, node_emb, graphs.batch)
    (z * torch.randn_like(z)).sum().backward()
    for module in (image, gnn, fusion):
        missing = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, (type(module).__name__, missing)


def test_sum_gated_and_bilinear_follow_their_formulas():
    image_pooled, _, graph_pooled, nodes, node_batch = inputs()
    s = make("sum").eval()
    with torch.no_grad():
        s.weight_logits.copy_(torch.tensor([0.3, -0.2]))
    a = torch.softmax(torch.tensor([0.3, -0.2]), 0)
    v = torch.nn.functional.layer_norm(image_pooled, (CI,), s.image_norm.weight, s.image_norm.bias)
    g = torch.nn.functional.layer_norm(graph_pooled, (CG,), s.graph_norm.weight, s.graph_norm.bias)
    expected = a[0] * (v @ s.image_proj.weight.T + s.image_proj.bias) + a[1] * (g @ s.graph_proj.weight.T
                                                                               + s.graph_proj.bias)
    torch.testing.assert_close(s(image_pooled, None, graph_pooled, nodes, node_batch), expected)
    torch.testing.assert_close(s.stream_weights.sum(), torch.tensor(1.0))

    gated: GatedFusion = make("gated").eval()
    gate = torch.sigmoid(torch.cat([v, g], 1) @ gated.gate.weight.T + gated.gate.bias)
    expected = gate * torch.tanh(gated.image_proj(v)) + (1 - gate) * torch.tanh(gated.graph_proj(g))
    torch.testing.assert_close(gated(image_pooled, None, graph_pooled, nodes, node_batch), expected)
    gate_values = gated.gate_values(image_pooled, graph_pooled)
    assert ((gate_values > 0) & (gate_values < 1)).all()

    bil: BilinearFusion = make("bilinear").eval()
    # the rank-r form equals sum_k P[:, k] * (u_k . v)(w_k . g): one bilinear form per output feature
    u, w = torch.tanh(bil.image_factor(v)), torch.tanh(bil.graph_factor(g))
    expected = torch.einsum("dr,br->bd", bil.out.weight, u * w) + bil.out.bias
    torch.testing.assert_close(bil(image_pooled, None, graph_pooled, nodes, node_batch), expected)
    assert bil.image_factor.out_features == 6  # rank from the config


def test_cross_attention_masks_padding():
    """Graph 0's result does not change when another graph in the batch grows (more padding for graph 0)."""
    torch.manual_seed(0)
    fusion: CrossAttentionFusion = make("cross_attention").eval()
    g = torch.Generator().manual_seed(1)
    tokens, graph_pooled = torch.randn(2, T, CI, generator=g), torch.randn(2, CG, generator=g)
    nodes_a = torch.randn(2, CG, generator=g)
    outs = []
    for n_other in (1, 40):
        nodes = torch.cat([nodes_a, torch.randn(n_other, CG, generator=g)])
        node_batch = torch.cat([torch.zeros(2, dtype=torch.long), torch.ones(n_other, dtype=torch.long)])
        outs.append(fusion(None, tokens, graph_pooled, nodes, node_batch))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(outs[0][1], outs[1][1])  # graph 1 did change
    alone = fusion(None, tokens[:1], graph_pooled[:1], nodes_a, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(outs[0][0], alone[0], atol=1e-6, rtol=1e-5)
    _, pad = fusion.keys(graph_pooled, torch.cat([nodes_a, nodes_a[:1]]), torch.tensor([0, 0, 1]))
    assert pad.tolist() == [[False, False, False, False], [False, False, False, True]]  # null, summary, nodes


def test_cross_attention_with_graphs_without_nodes():
    fusion = make("cross_attention").train()
    tokens, graph_pooled = torch.randn(3, T, CI), torch.randn(3, CG)
    z = fusion(None, tokens, graph_pooled, torch.zeros(0, CG), torch.zeros(0, dtype=torch.long))  # all empty
    assert z.shape == (3, DIM) and torch.isfinite(z).all()
    z.sum().backward()
    assert torch.isfinite(fusion.null_token.grad).all()
    with pytest.raises(ValueError, match="needs image tokens"):
        fusion(None, None, graph_pooled, torch.zeros(0, CG), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("name", list(FUSIONS))
def test_reset_parameters_really_resets(name):
    torch.manual_seed(1)
    a = make(name).eval()
    torch.manual_seed(2)
    b = make(name).eval()
    args = inputs()
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p))
    before = a(*args)
    torch.manual_seed(3)
    a.reset_parameters()
    torch.manual_seed(3)
    b.reset_parameters()
    after = a(*args)
    assert not torch.allclose(before, after)
    for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), key
    torch.testing.assert_close(after, b(*args))


def test_build_errors():
    with pytest.raises(ValueError, match="unknown fusion type 'none'; known: concat, sum, gated, cross_attention"):
        build_fusion(FusionConfig(type="none"), CI, CG)
    with pytest.raises(ValueError, match=r"dim \(10\) must be divisible by heads \(4\)"):
        CrossAttentionFusion(CI, CG, dim=10, heads=4)
    assert isinstance(make("sum"), SumFusion)
