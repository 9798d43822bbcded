"""Segment at the segmenter's own resolution, classify at the encoder's (issue 17, docs/resolution.md).

A stand-in segmenter kind, ``oracle``, recognises each image of the dataset (the nearest of the originals, resized to
what it is given) and returns that image's annotation at whatever size it is given. With the classifier at 128 px
and the segmenter at 256 px (the images' own size) every path that runs a segmenter must build exactly the graph of
the 256-px annotation: the graph store (``--source pred``), the model's online graphs, the predictor (and the JSON
``tools/infer.py`` writes, which names the size), and ``tools/eval.py`` scores it perfect against the original
annotation. The old behaviour (the segmenter at ``data.image_size``) gives the 128-px graph, in another store.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import register_segmenter_kind

from twostream.config import SegmenterConfig
from twostream.data.classes import ade20k150
from twostream.data.io import load_image, load_label
from twostream.graph.builder import SceneGraphBuilder
from twostream.models.label_alignment import LOW_LOGIT
from twostream.models.segmenter_base import Segmenter

TABLE = ade20k150()
ORIGINAL, SEGMENTER, ENCODER = 256, 256, 128  # px: the images, the segmenter's input, the image encoder's input
ORACLE_ROOT: list[Path] = []  # the dataset the oracle knows (set by the fixture)


class OracleSegmenter(Segmenter):
    """Returns the annotation of the image it is given, at the size it is given (nearest-exact, as masks resize)."""

    kind = "oracle"
    spec_form = "oracle:ANY"
    stride = 32  # as UPSNet: the sizes here are multiples, so nothing is padded

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.class_table = TABLE
        images, labels = [], []
        for split in ("training", "validation"):
            for path in sorted((root / "images" / split).glob("*.jpg")):
                images.append(torch.from_numpy(load_image(path)).permute(2, 0, 1).float() / 255)
                labels.append(torch.from_numpy(load_label(root / "annotations" / split / f"{path.stem}.png")).long())
        self.images, self.labels = torch.stack(images), torch.stack(labels)  # (N, 3, H, W), (N, H, W)

    def annotation(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` -> ``(B, h, w)``: the annotation of the nearest original, at ``(h, w)``."""
        size = tuple(images.shape[-2:])
        refs = F.interpolate(self.images, size=size, mode="bilinear", antialias=True, align_corners=False)
        nearest = ((images[:, None].cpu() - refs[None]) ** 2).flatten(2).mean(2).argmin(dim=1)  # (B,)
        labels = F.interpolate(self.labels[nearest, None].float(), size=size, mode="nearest-exact")
        return labels[:, 0].long().to(images.device)

    def forward(self, images, targets=None) -> dict:
        labels = self.annotation(images)
        logits = images.new_full((images.shape[0], len(TABLE), *images.shape[-2:]), LOW_LOGIT)
        return {"sem_logits": logits.scatter(1, labels[:, None], 10.0)}

    @classmethod
    def from_config(cls, cfg, class_table):
        return cls(ORACLE_ROOT[0])

    @classmethod
    def config_from_spec(cls, rest, base):
        return dataclasses.replace(base, kind=cls.kind)

    @classmethod
    def cache_identity(cls, cfg):
        return "oracle"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from twostream.data.synthetic import make_synthetic

    path = tmp_path_factory.mktemp("res") / "ade"
    make_synthetic(path, train_per_scene=3, val_per_scene=2, size=ORIGINAL, seed=3, scenes=["bedroom", "street"])
    ORACLE_ROOT[:] = [path]
    return path


@pytest.fixture
def oracle(monkeypatch, root):
    """The table entry and the kind's name in the config (as tests/test_segmenter_contract.py adds a kind)."""
    return register_segmenter_kind(monkeypatch, "oracle", OracleSegmenter)


def config(tiny_config, root: Path, out: Path, *extra: str):
    return tiny_config(root, out, f"data.image_size=[{ENCODER}, {ENCODER}]", "model.segmenter.kind=oracle",
                       f"model.segmenter.input_size=[{SEGMENTER}, {SEGMENTER}]", "graph.source=online", *extra)


def annotation_graph(builder: SceneGraphBuilder, root: Path, split: str, name: str, size: int | None = None):
    """The graph of an annotation, at its own size or resized to ``size`` (nearest-exact) first."""
    labels = torch.from_numpy(load_label(root / "annotations" / split / f"{name}.png")).long()
    if size is not None:
        labels = F.interpolate(labels[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0].long()
    return builder(labels)


def same_graph(graph, expected) -> bool:
    """Equal up to the segmenter's confidence, which annotations do not have (checked apart)."""
    assert graph.confidence is not None and bool(((graph.confidence > 0.99) & (graph.confidence <= 1)).all())
    return dataclasses.replace(graph.to("cpu"), confidence=None).equal(expected)


def test_graph_store_builds_at_the_segmenters_size(oracle, root, tiny_config, tmp_path):
    from twostream.engine.graph_caches import build_split_caches, default_cache_dir
    from twostream.graph.store import GraphStore

    cfg = config(tiny_config, root, tmp_path / "run")
    builder = SceneGraphBuilder.from_config(cfg.graph, TABLE)
    [store] = build_split_caches(cfg, source="pred", splits=["validation"], device="cpu", workers=0, progress=False)
    assert len(store) == 4 and store.map_size["segmenter_input"]["size"] == [SEGMENTER, SEGMENTER]
    for name in store.names:
        graph = store.get(name)
        assert graph.image_size == (SEGMENTER, SEGMENTER)
        assert same_graph(graph, annotation_graph(builder, root, "validation", name))

    # today's behaviour (the segmenter at data.image_size): the 128-px graphs, in another store
    old = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, segmenter=dataclasses.replace(cfg.model.segmenter, input_size=None)))
    assert default_cache_dir(old, "validation", "pred") != default_cache_dir(cfg, "validation", "pred")
    [small] = build_split_caches(old, source="pred", splits=["validation"], device="cpu", workers=0, progress=False)
    differ = 0
    for name in small.names:
        graph = small.get(name)
        assert graph.image_size == (ENCODER, ENCODER)
        assert same_graph(graph, annotation_graph(builder, root, "validation", name, size=ENCODER))
        differ += not same_graph(store.get(name), dataclasses.replace(graph, confidence=None))
    assert differ == len(small)  # boundaries in 256-px pixels are not those in 128-px ones
    assert GraphStore(default_cache_dir(cfg, "validation", "pred")).segmenter == "oracle"


def test_online_graphs_in_the_model_and_the_predictor(oracle, root, tiny_config, tmp_path):
    from twostream.engine.distributed import DistInfo
    from twostream.engine.tasks import ClassificationTask
    from twostream.inference import Predictor

    cfg = config(tiny_config, root, tmp_path / "run")
    task = ClassificationTask(cfg, DistInfo())
    loaders = task.build_loaders()
    model = task.build_model().eval()
    builder = SceneGraphBuilder.from_config(cfg.graph, TABLE)
    batch = next(iter(loaders.val))
    assert batch["image"].shape[-2:] == (SEGMENTER, SEGMENTER)  # items read at the segmenter's size
    assert model.encoder_input(batch["image"]).shape[-2:] == (ENCODER, ENCODER)  # shrunk for the image encoder
    with torch.no_grad():
        out = model(batch["image"])
    assert out["sem_logits"].shape[-2:] == (SEGMENTER, SEGMENTER)
    for name, graph in zip(batch["name"], out["graphs"]):
        assert same_graph(graph, annotation_graph(builder, root, "validation", name))

    # the predictor on the photos themselves (and on a photo twice as large: the segmenter still gets 256 px)
    predictor = Predictor(model=model, cfg=cfg, scenes=task.vocabulary.names)
    names = batch["name"][:2]
    photos = [load_image(root / "images" / "validation" / f"{n}.jpg") for n in names]
    photos.append(np.repeat(np.repeat(photos[0], 2, axis=0), 2, axis=1))
    preds = predictor.predict(photos)
    for pred, name in zip(preds, [*names, names[0]]):
        assert pred.segmenter_size == (SEGMENTER, SEGMENTER)
        assert same_graph(pred.graph, annotation_graph(builder, root, "validation", name))
        assert pred.to_json()["segmenter_size"] == [SEGMENTER, SEGMENTER]
    assert preds[2].sem_map.shape == (2 * ORIGINAL, 2 * ORIGINAL)

    # a classifier of stored (pred) graphs: the predictor runs the segmenter itself, on the photo at 256 px
    stored = dataclasses.replace(cfg, graph=dataclasses.replace(cfg.graph, source="pred"))
    from twostream.models.two_stream import build_model

    pred_model = build_model(stored, num_scenes=len(task.vocabulary), class_table=TABLE)
    pred_predictor = Predictor(model=pred_model, cfg=stored, scenes=task.vocabulary.names)
    assert pred_predictor.segmenter is pred_model.segmenter
    for pred, name in zip(pred_predictor.predict(photos), [*names, names[0]]):
        assert pred.segmenter_size == (SEGMENTER, SEGMENTER)
        assert same_graph(pred.graph, annotation_graph(builder, root, "validation", name))


def test_trained_run_infers_and_evaluates_at_the_segmenters_size(oracle, root, tiny_config, tmp_path, capsys):
    from test_infer_tool import run_tool

    from twostream.engine.evaluate import evaluate_checkpoint
    from twostream.engine.trainer import train

    run = tmp_path / "run"
    train(config(tiny_config, root, run, "train.epochs=1", "eval.every_epochs=5"))
    saved = json.loads(json.dumps(torch.load(run / "best.pth", weights_only=True)["config"]))
    assert saved["model"]["segmenter"]["input_size"] == [SEGMENTER, SEGMENTER]

    # tools/eval.py: the oracle at 256 px is perfect against the original (256-px) annotations
    metrics = evaluate_checkpoint(run, out_dir=tmp_path / "eval", device="cpu")
    assert metrics["segmenter_input"]["size"] == [SEGMENTER, SEGMENTER]
    assert metrics["segmentation"]["miou"] == 1.0 and metrics["segmentation"]["pixel_accuracy"] == 1.0
    assert metrics["graph_quality"]["micro"]["node_f1"] == 1.0 and metrics["graph_quality"]["micro"]["edge_f1"] == 1.0

    # the same classifier with its segmenter at 128 px (the old behaviour): scored against the same original
    # annotations, it loses pixels at every boundary
    ckpt = torch.load(run / "best.pth", weights_only=True)
    ckpt["config"]["model"]["segmenter"]["input_size"] = [ENCODER, ENCODER]
    torch.save(ckpt, tmp_path / "small.pth")
    small = evaluate_checkpoint(tmp_path / "small.pth", out_dir=tmp_path / "eval_small", device="cpu")
    assert small["segmenter_input"]["size"] == [ENCODER, ENCODER] and small["segmentation"]["num_images"] == 4
    assert small["segmentation"]["miou"] < 1.0 and small["segmentation"]["pixel_accuracy"] < 1.0
    assert small["graph_quality"]["micro"]["edge_precision"] < 1.0  # contacts that 128 px invents

    # tools/infer.py --json names the size the graph was built at
    photo = root / "images" / "validation" / sorted(p.name for p in (root / "images" / "validation").iterdir())[0]
    rc, out, _ = run_tool(Path(__file__).resolve().parents[1] / "tools" / "infer.py", photo, "--checkpoint", run,
                          "--json", "--device", "cpu", capsys=capsys)
    assert rc == 0
    [record] = json.loads(out)
    assert record["segmenter_size"] == [SEGMENTER, SEGMENTER] and record["graph"]["image_size"] == [SEGMENTER,
                                                                                                 SEGMENTER]
    builder = SceneGraphBuilder(class_table=TABLE)
    expected = annotation_graph(builder, root, "validation", photo.stem)
    assert [n["label"] for n in record["graph"]["nodes"]] == expected.labels.tolist()



# --------------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------------


class Brightest(Segmenter):
    """Per pixel, the class of the brightest colour channel (wall, floor, bed); stride 32 like UPSNet, and it
    records the sizes it was given."""

    kind, spec_form, stride = "brightest", "brightest:", 32

    def __init__(self) -> None:
        super().__init__()
        self.class_table, self.seen = TABLE, []
        self.lut = torch.tensor([TABLE.index(n) for n in ("wall", "floor", "bed")])

    def forward(self, images, targets=None) -> dict:
        self.seen.append(tuple(images.shape[-2:]))
        labels = self.lut[images.argmax(dim=1)]
        logits = images.new_full((images.shape[0], len(TABLE), *images.shape[-2:]), LOW_LOGIT)
        return {"sem_logits": logits.scatter(1, labels[:, None], 10.0)}


@pytest.fixture
def fresh_log(monkeypatch):
    """Forget which once-only messages this process has logged."""
    from twostream.models import segmenter_input

    monkeypatch.setattr(segmenter_input, "_LOGGED", set())


def test_an_input_size_off_the_stride_is_padded_and_cropped(fresh_log, caplog):
    from twostream.config import DataConfig
    from twostream.models.segmenter_input import resize_images, segment, segmenter_input

    seg_cfg = SegmenterConfig(input_size=(100, 120))
    with caplog.at_level("INFO", logger="twostream.models.segmenter_input"):
        geometry = segmenter_input(seg_cfg, DataConfig(), Brightest)
        segmenter_input(seg_cfg, DataConfig(), Brightest)
    lines = [r.getMessage() for r in caplog.records if "not divisible by 32" in r.getMessage()]
    assert lines == ["model.segmenter.input_size [100, 120] is not divisible by 32, the stride of segmenter kind "
                     "'brightest': images are resized to it and padded up to [128, 128]"]
    segmenter = Brightest()
    images = torch.rand(2, 3, 64, 80)
    logits = segment(segmenter, images, geometry)
    assert segmenter.seen == [(128, 128)] and logits.shape == (2, len(TABLE), 100, 120)
    assert torch.equal(logits.argmax(dim=1), segmenter.lut[resize_images(images, (100, 120)).argmax(dim=1)])

    # keep_ratio: the short side to 100, the long side capped, padded to the stride and cropped back
    ratio = segmenter_input(dataclasses.replace(seg_cfg, keep_ratio=True, max_size=150), DataConfig(), Brightest)
    assert ratio.resized(64, 80) == (100, 125) and ratio.resized(64, 256) == (38, 150)
    assert segment(segmenter, images, ratio).shape[-2:] == (100, 125) and segmenter.seen[-1] == (128, 128)


def test_upsnet_segments_at_a_size_off_its_stride_inside_the_model(fresh_log, tiny_config, tmp_path):
    from twostream.models.two_stream import build_model

    cfg = tiny_config(tmp_path, tmp_path / "run", *[
        "model.segmenter.kind=upsnet", "model.segmenter.backbone=resnet10t", "model.segmenter.fpn_channels=16",
        "model.segmenter.head_channels=8", "model.segmenter.deformable=false", "graph.source=online",
        "model.segmenter.input_size=[72, 100]"])
    model = build_model(cfg, num_scenes=3, class_table=TABLE).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))  # UPSNet alone refuses 72 x 100 (not divisible by 32)
    assert out["sem_logits"].shape[-2:] == (72, 100) and all(g.image_size == (72, 100) for g in out["graphs"])


def test_a_checkpoint_without_a_training_size_falls_back_to_the_image_size(fresh_log, caplog, tmp_path):
    from twostream.config import load_config
    from twostream.engine.checkpoint import FORMAT, resolve_segmenter_config, trained_input_size
    from twostream.models.two_stream import build_model

    assert trained_input_size({"data": {"image_size": [256, 192]}}) == (256, 192)
    assert trained_input_size({"data": {"image_size": [512, 512]},
                               "model": {"segmenter": {"input_size": [320, 320]}}}) == (320, 320)
    assert trained_input_size({"model": {"segmenter": {"kind": "upsnet"}}}) is None
    seg = {"kind": "upsnet", "backbone": "resnet10t", "fpn_channels": 16, "head_channels": 8, "deformable": False}
    ckpt = tmp_path / "seg.pth"  # a hand-made checkpoint whose config records no data section
    torch.save({"format": FORMAT, "stage": "segmentation", "model": {}, "class_table": TABLE.to_dict(),
                "config": {"train": {"stage": "segmentation"}, "model": {"segmenter": seg}}}, ckpt)
    cfg = load_config(None, ["data.image_size=[96, 96]", f"model.segmenter.checkpoint={ckpt}",
                             "model.segmenter.backbone=resnet10t", "model.image_encoder.name=test_vit",
                             "model.image_encoder.pretrained=false", "model.gnn.hidden_dim=16", "model.gnn.heads=2",
                             "model.fusion.dim=16"])
    cfg = resolve_segmenter_config(cfg)
    assert cfg.model.segmenter.input_size is None and cfg.model.segmenter.fpn_channels == 16
    with caplog.at_level("INFO", logger="twostream.models.segmenter_input"):
        models = [build_model(cfg, num_scenes=2, class_table=TABLE) for _ in range(2)]
    assert all(m.segmenter_input.size == (96, 96) for m in models)
    lines = [r.getMessage() for r in caplog.records if "records a training size" in r.getMessage()]
    assert lines == ["model.segmenter.input_size is not set and no segmenter checkpoint records a training size: "
                     "the segmenter segments at data.image_size [96, 96]"]

    # a checkpoint that records its training size (the segmentation run's data.image_size) sets it
    torch.save({"format": FORMAT, "stage": "segmentation", "model": {}, "class_table": TABLE.to_dict(),
                "config": {"train": {"stage": "segmentation"}, "model": {"segmenter": seg},
                           "data": {"image_size": [256, 256]}}}, ckpt)
    assert resolve_segmenter_config(dataclasses.replace(cfg)).model.segmenter.input_size == (256, 256)


def test_keep_ratio_stores_each_image_at_its_own_shape(monkeypatch, tiny_config, tmp_path):
    """mmseg's whole-image inference: short side to min(input_size), long side capped, each image its own shape."""
    from twostream.data.ade20k import ADE20KDataset
    from twostream.data.synthetic import make_synthetic
    from twostream.data.transforms import segmenter_transforms
    from twostream.engine.graph_caches import build_split_caches

    monkeypatch.setattr(Brightest, "from_config", classmethod(lambda cls, cfg, table: cls()))
    monkeypatch.setattr(Brightest, "cache_identity", classmethod(lambda cls, cfg: "brightest"))
    register_segmenter_kind(monkeypatch, "brightest", Brightest)
    root = tmp_path / "wide"
    make_synthetic(root, train_per_scene=1, val_per_scene=2, size=(48, 96), seed=1, scenes=["bedroom", "street"])
    cfg = tiny_config(root, tmp_path / "run", "model.segmenter.kind=brightest", "graph.source=online",
                      "model.segmenter.input_size=[64, 64]", "model.segmenter.keep_ratio=true",
                      "model.segmenter.max_size=100")
    [store] = build_split_caches(cfg, source="pred", splits=["validation"], device="cpu", workers=0, progress=False)
    assert store.map_size["segmenter_input"] == {"size": [64, 64], "keep_ratio": True, "max_size": 100, "stride": 32}
    items = ADE20KDataset(root, "validation", None, transform=segmenter_transforms(cfg.data, (64, 64), keep_ratio=True,
                                                                                    long_side=100))
    builder = SceneGraphBuilder.from_config(cfg.graph, TABLE)
    for item in items:
        assert item["image"].shape[-2:] == (50, 100)  # 48 x 96 scaled by min(64 / 48, 100 / 96)
        graph = store.get(item["name"])
        assert graph.image_size == (50, 100)  # the 64 x 128 canvas's padding cropped off
        expected = builder(Brightest().lut[item["image"].argmax(dim=0)])
        assert dataclasses.replace(graph, confidence=None).equal(expected)
