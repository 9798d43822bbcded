"""twostream.explain: the streams taken apart, PyG edge masks in every GNN, Captum via PyG (batched = PyG's own),
exact occlusion against a loop of single deletions, Grad-CAM for ResNet / ViT / Swin, streams, every GNN and fusion,
a batch explained image by image, degenerate graphs, bad scene names, JSON round trips, and the randomisation test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.explain import Explainer
from torch_geometric.explain.algorithm import CaptumExplainer

from twostream.data.classes import ade20k150
from twostream.data.synthetic import RELATION_SCENES, render_scene
from twostream.explain import ExplanationEvaluator, SceneExplainer, SceneExplanation
from twostream.explain.graph_attribution import BatchedCaptumExplainer, GraphStreamModule
from twostream.explain.occlusion import occlusion_scores
from twostream.explain.streams import StreamEmbeddings, as_batch, classify, encode_streams, replace_stream
from twostream.graph.builder import SceneGraphBuilder
from twostream.graph.scene_graph import SceneGraph
from twostream.models.gnn import GraphEncoder
from twostream.models.two_stream import TwoStreamClassifier, build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_classifier_config

TABLE = ade20k150()
SCENES = ["a", "b", "c", "d"]
MODEL_CONFIG = {"mode": "multiclass_classification", "task_level": "graph", "return_type": "raw"}


def _inputs(scenes=("bedroom", "kitchen", "street"), size=64):
    builder = SceneGraphBuilder(class_table=TABLE)
    images, graphs = [], []
    for k, scene in enumerate(scenes):
        image, sem, _ = render_scene(scene, k, size)
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        graphs.append(builder(sem))
    return torch.stack(images), graphs


def _model(*extra: str, seed: int = 0) -> TwoStreamClassifier:
    cfg = tiny_classifier_config(Path("unused"), Path("unused"), *extra)
    torch.manual_seed(seed)
    model = build_model(cfg, num_scenes=len(SCENES), class_table=TABLE).eval()
    with torch.no_grad():
        model.head.weight.mul_(5.0)  # confident enough that deletions move the probabilities
    return model


@pytest.fixture(scope="module")
def inputs():
    return _inputs()


VARIANTS = {
    "gat+concat": (), "gcn": ("model.gnn.type=gcn",), "sage": ("model.gnn.type=sage",),
    "gatv2": ("model.gnn.type=gatv2",), "sum": ("model.fusion.type=sum",), "gated": ("model.fusion.type=gated",),
    "cross_attention": ("model.fusion.type=cross_attention",), "bilinear": ("model.fusion.type=bilinear",),
    "graph_only": ("model.image_encoder.enabled=false", "model.fusion.type=none"),
    "image_only": ("model.gnn.enabled=false", "model.fusion.type=none"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_gnn_and_fusion_is_explained_and_the_streams_decompose_the_model(name, inputs):
    images, graphs = inputs
    model = _model(*VARIANTS[name])
    has_graph = model.graph_encoder is not None
    with torch.no_grad():
        own = model(images, graphs if has_graph else None)["logits"]
        mine = classify(model, encode_streams(model, images, as_batch(graphs, "cpu") if has_graph else None))
    torch.testing.assert_close(mine, own, rtol=0, atol=1e-6)  # explain/streams.py mirrors the model exactly

    explanations = SceneExplainer(model, SCENES, steps=8).explain(images, graphs if has_graph else None)
    assert len(explanations) == 3
    for e, g in zip(explanations, graphs):
        assert e.scene == SCENES[int(own[explanations.index(e)].argmax())]
        assert 0 < e.prob <= 1 and e.method
        if has_graph:
            assert e.node_names == [TABLE.short_name(int(c)) for c in g.labels]
            assert e.node_scores.shape == e.node_occlusion.shape == (g.num_nodes,)
            assert e.edges.shape == (g.num_edges // 2, 2) and (e.edges[:, 0] < e.edges[:, 1]).all()
            assert e.edge_scores.shape == e.edge_occlusion.shape == (g.num_edges // 2,)
            assert np.isfinite(e.node_scores).all() and np.abs(e.edge_scores).sum() > 0
            assert e.streams["graph"] is not None
        else:
            assert e.node_scores is None and e.edges.shape == (0, 2)
            assert any("image-only model" in n for n in e.notes) and e.streams["graph"] is None
        if model.image_encoder is not None:
            assert e.cam.shape == images.shape[-2:] and e.cam.min() >= 0 and e.cam.max() <= 1
            assert e.streams["image"] is not None
        else:
            assert e.cam is None and any("no CAM" in n for n in e.notes)
    extras = explanations[0].extras
    if name == "gated":
        assert 0 < extras["gate"]["image_mean"] < 1
    elif name == "sum":
        assert extras["stream_weights"]["image"] + extras["stream_weights"]["graph"] == pytest.approx(1.0)
    elif name == "cross_attention":
        att = extras["attention"]
        assert len(att["nodes"]) == graphs[0].num_nodes
        assert att["null"] + att["summary"] + sum(att["nodes"]) == pytest.approx(1.0, abs=1e-5)
    else:
        assert extras == {}


@pytest.mark.parametrize("conv", ["gcn", "sage", "gat", "gatv2"])
def test_every_gnn_honours_pyg_edge_masks(conv, inputs):
    """PyG's explain masks messages inside MessagePassing.propagate: a mask of ones changes nothing, zero on one
    edge changes its target's output, and the mask's gradient reaches every edge."""
    from torch_geometric.explain.algorithm.utils import clear_masks, set_masks

    _, graphs = inputs
    batch = as_batch(graphs[:1], "cpu")
    torch.manual_seed(0)
    enc = GraphEncoder(len(TABLE), conv=conv, hidden_dim=16, heads=2, num_layers=2, class_embed_dim=8,
                       readout="sum").eval()
    with torch.no_grad():
        _, plain = enc(batch)
    mask = torch.ones(batch.edge_index.shape[1], requires_grad=True)
    set_masks(enc, mask, batch.edge_index, apply_sigmoid=False)
    try:
        pooled, masked = enc(batch)
        pooled.sum().backward()
        with torch.no_grad():
            cut = torch.ones_like(mask)
            cut[0] = 0
            set_masks(enc, cut, batch.edge_index, apply_sigmoid=False)
            _, one_cut = enc(batch)
    finally:
        clear_masks(enc)
    torch.testing.assert_close(masked, plain, rtol=0, atol=1e-6)
    assert (mask.grad != 0).all()
    target = int(batch.edge_index[1, 0])
    assert not torch.allclose(one_cut[target], plain[target])


@pytest.mark.parametrize("mode", ["nodes", "edges"])
def test_batched_captum_equals_pyg_captum_explainer(mode, inputs):
    """All integration steps in one pass give PyG's CaptumExplainer's attributions (one step at a time)."""
    images, graphs = inputs
    model = _model("model.fusion.type=cross_attention")
    model.requires_grad_(False)
    batch = as_batch(graphs[:2], "cpu")
    with torch.no_grad():
        emb = encode_streams(model, images[:2], batch)
    module = GraphStreamModule(model, batch, StreamEmbeddings(image_pooled=emb.image_pooled,
                                                              image_tokens=emb.image_tokens))
    x, target = module.node_inputs(), torch.tensor([1, 2])
    masks = {"node_mask_type": "attributes"} if mode == "nodes" else {"edge_mask_type": "object"}
    out = []
    for algorithm in (CaptumExplainer("IntegratedGradients", n_steps=12), BatchedCaptumExplainer(steps=12)):
        explainer = Explainer(module, algorithm, explanation_type="phenomenon", model_config=MODEL_CONFIG, **masks)
        e = explainer(x, batch.edge_index, target=target, batch=batch.batch)
        out.append(e.node_mask if mode == "nodes" else e.edge_mask)
    torch.testing.assert_close(out[1], out[0], rtol=1e-4, atol=1e-6)
    assert out[0].abs().sum() > 0


def _without(graph: SceneGraph, node: int | None = None, edge: tuple[int, int] | None = None) -> SceneGraph:
    """The graph without one node (and its edges) or one undirected edge, through its JSON form."""
    d = graph.to_json()
    if node is not None:
        keep = [n for n in d["nodes"] if n["id"] != node]
        new_id = {n["id"]: k for k, n in enumerate(keep)}
        d["nodes"] = [{**n, "id": new_id[n["id"]]} for n in keep]
        d["edges"] = [{**e, "source": new_id[e["source"]], "target": new_id[e["target"]]} for e in d["edges"]
                      if node not in (e["source"], e["target"])]
    else:
        d["edges"] = [e for e in d["edges"] if (e["source"], e["target"]) != edge]
    return SceneGraph.from_json(d)


@pytest.mark.parametrize("extra", [(), ("model.gnn.type=gcn", "model.fusion.type=cross_attention")])
def test_occlusion_equals_a_loop_of_single_deletions(extra, inputs):
    images, graphs = inputs
    model = _model(*extra)
    image, graph = images[:1], graphs[0]
    with torch.no_grad():
        probs = model(image, [graph])["logits"].softmax(dim=1)[0]
        scene = int(probs.argmax())
        emb = encode_streams(model, image, as_batch([graph], "cpu"))
        node_drop, pairs, edge_drop = occlusion_scores(model, graph.to_pyg(), emb.select(0), scene, probs[scene])
        loop_nodes = [probs[scene] - model(image, [_without(graph, node=k)])["logits"].softmax(1)[0, scene]
                      for k in range(graph.num_nodes)]
        undirected = graph.edge_index[:, pairs].t().tolist()
        loop_edges = [probs[scene] - model(image, [_without(graph, edge=tuple(e))])["logits"].softmax(1)[0, scene]
                      for e in undirected]
    assert len(undirected) == graph.num_edges // 2
    torch.testing.assert_close(node_drop, torch.stack(loop_nodes), rtol=0, atol=2e-6)
    torch.testing.assert_close(edge_drop, torch.stack(loop_edges), rtol=0, atol=2e-6)
    assert node_drop.abs().max() > 1e-4  # the check is not vacuous


def test_a_batch_is_explained_image_by_image(inputs):
    """Each image's explanation is the same alone as in a batch: graphs are never mixed."""
    images, graphs = inputs
    model = _model("model.fusion.type=cross_attention", "model.gnn.norm=graph")
    explainer = SceneExplainer(model, SCENES, steps=8)
    together = explainer.explain(images, graphs)
    for i in range(len(graphs)):
        alone = explainer.explain(images[i:i + 1], graphs[i:i + 1])[0]
        for key in ("node_scores", "edge_scores", "node_occlusion", "edge_occlusion", "cam"):
            np.testing.assert_allclose(getattr(together[i], key), getattr(alone, key), rtol=1e-4, atol=1e-5)
        assert together[i].streams == pytest.approx(alone.streams, abs=1e-6)
        np.testing.assert_array_equal(together[i].edges, alone.edges)


def test_one_node_no_edges_and_empty_graphs(inputs):
    images, _ = inputs
    builder = SceneGraphBuilder(class_table=TABLE)
    one = builder(np.full((64, 64), 7, dtype=np.uint8))  # one class: one node, no edges
    empty = builder(np.zeros((64, 64), dtype=np.uint8))  # only "other": no nodes
    model = _model()
    e_one, e_empty = SceneExplainer(model, SCENES, steps=4).explain(images[:2], [one, empty])
    assert e_one.num_nodes == 1 and e_one.node_scores.shape == (1,) and e_one.edges.shape == (0, 2)
    assert e_one.edge_scores is None and any("no edges" in n for n in e_one.notes)
    assert e_one.node_occlusion.shape == (1,)  # deleting the only node leaves the empty graph
    assert e_empty.num_nodes == 0 and e_empty.node_scores is None and any("no nodes" in n for n in e_empty.notes)
    assert e_empty.cam is not None and e_empty.streams["graph"] is not None
    assert SceneExplanation.from_json(json.loads(json.dumps(e_one.to_json()))).equal(e_one)


def test_named_scene_and_one_line_error_for_an_unknown_one(inputs):
    images, graphs = inputs
    explainer = SceneExplainer(_model(), SCENES, steps=4)
    es = explainer.explain(images[:2], graphs[:2], scene="c")
    assert [e.scene for e in es] == ["c", "c"] and [e.scene_index for e in es] == [2, 2]
    es = explainer.explain(images[:2], graphs[:2], scene=[None, 3])
    assert es[1].scene == "d"
    with pytest.raises(ValueError, match=r"^scene 'library' is not in the model's vocabulary; scenes: a, b, c, d$"):
        explainer.explain(images[:1], graphs[:1], scene="library")


def test_explaining_leaves_the_model_as_it_was(inputs):
    images, graphs = inputs
    model = _model().train()
    flags = [p.requires_grad for p in model.parameters()]
    SceneExplainer(model, SCENES, steps=4).explain(images[:1], graphs[:1])
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not model.graph_encoder.input_proj._forward_pre_hooks


def test_stream_contribution_uses_the_stored_means(inputs):
    images, graphs = inputs
    model = _model()
    with torch.no_grad():
        emb = encode_streams(model, images, as_batch(graphs, "cpu"))
    means = {"image_pooled": emb.image_pooled.mean(0), "graph_pooled": emb.graph_pooled.mean(0), "num_images": 3}
    e = SceneExplainer(model, SCENES, parts=("streams",), stream_means=means).explain(images[:1], graphs[:1])[0]
    with torch.no_grad():
        full = classify(model, encode_streams(model, images[:1], as_batch(graphs[:1], "cpu"))).softmax(1)[0]
        replaced = replace_stream(encode_streams(model, images[:1], as_batch(graphs[:1], "cpu")), "image", means)
        by_hand = full[e.scene_index] - classify(model, replaced).softmax(1)[0, e.scene_index]
    assert e.streams["image"] == pytest.approx(float(by_hand), abs=1e-6)
    assert "training-set mean" in e.method
    zero = SceneExplainer(model, SCENES, parts=("streams",)).explain(images[:1], graphs[:1])[0]
    assert "zero embedding" in zero.method and zero.streams["image"] != pytest.approx(e.streams["image"], abs=1e-6)


def _hand_gradcam(module, layer, reshape, images, target):
    """Grad-CAM by hand: ReLU of the gradient-weighted channel sum at ``layer``, bilinear to the input, min-max."""
    import cv2

    seen = {}
    hook = layer.register_forward_hook(lambda m, a, out: seen.setdefault("a", out))
    images = images.clone().requires_grad_()
    try:
        logit = module(images)[0, target]
    finally:
        hook.remove()
    act = seen["a"]
    (grad,) = torch.autograd.grad(logit, act)
    act, grad = (reshape(t) if reshape else t for t in (act, grad))  # (1, C, h, w)
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1))[0].detach().numpy()
    cam = cam - cam.min()
    cam = cam / (1e-7 + cam.max())
    cam = cv2.resize(cam.astype(np.float32), images.shape[-1:-3:-1])
    return (cam - cam.min()) / (1e-7 + cam.max())


@pytest.mark.parametrize("encoder", ["test_resnet", "test_vit", "swin_tiny_patch4_window7_224"])
def test_gradcam_on_resnet_vit_and_swin_with_the_graph_fixed(encoder, inputs):
    from twostream.explain.cam import ImageStreamModule, image_cam

    images, graphs = inputs
    model = _model(f"model.image_encoder.name={encoder}")
    model.requires_grad_(False)
    with torch.no_grad():
        emb = encode_streams(model, images[:1], as_batch(graphs[:1], "cpu"))
    graph = StreamEmbeddings(graph_pooled=emb.graph_pooled, node_emb=emb.node_emb, node_batch=emb.node_batch)
    cams, layer_name = image_cam(model, images[:1], graph, torch.tensor([1]))
    expected = {"test_resnet": "layer4", "test_vit": "blocks.5.norm1", "swin_tiny_patch4_window7_224": "layers.3"}
    assert layer_name == expected[encoder] and cams.shape == (1, 64, 64)
    module = ImageStreamModule(model, graph)
    timm_model = model.image_encoder.model
    if encoder == "test_resnet":
        layer, reshape = timm_model.layer4, None
    elif encoder == "test_vit":
        layer = timm_model.blocks[-1].norm1
        reshape = lambda t: t[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)  # noqa: E731 - 64 px / 16 = 4x4
    else:
        layer, reshape = timm_model.layers[-1], lambda t: t.permute(0, 3, 1, 2)
    np.testing.assert_allclose(cams[0], _hand_gradcam(module, layer, reshape, images[:1], 1), atol=1e-4)
    assert cams[0].max() > cams[0].min()


def test_explanation_json_round_trip_and_order(inputs):
    images, _graphs = inputs
    model = _model("model.fusion.type=cross_attention")
    builder = SceneGraphBuilder(class_table=TABLE)
    _image, sem, _ = render_scene("bedroom", 0, 64)
    conf = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    graph = builder(sem, confidence=conf)
    [e] = SceneExplainer(model, SCENES, steps=4).explain(images[:1], [graph])
    d = json.loads(json.dumps(e.to_json()))
    assert set(d) >= {"scene", "method", "nodes", "edges", "streams"}
    assert set(d["nodes"][0]) == {"id", "name", "score", "occlusion", "confidence"}
    assert set(d["edges"][0]) == {"source", "target", "score", "occlusion"}
    assert set(d["streams"]) == {"image", "graph"}
    scores = [n["score"] for n in d["nodes"]]
    assert scores == sorted(scores, reverse=True) and sorted(n["id"] for n in d["nodes"]) == list(range(e.num_nodes))
    assert [x["score"] for x in d["edges"]] == sorted((x["score"] for x in d["edges"]), reverse=True)
    back = SceneExplanation.from_json(d)
    assert back.equal(e)
    assert back.to_json() == d
    low = int(np.argmin(e.node_confidence))
    assert e.node_confidence[low] < 0.6 and "(confidence" in e.node_label(low)
    with pytest.raises(ValueError, match="expected an object with scene"):
        SceneExplanation.from_json({"nodes": []})


def _relation_graphs(seeds: range) -> tuple[list, list[int], list[str]]:
    """Class-only graphs of relation-only layouts (geometry zeroed: only which objects touch tells them apart)."""
    builder = SceneGraphBuilder(class_table=TABLE)
    graphs, labels, names = [], [], []
    for seed in seeds:
        for k, scene in enumerate(sorted(RELATION_SCENES)):
            data = builder(render_scene(scene, seed, 64, relation_only=True)[1]).to_pyg()
            data.x = torch.zeros_like(data.x)
            graphs.append(data)
            labels.append(k)
            names.append(f"{scene}_{seed}")
    return graphs, labels, names


def _trained_relation_gat(graphs: list, labels: list[int]) -> TwoStreamClassifier:
    """A tiny graph-only GAT (class-only inputs, no edge attributes) trained for 60 full-batch steps on ``graphs``;
    returned in eval mode."""
    from torch_geometric.data import Batch

    torch.manual_seed(0)
    model = TwoStreamClassifier(num_scenes=2, graph_encoder=GraphEncoder(
        len(TABLE), conv="gat", hidden_dim=16, heads=2, num_layers=2, class_embed_dim=8, dropout=0.0,
        use_edge_attr=False), head_dropout=0.0)
    batch, y = Batch.from_data_list(graphs), torch.tensor(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images = torch.zeros(len(graphs), 3, 8, 8)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(images, batch)["logits"], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_randomisation_test_separates_trained_from_random_weights():
    """A tiny graph-only GAT trained on relation-only graphs points at the deciding contact; the same architecture
    with random weights does not (Adebayo et al.)."""
    from torch_geometric.data import Batch

    scenes = sorted(RELATION_SCENES)
    train, labels, _ = _relation_graphs(range(100, 124))
    model = _trained_relation_gat(train, labels)
    val, val_labels, names = _relation_graphs(range(12))
    evaluator = ExplanationEvaluator(model, scenes, class_table=TABLE, steps=16, relation_only=names,
                                     relation_scenes=RELATION_SCENES)
    vb = Batch.from_data_list(val)
    evaluator.process({"image": torch.zeros(len(val), 3, 8, 8), "scene": torch.tensor(val_labels), "name": names,
                       "graph": vb}, {})
    m = evaluator.evaluate()["relation_only"]
    assert m["num_correct"] >= 0.9 * m["num_images"]
    assert m["hit_rate"] >= 0.9 and min(m["hit_rate_by_scene"].values()) >= 0.9
    assert m["random_weights_hit_rate"] <= m["chance"] + 0.15 and m["hit_rate"] - m["random_weights_hit_rate"] > 0.6
    # inserting the absent contact only adds candidates that count as hits: never below the occlusion hit rate
    assert m["hit_rate_counterfactual"] >= m["hit_rate_occlusion"] and m["chance_counterfactual"] > m["chance"]
    copies = m["random_weights_per_copy"]["score"]  # five randomised copies by default, their mean reported
    assert len(copies) == 5 and m["random_weights_hit_rate"] == pytest.approx(float(np.mean(copies)))
    heads = [r.model.head.weight for r in evaluator._random_explainers]  # five different random models
    assert all(not torch.equal(heads[0], h) for h in heads[1:])
    with pytest.raises(ValueError, match="random_models must be at least 1"):
        ExplanationEvaluator(model, scenes, class_table=TABLE, random_models=0)


def test_shared_backbone_with_online_graphs_is_explained(inputs):
    """The model builds its own graphs (with segmenter confidence) and the CAM sits on the shared C5 map."""
    images, _ = inputs
    model = _model("model.segmenter.kind=upsnet", "model.segmenter.backbone=resnet10t",
                   "model.segmenter.fpn_channels=16", "model.segmenter.head_channels=8",
                   "model.segmenter.deformable=false", "model.shared_backbone=true", "graph.source=online")
    passes, backbone_features = [], model.backbone_features
    model.backbone_features = lambda x: passes.append(x.shape) or backbone_features(x)
    [e] = SceneExplainer(model, SCENES, steps=4).explain(images[:1])
    assert "shared backbone" in e.method and e.cam.shape == (64, 64) and e.cam.max() > e.cam.min()
    assert e.node_confidence is not None and e.node_scores.shape == (e.num_nodes,)
    assert len(passes) == 1  # the frozen backbone runs once, as in the model's forward: graphs, image stream, CAM
    with torch.no_grad():
        model(images[:1])
    assert len(passes) == 2


def _with_edge(graph: SceneGraph, a: int, b: int, boundary: float) -> SceneGraph:
    d = graph.to_json()
    d["edges"].append({"source": min(a, b), "target": max(a, b), "boundary": boundary})
    return SceneGraph.from_json(d)


@pytest.mark.parametrize("extra", [(), ("model.gnn.type=gcn", "model.fusion.type=sum")])
def test_insertion_equals_the_model_on_the_graph_with_the_contact_added(extra, inputs):
    """insertion_probs: every absent contact added, in one batch, against the model run on each graph built with it
    (edge attributes recomputed for the pair, the boundary copied from the named edge)."""
    from twostream.explain.occlusion import insertion_probs

    images, graphs = inputs
    model = _model(*extra)
    image, graph = images[:1], graphs[0]
    n = graph.num_nodes
    touching = {tuple(p) for p in graph.undirected_edges()[0].t().tolist()}
    absent = [(a, b) for a in range(n) for b in range(a + 1, n) if (a, b) not in touching][:6]
    like = torch.tensor([0, 3, -1, 5, 1, 2][:len(absent)])
    with torch.no_grad():
        probs = model(image, [graph])["logits"].softmax(dim=1)[0]
        scene = int(probs.argmax())
        emb = encode_streams(model, image, as_batch([graph], "cpu"))
        got = insertion_probs(model, graph.to_pyg(), emb.select(0), scene, torch.tensor(absent), like)
        loop = [model(image, [_with_edge(graph, a, b, float(graph.boundary[k]) if k >= 0 else 0.0)])["logits"]
                .softmax(1)[0, scene] for (a, b), k in zip(absent, like.tolist())]
    assert len(absent) >= 3
    torch.testing.assert_close(got, torch.stack(loop), rtol=0, atol=2e-6)
    assert (got - probs[scene]).abs().max() > 1e-4  # the check is not vacuous


def test_counterfactual_hit_rate_credits_a_decision_by_an_absent_contact():
    """Dining rooms drawn without any contact to the table (living rooms keep sofa–table): a model can only decide
    a dining room by the *absence* of sofa–table. No present edge is a deciding one there, so the hit rate misses
    every dining room; inserting sofa–table costs the dining room most, and the counterfactual hit rate finds it."""
    from torch_geometric.data import Batch

    chair, table = TABLE.index("chair"), TABLE.index("table")

    def absent_chair_table(graphs, labels):
        out = []
        for data, y in zip(graphs, labels):
            if y == 0:  # dining_room: drop chair–table
                lab = data.labels[data.edge_index]
                keep = ~(((lab[0] == chair) & (lab[1] == table)) | ((lab[0] == table) & (lab[1] == chair)))
                data.edge_index, data.edge_attr = data.edge_index[:, keep], data.edge_attr[keep]
                data.boundary = data.boundary[keep]
            out.append(data)
        return out

    scenes = sorted(RELATION_SCENES)
    train, labels, _ = _relation_graphs(range(100, 124))
    model = _trained_relation_gat(absent_chair_table(train, labels), labels)
    val, val_labels, names = _relation_graphs(range(12))
    val = absent_chair_table(val, val_labels)
    evaluator = ExplanationEvaluator(model, scenes, class_table=TABLE, steps=8, relation_only=names,
                                     relation_scenes=RELATION_SCENES, random_model=False)
    evaluator.process({"image": torch.zeros(len(val), 3, 8, 8), "scene": torch.tensor(val_labels), "name": names,
                       "graph": Batch.from_data_list(val)}, {})
    m = evaluator.evaluate()["relation_only"]
    assert m["num_correct"] >= 0.9 * m["num_images"]
    assert m["hit_rate_by_scene"]["dining_room"] == 0.0  # the deciding contact is not there to be ranked
    assert m["hit_rate_counterfactual"] >= 0.9 and m["hit_rate_counterfactual"] > m["hit_rate_occlusion"] + 0.3
    assert m["deciding_edges"] == {"dining_room": "chair-table", "living_room": "sofa-table"}


def test_relation_contacts_of_a_synthetic_set(tmp_path):
    from twostream.data.synthetic import make_synthetic
    from twostream.explain.evaluation import relation_contacts

    make_synthetic(tmp_path / "dm", train_per_scene=1, val_per_scene=0, size=64, scenes=["dining_room"],
                   relation_fraction=1.0, relation_layout="irregular_degree_matched")
    assert relation_contacts(tmp_path / "dm")["dining_room"] == [("chair", "table"), ("sofa", "shelf")]
    old = tmp_path / "old"  # a set written before relation_contacts was recorded
    old.mkdir()
    (old / "synthetic.json").write_text(json.dumps({"relation_scenes": RELATION_SCENES, "relation_only": []}))
    assert relation_contacts(old) == {"dining_room": [("chair", "table")], "living_room": [("sofa", "table")]}
    assert relation_contacts(tmp_path / "none") == {}


def test_scoring_explanations_leaves_the_model_in_eval_mode(inputs):
    """PyG's fidelity (run after each batch's explanations) must not leave the classifier training: under
    tools/eval.py --explain the next batches would run with BatchNorm on batch statistics, updating them (measured:
    a two-stream ResNet scored 91.5% there against 100% without --explain)."""
    images, graphs = inputs
    model = _model("model.image_encoder.name=resnet10t")
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    with torch.no_grad():
        before = model(images, graphs)["logits"]
    evaluator = ExplanationEvaluator(model, SCENES, class_table=TABLE, steps=4, random_model=False)
    batch = {"image": images, "scene": torch.tensor([0, 1, 2]), "name": ["a", "b", "c"],
             "graph": as_batch(graphs, "cpu")}
    for _ in range(2):  # a second batch after the first one's fidelity
        evaluator.process(batch, {})
        assert not model.training and not any(m.training for m in model.modules())
    assert "fidelity" in evaluator.evaluate()  # the PyG call did run
    with torch.no_grad():
        after = model(images, graphs)["logits"]
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_check_table_shows_every_rate():
    from twostream.explain.check import format_check_table

    row = {"variant": "class_only_s0", "top1": 1.0, "relation_only": {
        "num_images": 200, "num_correct": 199, "hit_rate": 0.5, "hit_rate_occlusion": 0.75,
        "hit_rate_counterfactual": 1.0, "random_weights_hit_rate": 0.267, "random_weights_hit_rate_occlusion": 0.157,
        "random_weights_hit_rate_counterfactual": 0.2, "chance": 0.108},
        "deletion": {"top": [0.25], "random": [0.05]}, "fidelity": {"fid_plus": [0.7], "fid_minus": [0.0]}}
    header, _, line = format_check_table([row, {"variant": "image_only", "top1": 0.9}]).splitlines()[:3]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert "hit rate (counterfactual)" in header and len(cells) == header.count("|") - 1
    assert cells == ["class_only_s0", "100.0%", "199/200", "50.0%", "75.0%", "100.0%", "26.7%", "15.7%", "20.0%",
                     "10.8%", "+0.250 vs +0.050", "0.70 / 0.00"]
