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
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twostream.config import SegmenterConfig
from twostream.data.classes import ade20k150
from twostream.data.io import load_image, load_label
from twostream.graph.builder import SceneGraphBuilder
from twostream.models.label_alignment import LOW_LOGIT
from twostream.models.segmenter import SEGMENTERS
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
    monkeypatch.setitem(SEGMENTERS, "oracle", OracleSegmenter)
    hint = SegmenterConfig.__annotations__["kind"]
    monkeypatch.setitem(SegmenterConfig.__annotations__, "kind", hint.replace("'none'", "'oracle', 'none'")
                        if "'none'" in hint else hint.replace('"none"', '"oracle", "none"'))
    assert "oracle" in typing.get_args(typing.get_type_hints(SegmenterConfig)["kind"])
    return OracleSegmenter


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

