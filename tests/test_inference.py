"""Predictor: real photographs at native sizes, batching, file kinds, run folders, exports, segmenter-only, image-only,
keep_ratio with online graphs, and one-line errors for bad checkpoints. Tiny untrained models (tests/infer_fixtures.py).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from infer_fixtures import SCENES, SIZE, make_run, photos, shared_run
from PIL import Image

from twostream.data.io import load_image
from twostream.data.transforms import build_transforms
from twostream.engine.checkpoint import CheckpointError, atomic_torch_save, export_safetensors, load_checkpoint
from twostream.graph.builder import SceneGraphBuilder, pixel_confidence
from twostream.graph.scene_graph import SceneGraph
from twostream.inference import Prediction, Predictor
from twostream.viz.sources import resize_labels

pytest.importorskip("skimage", reason="scikit-image is not installed")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor.from_checkpoint(run)


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    return photos()


@pytest.fixture(scope="module")
def predictions(predictor, images) -> list[Prediction]:
    return predictor.predict(list(images.values()), topk=3, batch_size=4)


def _by_hand(predictor: Predictor, image: np.ndarray):
    """The run's validation transform, the model's segmenter, the run's builder and the classifier, step by step."""
    from torchvision import tv_tensors

    x = build_transforms(predictor.cfg.data, train=False)(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)))
    x = x.as_subclass(torch.Tensor)[None]  # (1, 3, SIZE, SIZE)
    model = predictor.model
    with torch.no_grad():
        sem_logits = model.segmenter(x)["sem_logits"]
        labels = sem_logits.argmax(dim=1)  # (1, SIZE, SIZE)
        graphs = SceneGraphBuilder.from_config(predictor.cfg.graph, model.segmenter.class_table).build_batch(
            labels, confidence=pixel_confidence(sem_logits))  # nodes carry the segmenter's mean confidence
        probs = model(x, graphs)["logits"].softmax(dim=1)[0]
    return labels[0].numpy(), graphs[0], probs


# ---- photographs --------------------------------------------------------------------------------------------------


def test_photos_at_native_size(predictor, images, predictions):
    for (name, image), pred in zip(images.items(), predictions):
        probs = [p for _, p in pred.scenes]
        assert len(pred.scenes) == 3 and {s for s, _ in pred.scenes} <= set(SCENES)
        assert probs == sorted(probs, reverse=True) and min(probs) >= 0 and sum(probs) <= 1 + 1e-6, name
        assert pred.image_size == image.shape[:2]
        assert pred.sem_map.shape == image.shape[:2] and pred.sem_map.dtype == np.int64, name
        pred.graph.validate()
        assert pred.graph.image_size == (SIZE, SIZE)

        labels, graph, hand = _by_hand(predictor, image)
        # the confidence comes from logits of a batch of 4 here and of 1 by hand: equal up to float rounding
        torch.testing.assert_close(pred.graph.confidence, graph.confidence, rtol=0, atol=1e-5)
        assert pred.graph.equal(dataclasses.replace(graph, confidence=pred.graph.confidence)), name
        # the map at the image's size: centre-aligned nearest neighbour of the model's map (viz's own resize)
        np.testing.assert_array_equal(pred.sem_map, resize_labels(labels, image.shape[:2]))
        top = hand.topk(3)
        assert [s for s, _ in pred.scenes] == [SCENES[i] for i in top.indices.tolist()]
        np.testing.assert_allclose(probs, top.values.numpy(), atol=1e-5)
        # every object of the graph is in the map and nothing else is (label 0 = other makes no node)
        assert set(np.unique(pred.sem_map).tolist()) - {0} == set(pred.graph.labels.tolist())


def test_batched_equals_one_by_one(predictor, images, predictions):
    for image, batched in zip(images.values(), predictions):
        [single] = predictor.predict([image], topk=3)
        assert [s for s, _ in single.scenes] == [s for s, _ in batched.scenes]
        np.testing.assert_allclose([p for _, p in single.scenes], [p for _, p in batched.scenes], atol=1e-5)
        assert (single.sem_map != batched.sem_map).mean() < 1e-3  # batched kernels may round differently
        assert single.graph.labels.tolist() == batched.graph.labels.tolist()


def test_prediction_json_round_trip_and_summaries(predictions):
    pred = predictions[0]
    d = json.loads(json.dumps(pred.to_json()))
    assert d["scenes"][0] == {"scene": pred.scenes[0][0], "prob": pred.scenes[0][1]}
    back = Prediction.from_json(d)
    assert back.graph.equal(pred.graph) and back.scenes == pred.scenes and back.image_size == pred.image_size
    objects = pred.top_objects()
    assert len(objects) == pred.graph.num_nodes and [a for _, a in objects] == sorted(pred.graph.area.tolist())[::-1]
    pairs = pred.top_adjacencies(3)
    assert [b for *_, b in pairs] == sorted(pred.graph.boundary.tolist(), reverse=True)[:6:2]


# ---- file kinds ------------------------------------------------------------------------------------------------------


def test_grayscale_rgba_16bit_and_exif_rotated_files(predictor, images, tmp_path):
    coffee = images["coffee"][::4, ::4]  # (100, 150, 3)
    grey = np.asarray(Image.fromarray(coffee).convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.dstack([coffee, np.full(coffee.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit grey, full range
    jpeg = Image.fromarray(coffee)
    exif = jpeg.getexif()
    exif[0x0112] = 6  # stored 150 wide, 100 high; shown rotated 90 degrees clockwise: 100 wide, 150 high
    jpeg.save(tmp_path / "phone.jpg", exif=exif, quality=95)

    files = ["grey.png", "rgba.png", "deep.png", "phone.jpg"]
    preds = predictor.predict([tmp_path / f for f in files], topk=2)
    shapes = {f: p.sem_map.shape for f, p in zip(files, preds)}
    assert shapes == {"grey.png": (100, 150), "rgba.png": (100, 150), "deep.png": (100, 150), "phone.jpg": (150, 100)}
    # grey and 16-bit grey are the same picture; an opaque RGBA file is the RGB picture
    grey_pred, rgba_pred, deep_pred, _ = preds
    np.testing.assert_array_equal(grey_pred.sem_map, deep_pred.sem_map)
    [rgb_pred] = predictor.predict([coffee], topk=2)
    np.testing.assert_array_equal(rgba_pred.sem_map, rgb_pred.sem_map)
    [rotated] = predictor.predict([load_image(tmp_path / "phone.jpg")], topk=2)
    np.testing.assert_array_equal(rotated.sem_map, preds[3].sem_map)


def test_rejects_arrays_that_are_not_rgb_uint8(predictor):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB image.*load_image"):
        predictor.predict([np.zeros((8, 8), np.float32)])


# ---- sources: run folder, checkpoint file, export, segmenter only ------------------------------------------------


def test_checkpoint_file_and_safetensors_export_predict_alike(run, predictor, images, predictions, tmp_path):
    export = export_safetensors(run / "best.pth", tmp_path / "export").parent
    image = images["chelsea"]
    for source in (run / "best.pth", export / "model.safetensors"):  # the export folder: tests/test_infer_tool.py
        [pred] = Predictor.from_checkpoint(source).predict([image], topk=3)
        assert [s for s, _ in pred.scenes] == [s for s, _ in predictions[3].scenes], source
        np.testing.assert_allclose([p for _, p in pred.scenes], [p for _, p in predictions[3].scenes], atol=1e-5)
        assert pred.graph.labels.tolist() == predictions[3].graph.labels.tolist(), source


def test_segmenter_only_from_a_checkpoint(run, predictor, images):
    seg = Predictor.from_segmenter(f"upsnet:{run / 'best.pth'}")
    assert seg.model is None
    [pred] = seg.predict([images["coffee"]])
    assert pred.scenes == [] and pred.to_json()["scenes"] == []
    [same] = predictor.predict([images["coffee"]])
    assert pred.graph.equal(same.graph)  # the classifier's own segmenter: the same graph
    np.testing.assert_array_equal(pred.sem_map, same.sem_map)


def test_segmenter_only_from_a_hugging_face_folder(images, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    from twostream.data.classes import ade20k150

    torch.manual_seed(0)
    names = ade20k150().short_names[1:]  # an ADE20K-150 checkpoint: channel i is project label i + 1
    config = transformers.SegformerConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 16, 32], num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=32,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    transformers.SegformerForSemanticSegmentation(config).save_pretrained(tmp_path / "segformer")
    transformers.SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path / "segformer")
    seg = Predictor.from_segmenter(f"hf:{tmp_path / 'segformer'}")
    small = images["astronaut"][::4, ::4]  # (128, 128)
    [pred] = seg.predict([small])
    assert pred.sem_map.shape == (128, 128) and pred.graph.image_size == (128, 128)  # its own size: hf resizes
    assert pred.graph.class_table.name == "ade20k150" and pred.sem_map.min() >= 1  # it never predicts 'other'
    assert set(np.unique(pred.sem_map).tolist()) == set(pred.graph.labels.tolist())


def test_annotation_trained_classifier_takes_graphs_from_a_given_segmenter(run, images, tmp_path):
    gt_run = make_run(tmp_path / "gt", "graph.source=gt", "model.segmenter.kind=none")
    with pytest.raises(ValueError, match=r"trained on graphs from annotations.*--segmenter"):
        Predictor.from_checkpoint(gt_run)
    both = Predictor.from_checkpoint(gt_run, segmenter=f"upsnet:{run / 'best.pth'}")
    [pred] = both.predict([images["coffee"]], topk=2)
    assert len(pred.scenes) == 2 and pred.graph.num_nodes > 0


def test_image_only_model_predicts_scenes_only(images, tmp_path):
    run = make_run(tmp_path / "image_only", "model.gnn.enabled=false", "model.fusion.type=none")
    predictor = Predictor.from_checkpoint(run)
    assert predictor.segmenter is None and predictor.class_table is None
    [pred] = predictor.predict([images["rocket"]], topk=5)
    assert len(pred.scenes) == 5 and sorted(s for s, _ in pred.scenes) == sorted(SCENES)
    assert abs(sum(p for _, p in pred.scenes) - 1) < 1e-5  # all scenes: the whole distribution
    assert pred.graph is None and pred.sem_map is None and pred.to_json()["graph"] is None


def test_keep_ratio_with_online_graphs(images, tmp_path):
    run = make_run(tmp_path / "online", "data.keep_ratio=true", "graph.source=online")
    predictor = Predictor.from_checkpoint(run)
    assert predictor.segmenter is None  # the model builds its graphs itself
    image = images["rocket"]  # 427 x 640: fitted into 64 x 64 as 43 x 64, padded above and below
    [pred] = predictor.predict([image])
    assert pred.sem_map.shape == image.shape[:2]
    assert pred.graph.image_size == (43, 64)  # rebuilt on the content, without the padding
    x = build_transforms(predictor.cfg.data, train=False)(
        __import__("torchvision").tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)))
    with torch.no_grad():
        out = predictor.model(x.as_subclass(torch.Tensor)[None])
    probs = out["logits"].softmax(dim=1)[0]
    assert pred.scenes[0] == (SCENES[int(probs.argmax())], pytest.approx(float(probs.max()), abs=1e-5))
    labels = out["sem_logits"].argmax(dim=1)[0, 10:53]  # ResizePad centres the 43 content rows: 10 above
    confidence = pixel_confidence(out["sem_logits"])[0, 10:53]
    assert pred.graph.equal(SceneGraphBuilder.from_config(predictor.cfg.graph)(labels, confidence=confidence))


# ---- devices, precision, errors ----------------------------------------------------------------------------------


def test_bf16_on_cpu_and_refused_settings(run, images):
    [pred] = Predictor.from_checkpoint(run, precision="bf16").predict([images["chelsea"]])
    assert pred.sem_map.shape == images["chelsea"].shape[:2] and len(pred.scenes) == 5
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        Predictor.from_checkpoint(run, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision 'fp8'"):
        Predictor.from_checkpoint(run, precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            Predictor.from_checkpoint(run, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpu_matches_cpu(run, images, predictions, precision):
    [pred] = Predictor.from_checkpoint(run, device="cuda", precision=precision).predict([images["coffee"]], topk=3)
    assert pred.sem_map.shape == images["coffee"].shape[:2]
    assert (pred.sem_map == predictions[0].sem_map).mean() > (0.99 if precision == "fp32" else 0.9)


def test_bad_checkpoints_are_one_line_errors(run, tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "nope"
    (tmp_path / "empty.pth").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.pth"
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    cases["junk"] = tmp_path / "junk.pth"
    (tmp_path / "emptyrun").mkdir()
    cases["empty run folder"] = tmp_path / "emptyrun"
    seg = load_checkpoint(run / "best.pth")
    atomic_torch_save({**seg, "stage": "segmentation"}, tmp_path / "seg.pth")
    cases["segmentation stage"] = tmp_path / "seg.pth"
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.safetensors").write_bytes(b"\0" * 10)
    cases["bad export"] = tmp_path / "export"
    expected = {"missing": "checkpoint not found", "empty": "empty", "junk": "not a twostream checkpoint",
                "empty run folder": "no best.pth", "segmentation stage": "--segmenter upsnet:",
                "bad export": "lacks config.yaml"}
    for what, path in cases.items():
        with pytest.raises(CheckpointError) as info:
            Predictor.from_checkpoint(path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message and expected[what] in message, (what, message)


def test_weights_of_another_config_are_refused(run, tmp_path):
    ckpt = load_checkpoint(run / "best.pth")
    ckpt["config"]["model"]["gnn"]["hidden_dim"] = 32
    atomic_torch_save(ckpt, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="another config"):
        Predictor.from_checkpoint(tmp_path / "other.pth")


def test_graph_json_is_scene_graph_json(predictions, tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(predictions[1].to_json()))
    graph = SceneGraph.from_json(json.loads(path.read_text())["graph"])
    assert graph.equal(predictions[1].graph)
