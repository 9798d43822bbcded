"""TwoStreamClassifier / build_model: every shipped config builds and trains a step, shared backbone, online graphs,
frozen and trainable segmenters, single-stream baselines."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from twostream.benchmark.inference import CI_OVERRIDES
from twostream.config import ConfigError, load_config
from twostream.data.classes import ade20k150
from twostream.graph.builder import SceneGraphBuilder
from twostream.models.image_encoder import FeatureMapEncoder, ImageEncoder
from twostream.models.two_stream import TwoStreamClassifier, build_model, format_parameter_table

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml"))  # classifier configs; configs/seg/ is another stage
TABLE = ade20k150()
S = 5  # scenes
SIZE = 64

# Small sizes for every config: 64 px, narrow GNN / fusion / segmenter, no downloads. ViT and ResNet configs get timm's
# tiny test models of the same family; Swin-T is the smallest registered Swin and stays.
SMALL = [
    f"data.image_size=[{SIZE}, {SIZE}]",
    "model.image_encoder.pretrained=false",
    "model.segmenter.pretrained=false",
    *CI_OVERRIDES,  # the toy widths the inference benchmark's --ci rows use too
]
TINY_TIMM = {"vit_": "test_vit", "resnet": "test_resnet"}


def small_config(path: Path, extra: list[str] | None = None):
    cfg = load_config(path)
    overrides = list(SMALL)
    for prefix, tiny in TINY_TIMM.items():
        if cfg.model.image_encoder.name.startswith(prefix):
            overrides.append(f"model.image_encoder.name={tiny}")
    return load_config(path, overrides + list(extra or []))


def label_maps() -> torch.Tensor:
    """``(2, 64, 64)``: a room (wall, floor, bed, lamp touching the bed) and an all-'other' map (a graph of 0 nodes)."""
    maps = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
    maps[0, :40] = TABLE.index("wall")
    maps[0, 40:] = TABLE.index("floor")
    maps[0, 30:50, 10:40] = TABLE.index("bed")
    maps[0, 20:30, 40:48] = TABLE.index("lamp")
    return maps


def graphs_for(cfg):
    return SceneGraphBuilder.from_config(cfg.graph, TABLE).build_batch(label_maps())


def forward_backward(model: TwoStreamClassifier, cfg, graphs=None) -> dict:
    torch.manual_seed(0)
    out = model(torch.rand(2, 3, SIZE, SIZE), graphs)
    assert out["logits"].shape == (2, S) and torch.isfinite(out["logits"]).all()
    (out["logits"] * torch.randn_like(out["logits"])).sum().backward()
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_builds_and_trains_one_step(path, tmp_path_factory):
    extra = []
    if load_config(path).model.segmenter.kind == "hf":  # a hub model (configs/places365_*): a tiny local one here
        pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
        from test_hf_segmenter import HF_ADE20K_NAMES, _save_segformer

        extra = [f"model.segmenter.hf_model={_save_segformer(tmp_path_factory.mktemp('hf'), HF_ADE20K_NAMES)}"]
    cfg = small_config(path, extra)
    torch.manual_seed(0)
    model = build_model(cfg, num_scenes=S, class_table=TABLE).train()
    online = cfg.graph.source == "online"
    graphs = None if online or not cfg.model.gnn.enabled else graphs_for(cfg)
    out = forward_backward(model, cfg, graphs)
    assert ("graphs" in out) == (online and cfg.model.gnn.enabled)

    assert (model.image_encoder is not None) == cfg.model.image_encoder.enabled
    assert (model.graph_encoder is not None) == cfg.model.gnn.enabled
    needs_segmenter = cfg.model.gnn.enabled and cfg.model.segmenter.kind != "none"  # kind none: annotation graphs
    assert (model.segmenter is None) == (not needs_segmenter and not cfg.model.shared_backbone)
    if model.segmenter is not None:  # frozen: no gradients, and still in eval mode after model.train()
        assert not model.segmenter.training
        assert all(not p.requires_grad and p.grad is None for p in model.segmenter.parameters())
    # every trainable parameter is reached (a zero gradient for the empty-graph embedding when no graph was empty), so
    # DistributedDataParallel never waits for a gradient that does not come
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_shared_backbone_runs_the_backbone_once():
    cfg = small_config(REPO / "configs" / "shared_swin_gat.yaml")
    model = build_model(cfg, num_scenes=S, class_table=TABLE).train()
    assert isinstance(model.image_encoder, FeatureMapEncoder)
    assert model.image_encoder.in_channels == model.segmenter.backbone.out_channels[-1]
    calls = []
    model.segmenter.backbone.register_forward_hook(lambda *_: calls.append(1))
    out = forward_backward(model, cfg)
    assert len(calls) == 1 and len(out["graphs"]) == 2
    model.eval()
    with torch.no_grad():
        model(torch.rand(3, 3, SIZE, SIZE))
    assert len(calls) == 2  # once per batch, in eval too

    # the same model without sharing: the segmenter's backbone still runs once, and a separate timm encoder too
    separate = build_model(small_config(REPO / "configs" / "swin_gat.yaml", ["graph.source=online"]), S, TABLE)
    seg_calls, timm_calls = [], []
    separate.segmenter.backbone.register_forward_hook(lambda *_: seg_calls.append(1))
    separate.image_encoder.model.forward_features = _counted(separate.image_encoder.model.forward_features, timm_calls)
    separate(torch.rand(2, 3, SIZE, SIZE))
    assert len(seg_calls) == 1 and len(timm_calls) == 1


def _counted(fn, calls):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapper


def test_online_graphs_are_the_builders_graphs_of_the_segmenters_argmax():
    cfg = small_config(REPO / "configs" / "swin_gcn.yaml", ["graph.source=online"])
    model = build_model(cfg, num_scenes=S, class_table=TABLE).eval()
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(images, graphs_for(cfg))  # online: the given graphs are ignored
        expected = SceneGraphBuilder.from_config(cfg.graph, TABLE).build_batch(model.segmenter.predict(images))
    assert out["sem_logits"].shape == (2, len(TABLE), SIZE, SIZE)
    for got, want in zip(out["graphs"], expected):
        assert torch.equal(got.labels, want.labels) and torch.equal(got.edge_index, want.edge_index)


def test_pooled_features_and_a_trainable_segmenter():
    cfg = small_config(REPO / "configs" / "swin_gat.yaml",
                       ["graph.source=online", "graph.pool_features=true", "model.segmenter.trainable=true",
                        "model.image_encoder.name=test_vit"])
    model = build_model(cfg, num_scenes=S, class_table=TABLE)
    assert model.graph_encoder.feature_dim == model.segmenter.feature_dim
    model.train()
    assert model.segmenter.training
    out = forward_backward(model, cfg)
    assert out["graphs"][0].features.shape[1] == model.segmenter.feature_dim
    # the scene loss reaches the segmenter through the features pooled under each node
    head_grads = [p.grad for p in model.segmenter.semantic_head.parameters() if p.grad is not None]
    assert head_grads and any(g.abs().sum() > 0 for g in head_grads)


def test_a_trainable_segmenter_needs_a_gradient_path():
    # a cross-key rule: the config's validation says it, once (build_model does not repeat it)
    with pytest.raises(ConfigError, match=r"graph\.pool_features=true or model\.shared_backbone=true"):
        small_config(REPO / "configs" / "vit_gat.yaml", ["graph.source=online", "model.segmenter.trainable=true"])


def test_single_stream_models_and_missing_graphs():
    image_only = build_model(small_config(REPO / "configs" / "image_only_swin.yaml",
                                          ["model.image_encoder.name=test_resnet"]), S, TABLE)
    assert image_only.segmenter is None and image_only.graph_encoder is None and image_only.fusion is None
    assert image_only.num_features == image_only.image_encoder.num_features

    cfg = small_config(REPO / "configs" / "graph_only_gat.yaml", ["model.segmenter.kind=none", "graph.source=gt"])
    graph_only = build_model(cfg, S, TABLE).eval()
    assert graph_only.segmenter is None and graph_only.image_encoder is None
    images = torch.rand(2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="pass graphs to forward"):
        graph_only(images)
    from_list = graph_only(images, graphs_for(cfg))["logits"]  # list[SceneGraph] is accepted too
    from torch_geometric.data import Batch

    from_batch = graph_only(images, Batch.from_data_list([g.to_pyg() for g in graphs_for(cfg)]))["logits"]
    torch.testing.assert_close(from_list, from_batch)
    with pytest.raises(ValueError, match="1 graphs for 2 images"):
        graph_only(images, graphs_for(cfg)[:1])
    one = graph_only(images[:1], graphs_for(cfg)[0].to_pyg())["logits"]  # a single Data for a batch of one
    torch.testing.assert_close(one, from_list[:1])


def test_timm_contract_and_parameter_table(caplog):
    cfg = small_config(REPO / "configs" / "vit_sage.yaml", ["model.fusion.type=gated"])
    with caplog.at_level(logging.INFO, logger="twostream.models.two_stream"):
        model = build_model(cfg, S, TABLE).eval()
    assert "graph_encoder" in caplog.text and "total" in caplog.text
    assert isinstance(model.image_encoder, ImageEncoder) and model.num_features == 16
    images, graphs = torch.rand(2, 3, SIZE, SIZE), graphs_for(cfg)
    with torch.no_grad():
        feats = model.forward_features(images, graphs)
        torch.testing.assert_close(model.forward_head(feats), model(images, graphs)["logits"])
    assert feats.shape == (2, 16) and model.forward_head(feats, pre_logits=True).shape == (2, 16)
    counts = model.parameter_counts()
    assert counts["head"][0] == 2 * 16 + 16 * S + S and counts["segmenter"][1] == 0
    assert sum(c[0] for c in counts.values()) == sum(p.numel() for p in model.parameters())
    assert format_parameter_table({"a": (1000, 10)}).splitlines()[-1].split() == ["total", "1,000", "10"]


def test_build_refuses_a_segmenter_without_the_capability_in_one_line():
    cfg = small_config(REPO / "configs" / "vit_gat.yaml", ["graph.source=online", "model.segmenter.kind=hf",
                                                            "model.shared_backbone=true"])
    with pytest.raises(ValueError) as info:
        build_model(cfg, S, TABLE)
    message = str(info.value)
    assert "\n" not in message and message.startswith("model.shared_backbone needs a segmenter with the capability "
                                                       "shares_backbone")
    assert "'hf' (HFSegmenter) does not declare it" in message and "kinds that do: upsnet" in message


def test_the_constructor_checks_its_own_arguments():
    with pytest.raises(ValueError, match="image_encoder and graph_encoder are both None"):
        TwoStreamClassifier(num_scenes=S)
    encoder = FeatureMapEncoder(8)
    with pytest.raises(ValueError, match="fusion module exactly when both"):
        TwoStreamClassifier(num_scenes=S, image_encoder=encoder, fusion=torch.nn.Identity())
