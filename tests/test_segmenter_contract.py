"""The segmenter contract: the table and the config agree, identities need no model, a new kind is one class plus one
table entry and runs end to end, and a kind lacking a capability is refused in one line naming it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path

import pytest
import torch
from conftest import register_segmenter_kind

from twostream.config import SegmenterConfig, load_config
from twostream.data.classes import ade20k150
from twostream.models import segmenter as segmenter_table
from twostream.models.label_alignment import LOW_LOGIT
from twostream.models.segmenter import SEGMENTERS, parse_segmenter_spec, segmenter_class, segmenter_identity
from twostream.models.segmenter_base import Segmenter

TABLE = ade20k150()
TOY_LABELS = ("wall", "floor", "bed")


class ToySegmenter(Segmenter):
    """A new kind in one class: each pixel is the class of its brightest colour channel (R wall, G floor, B bed)."""

    kind = "toy"
    spec_form = "toy:SCALE"

    def __init__(self, class_table, scale: float = 1.0) -> None:
        super().__init__()
        self.class_table, self.scale = class_table, scale
        self.register_buffer("labels", torch.tensor([class_table.index(n) for n in TOY_LABELS]), persistent=False)

    def forward(self, images, targets=None) -> dict:
        b, _, h, w = images.shape
        logits = images.new_full((b, len(self.class_table), h, w), LOW_LOGIT)
        logits[:, self.labels] = self.scale * images  # (B, 3, H, W) into the three channels
        return {"sem_logits": logits}

    @classmethod
    def from_config(cls, cfg, class_table):
        return cls(class_table, scale=float(cfg.head_channels))

    @classmethod
    def config_from_spec(cls, rest, base):
        return dataclasses.replace(base, kind=cls.kind, head_channels=int(rest))

    @classmethod
    def cache_identity(cls, cfg):
        return f"toy:{cfg.head_channels}"


@pytest.fixture
def toy_kind(monkeypatch):
    """The table entry (and the kind's name in the config, which the Literal test keeps equal to the table)."""
    return register_segmenter_kind(monkeypatch, "toy", ToySegmenter)


def toy_labels(images: torch.Tensor) -> torch.Tensor:
    """What the toy kind predicts, computed independently: ``(B, H, W)`` labels."""
    lut = torch.tensor([TABLE.index(n) for n in TOY_LABELS])
    return lut[images.argmax(dim=1)]


# --------------------------------------------------------------------------------------------------------------------
# The table and the config
# --------------------------------------------------------------------------------------------------------------------


def test_config_kinds_are_the_table_kinds_and_none():
    kinds = typing.get_args(typing.get_type_hints(SegmenterConfig)["kind"])
    assert kinds == (*SEGMENTERS, "none")


def test_every_kind_declares_the_contract():
    for kind, cls in SEGMENTERS.items():
        assert issubclass(cls, Segmenter) and cls.kind == kind and cls.spec_form.startswith(f"{kind}:")
        for method in ("from_config", "config_from_spec", "cache_identity", "forward"):
            assert getattr(cls, method) is not getattr(Segmenter, method, None), (kind, method)
        if cls.shares_backbone:  # the three backbone members are its own
            for member in ("forward_features", "forward_from_features", "backbone_dim"):
                assert getattr(cls, member) is not getattr(Segmenter, member), (kind, member)
    with pytest.raises(ValueError, match="unknown segmenter kind 'nope'; known: upsnet, hf, detectron2"):
        segmenter_class("nope")


def test_identities_come_from_the_config_alone(tmp_path):
    ckpt = tmp_path / "seg.pth"
    ckpt.write_bytes(b"trained weights")
    digest = hashlib.sha256(b"trained weights").hexdigest()[:16]
    upsnet = SegmenterConfig(kind="upsnet", checkpoint=str(ckpt))
    assert segmenter_identity(upsnet) == digest
    with pytest.raises(ValueError, match="need the segmenter checkpoint"):
        segmenter_identity(SegmenterConfig(kind="upsnet"))
    hub = SegmenterConfig(kind="hf", hf_model="org/seg-a")
    assert segmenter_identity(hub) == "hf:org/seg-a"
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"one")
    (folder / "config.json").write_text("{}")
    local = SegmenterConfig(kind="hf", hf_model=str(folder))
    before = segmenter_identity(local)
    (folder / "model.safetensors").write_bytes(b"two")  # retrained in place: another identity
    assert segmenter_identity(local) != before and segmenter_identity(local).startswith("hf:")
    weights = tmp_path / "model.pkl"
    weights.write_bytes(b"d2")
    d2 = SegmenterConfig(kind="detectron2", d2_config="zoo/pfpn.yaml", d2_weights=str(weights),
                         d2_opts=["INPUT.MIN_SIZE_TEST", 512])
    d2_digest = hashlib.sha256(b"d2").hexdigest()[:16]
    assert segmenter_identity(d2) == f"d2:zoo/pfpn.yaml@{d2_digest} INPUT.MIN_SIZE_TEST 512"
    assert segmenter_identity(SegmenterConfig(kind="detectron2", d2_config="zoo/pfpn.yaml")) == "d2:zoo/pfpn.yaml@"
    with pytest.raises(ValueError, match="kind is 'none'"):
        segmenter_identity(SegmenterConfig(kind="none"))
    # the graph store takes this identity as an opaque string; the engine asks the segmenter's class for it
    from twostream.engine import graph_caches

    for cfg in (upsnet, hub, local, d2):
        assert graph_caches.segmenter_identity(cfg) == segmenter_identity(cfg)


# --------------------------------------------------------------------------------------------------------------------
# A new kind, end to end
# --------------------------------------------------------------------------------------------------------------------


def test_a_new_kind_is_one_class_plus_one_table_entry(toy_kind, synthetic_root, tiny_config, tmp_path):
    from twostream.engine.evaluate import evaluate_checkpoint
    from twostream.engine.graph_caches import build_split_caches
    from twostream.engine.segmenters import segmenter_from_spec
    from twostream.engine.trainer import train
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.inference import Predictor

    # the spec, the identity and the predictor's factory know it
    assert parse_segmenter_spec("toy:3") == SegmenterConfig(kind="toy", head_channels=3)
    assert "toy:SCALE" in segmenter_table.spec_forms()
    segmenter, _, native = segmenter_from_spec("toy:3")
    assert isinstance(segmenter, ToySegmenter) and segmenter.scale == 3.0 and not native

    # a classifier trains with it (graphs built online from its predictions), evaluates and predicts
    run = tmp_path / "run"
    cfg = tiny_config(synthetic_root, run, "model.segmenter.kind=toy", "model.segmenter.head_channels=3",
                      "graph.source=online", "train.epochs=1")
    metrics = train(cfg)
    assert metrics["num_images"] == 16
    evaluated = evaluate_checkpoint(run, out_dir=tmp_path / "eval", device="cpu")
    assert evaluated["graphs"] == "online" and evaluated["segmentation"]["num_images"] == 16
    assert evaluated["graph_quality"]["images"] == 16

    image = torch.rand(64, 64, 3)
    pred = Predictor.from_checkpoint(run).predict([(image * 255).to(torch.uint8).numpy()])[0]
    builder = SceneGraphBuilder.from_config(cfg.graph, TABLE)
    expected = builder(toy_labels((image * 255).to(torch.uint8).float().permute(2, 0, 1)[None] / 255)[0])
    assert pred.graph.labels.tolist() == expected.labels.tolist() and len(pred.scenes) == 4
    assert torch.equal(pred.graph.edge_index, expected.edge_index)

    # and its predictions become a graph cache keyed on its identity
    [cache] = build_split_caches(cfg, source="pred", splits=["validation"], out=tmp_path / "cache", device="cpu",
                                 workers=0, progress=False)
    assert json.loads((tmp_path / "cache" / "store.json").read_text())["segmenter"] == "toy:3"
    assert cache.segmenter == "toy:3"
    from twostream.data.ade20k import ADE20KDataset
    from twostream.data.transforms import build_transforms

    item = ADE20KDataset(synthetic_root, "validation", None, transform=build_transforms(cfg.data, train=False))[0]
    graph = cache.get(item["name"])
    assert graph.labels.tolist() == builder(toy_labels(item["image"][None])[0]).labels.tolist()


def test_a_kind_without_a_capability_is_refused_in_one_line(toy_kind, tiny_config, tmp_path):
    from twostream.models.two_stream import build_model

    cfg = tiny_config(tmp_path, tmp_path / "run", "model.segmenter.kind=toy", "graph.source=online",
                      "model.shared_backbone=true")
    with pytest.raises(ValueError) as info:
        build_model(cfg, num_scenes=4, class_table=TABLE)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model.shared_backbone needs a segmenter with the capability shares_backbone")
    assert "segmenter kind 'toy' (ToySegmenter) does not declare it; kinds that do: upsnet" in message

    cfg = tiny_config(tmp_path, tmp_path / "run", "model.segmenter.kind=toy", "graph.source=online",
                      "graph.pool_features=true")
    with pytest.raises(ValueError, match=r"^graph\.pool_features needs a segmenter with the capability feature_dim "
                                         r"\(.*\); segmenter kind 'toy' \(ToySegmenter\) does not declare it$"):
        build_model(cfg, num_scenes=4, class_table=TABLE)
    with pytest.raises(NotImplementedError, match="capability shares_backbone"):
        ToySegmenter(TABLE).forward_features(torch.rand(1, 3, 8, 8))


def test_build_model_uses_what_upsnet_declares():
    from twostream.models.two_stream import build_model

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "vit_gat.yaml", [
        "data.image_size=[64, 64]", "model.image_encoder.pretrained=false", "model.segmenter.backbone=resnet10t",
        "model.segmenter.fpn_channels=16", "model.segmenter.head_channels=8", "model.segmenter.deformable=false",
        "model.gnn.hidden_dim=16", "model.gnn.heads=2", "model.gnn.num_layers=2", "model.fusion.dim=16",
        "graph.source=online", "model.shared_backbone=true", "graph.pool_features=true"])
    model = build_model(cfg, num_scenes=3, class_table=TABLE)
    seg = model.segmenter
    assert model.image_encoder.in_channels == seg.backbone_dim == seg.backbone.out_channels[-1]
    assert model.graph_encoder.feature_dim == seg.feature_dim == 4 * 8
