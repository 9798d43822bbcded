"""Explanations where users meet them: node confidence in SceneGraph and the builder, Predictor.predict(explain=...),
tools/infer.py --explain, tools/eval.py --explain (explanations.jsonl, metrics), the stream means a training run
stores, the PNG panel and the HTML viewer, and the benchmark row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import module_dir, run_tool
from infer_fixtures import SCENES, make_run, photos, shared_run

from twostream.data.classes import ade20k150
from twostream.explain import SceneExplanation
from twostream.graph.builder import SceneGraphBuilder, labels_and_confidence, pixel_confidence
from twostream.graph.scene_graph import SceneGraph
from twostream.inference import Prediction, Predictor

pytest.importorskip("skimage", reason="scikit-image is not installed")

REPO = Path(__file__).resolve().parents[1]
TABLE = ade20k150()


# ---- node confidence ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_builder_pools_confidence_per_node_against_a_loop(backend):
    rng = np.random.default_rng(0)
    sem = rng.integers(1, 5, (2, 20, 23)).astype(np.uint8)
    sem[0, :4] = 0  # "other" makes no node: its pixels do not count
    conf = rng.random((2, 20, 23)).astype(np.float32)
    builder = SceneGraphBuilder(granularity="region", min_area=2, class_table=TABLE, backend=backend)
    graphs, node_map = builder.build_batch(torch.from_numpy(sem) if backend == "torch" else sem,
                                           confidence=conf, return_node_map=True)
    for i, g in enumerate(graphs):
        ref = [conf[i][node_map[i].numpy() == k].mean() for k in range(g.num_nodes)]
        np.testing.assert_allclose(g.confidence.numpy(), ref, rtol=0, atol=1e-5)
        assert g.confidence.dtype == torch.float32 and g.validate() is g
    plain = builder.build_batch(sem)
    assert plain[0].confidence is None and all(a.equal(SceneGraph(**{**b.__dict__, "confidence": None}))
                                               for a, b in zip(plain, graphs))
    with pytest.raises(ValueError, match=r"confidence must be a float \(B, H, W\) map"):
        builder.build_batch(sem, confidence=conf[:, :5])


def test_pixel_confidence_is_the_max_softmax():
    logits = torch.randn(2, 7, 5, 6) * 4
    torch.testing.assert_close(pixel_confidence(logits), logits.softmax(1).amax(1))
    labels, confidence = labels_and_confidence(logits.bfloat16())  # half-precision logits under autocast
    assert torch.equal(labels, logits.bfloat16().argmax(1)) and confidence.dtype == torch.float32
    torch.testing.assert_close(confidence, logits.bfloat16().float().softmax(1).amax(1))


def test_confidence_round_trips_exactly():
    builder = SceneGraphBuilder(class_table=TABLE)
    sem = np.random.default_rng(1).integers(1, 6, (16, 16)).astype(np.uint8)
    g = builder(sem, confidence=np.random.default_rng(2).random((16, 16)).astype(np.float32))
    assert SceneGraph.from_json(json.loads(json.dumps(g.to_json()))).equal(g)
    assert SceneGraph.from_networkx(g.to_networkx()).equal(g)
    assert SceneGraph.from_tensors(g.to_tensors(), TABLE).equal(g)
    assert SceneGraph.from_pyg(g.to_pyg(), g.image_size, TABLE).equal(g)
    assert all("confidence" in n for n in g.to_json()["nodes"])
    bad = SceneGraph(**{**g.__dict__, "confidence": g.confidence[:-1]})
    with pytest.raises(ValueError, match=r"SceneGraph.confidence: expected torch.float32 of shape"):
        bad.validate()


# ---- Predictor ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor.from_checkpoint(run)


@pytest.fixture(scope="module")
def explained(predictor):
    pics = photos()
    images = [pics["coffee"][::2, ::2], pics["rocket"][::3, ::3]]
    return images, predictor.predict(images, topk=2, explain=True)


def test_predict_explains_each_image_at_its_own_size(explained, predictor):
    images, preds = explained
    for image, pred in zip(images, preds):
        e = pred.explanation
        assert e.scene == pred.scenes[0][0] and e.prob == pytest.approx(pred.scenes[0][1], abs=1e-5)
        assert e.cam.shape == image.shape[:2] == pred.image_size
        assert e.node_names == [pred.graph.class_table.short_name(int(c)) for c in pred.graph.labels]
        assert pred.graph.confidence is not None and ((pred.graph.confidence >= 0) & (pred.graph.confidence <= 1)).all()
        np.testing.assert_array_equal(e.node_confidence, pred.graph.confidence.numpy())
        assert "zero embedding" in e.method  # the fixture checkpoint stores no stream means
        d = json.loads(json.dumps(pred.to_json()))
        assert set(d["explanation"]) >= {"scene", "method", "nodes", "edges", "streams"}
        back = Prediction.from_json(d)
        assert back.explanation.equal(e) and back.graph.equal(pred.graph)
    plain = predictor.predict(images[:1], topk=2)[0]
    assert plain.explanation is None and "explanation" not in plain.to_json()
    assert plain.scenes == preds[0].scenes


def test_predict_explains_a_named_scene_and_rejects_unknown_ones(predictor, explained):
    images, _ = explained
    [pred] = predictor.predict(images[:1], explain_scene="street")
    assert pred.explanation.scene == "street"
    with pytest.raises(ValueError, match=rf"^scene 'library' is not in the model's vocabulary; scenes: "
                                         rf"{', '.join(SCENES)}$"):
        predictor.predict(images[:1], explain=True, explain_scene="library")


def test_image_only_and_segmenter_only_predictors(tmp_path, explained, predictor):
    images, _ = explained
    image_only = Predictor.from_checkpoint(make_run(tmp_path / "io", "model.gnn.enabled=false",
                                                    "model.fusion.type=none"))
    [pred] = image_only.predict(images[:1], explain=True)
    e = pred.explanation
    assert pred.graph is None and e.node_scores is None and e.cam.shape == images[0].shape[:2]
    assert e.streams["graph"] is None and e.streams["image"] is not None
    assert any(note.startswith("image-only model") for note in e.notes) and "streams Δp image" in e.because()
    segmenter_only = Predictor(segmenter=predictor.model.segmenter, cfg=predictor.cfg)
    with pytest.raises(ValueError, match="explanations need a scene classifier"):
        segmenter_only.predict(images[:1], explain=True)


# ---- tools/infer.py and outputs ----------------------------------------------------------------------------------


def test_infer_tool_explain_writes_cam_json_and_a_because_line(run, tmp_path, capsys):
    from PIL import Image

    image = photos()["chelsea"][::3, ::3]
    Image.fromarray(image).save(tmp_path / "cat.png")
    rc, out, err = run_tool(REPO / "tools" / "infer.py", tmp_path / "cat.png", "--checkpoint", run, "--out",
                            tmp_path / "out", "--explain", "--save", "all", "--device", "cpu", capsys=capsys)
    assert rc == 0, err
    assert "  because:  " in out
    record = json.loads((tmp_path / "out" / "cat.json").read_text())
    e = record["explanation"]
    assert record["cam"] == "cat_cam.png" and e["scene"] == record["scenes"][0]["scene"]
    assert [n["score"] for n in e["nodes"]] == sorted((n["score"] for n in e["nodes"]), reverse=True)
    assert {n["id"] for n in e["nodes"]} == set(range(len(record["graph"]["nodes"])))
    assert all(n["name"] == record["graph"]["nodes"][n["id"]]["name"] for n in e["nodes"])
    with Image.open(tmp_path / "out" / "cat_cam.png") as cam:
        assert cam.size == (image.shape[1], image.shape[0])
    html = (tmp_path / "out" / "cat.html").read_text()
    assert 'class="because"' in html and 'class="cam"' in html and '"node_scores":[' in html
    rc, out, err = run_tool(REPO / "tools" / "infer.py", tmp_path / "cat.png", "--checkpoint", run,
                            "--explain-scene", "library", capsys=capsys)
    assert rc == 2 and err.strip().splitlines()[-1] == (f"error: scene 'library' is not in the model's vocabulary; "
                                                        f"scenes: {', '.join(SCENES)}")


def test_panel_draws_importance_cam_and_streams(explained, tmp_path):
    from PIL import Image

    from twostream.viz import GraphView, save_panel

    images, preds = explained
    pred = preds[0]
    view = GraphView("prediction", pred.graph, pred.sem_map, scene_topk=pred.scenes, explanation=pred.explanation)
    plain = save_panel(tmp_path / "plain.png", images[0], GraphView("prediction", pred.graph, pred.sem_map))
    why = save_panel(tmp_path / "why.png", images[0], view)
    a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (plain, why))
    assert a.shape == b.shape
    w = a.shape[1] // 3
    assert np.abs(a[:, :w] - b[:, :w]).mean() > 5  # the first cell shows the CAM (and the streams bar)
    assert np.abs(a[:, 2 * w:] - b[:, 2 * w:]).mean() > 1  # the graph cell is drawn by importance


# ---- training stores stream means; tools/eval.py --explain -------------------------------------------------------


@pytest.fixture(scope="module")
def trained(synthetic_root, request):
    from conftest import tiny_classifier_config

    from twostream.engine.trainer import train

    out = module_dir(request, "explain-run")
    cfg = tiny_classifier_config(synthetic_root, out, "train.epochs=1", "train.stream_means_images=20")
    train(cfg)
    return out


def test_training_stores_stream_means_and_eval_explains_every_image(trained, synthetic_root, tmp_path):
    from twostream.engine.checkpoint import load_checkpoint
    from twostream.engine.evaluate import evaluate_checkpoint

    ckpt = load_checkpoint(trained / "best.pth")
    means = ckpt["stream_means"]
    assert means["num_images"] >= 20 and set(means) == {"image_pooled", "image_tokens", "graph_pooled", "node_emb",
                                                        "num_images"}
    assert means["graph_pooled"].shape == (16,) and torch.isfinite(means["image_pooled"]).all()
    assert "stream_means" in load_checkpoint(trained / "last.pth")
    metrics = evaluate_checkpoint(trained, graphs="gt", out_dir=tmp_path, explain=True, device="cpu")
    lines = [json.loads(line) for line in (tmp_path / "explanations.jsonl").read_text().splitlines()]
    assert len(lines) == metrics["num_images"] == 16
    assert set(lines[0]) == {"name", "scene_true", "scene_pred", "explanation"}
    assert [r["name"] for r in lines] == sorted(r["name"] for r in lines)
    e = SceneExplanation.from_json(lines[0]["explanation"])
    assert "training-set mean" in e.method and e.cam is None
    m = json.loads((tmp_path / "metrics.json").read_text())["explanation"]
    assert m["num_images"] == 16 and m["deletion"]["k"] == [1, 2, 3] and len(m["fidelity"]["fid_plus"]) == 3
    assert "relation_only" not in m  # no relation-only images in this set


def test_exports_and_saved_models_keep_the_stream_means(run, tmp_path):
    """The model-only export and SceneClassifier.save_pretrained carry the training-set stream means
    (stream_means.safetensors), so an exported model explains its streams exactly as its checkpoint does."""
    from infer_fixtures import SIZE

    from twostream import SceneClassifier
    from twostream.engine.checkpoint import atomic_torch_save, export_safetensors, load_checkpoint, load_trained
    from twostream.explain.streams import compute_stream_means

    model = Predictor.from_checkpoint(run).model
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    ckpt = load_checkpoint(run / "best.pth")
    ckpt["stream_means"] = means = compute_stream_means(model, [{"image": images}])
    atomic_torch_save(ckpt, tmp_path / "with_means.pth")
    export = export_safetensors(tmp_path / "with_means.pth", tmp_path / "export").parent
    saved = tmp_path / "saved"
    SceneClassifier.from_pretrained(export).save_pretrained(saved)
    for folder in (export, saved):
        back = load_trained(folder)["stream_means"]
        assert back.keys() == means.keys() and back["num_images"] == means["num_images"] == 2
        assert all(torch.equal(back[k], means[k]) for k in means if k != "num_images")
    image = np.asarray(photos()["coffee"][::4, ::4])
    [a] = Predictor.from_checkpoint(tmp_path / "with_means.pth").predict([image], explain=True)
    [b] = Predictor.from_checkpoint(saved).predict([image], explain=True)
    assert "training-set mean" in a.explanation.method and b.explanation.method == a.explanation.method
    assert b.explanation.streams == a.explanation.streams


# ---- benchmark ---------------------------------------------------------------------------------------------------


def test_benchmark_explain_row():
    from twostream.benchmark.explain import bench_explain, explain_table

    row = bench_explain(REPO / "configs", torch.device("cpu"), ci=True, warmup=0, iters=1, min_iters=1)
    assert row.nodes > 0 and set(row.parts) == {"graph", "occlusion", "cam", "streams"}
    assert row.explain.median > 0 and row.classify.median > 0
    table = explain_table(row)
    assert "explain ms (x classify)" in table and "quickstart" in table


# ---- the viewer in a real browser ----------------------------------------------------------------------------------


@pytest.mark.browser
def test_viewer_shows_importance_numbers_cam_and_streams(explained, tmp_path):
    from test_viz_browser import _chromium, _open

    if _chromium() is None:
        pytest.skip("no Chromium installed")

    from twostream.viz import GraphView, write_html

    images, preds = explained
    pred = preds[0]
    path = write_html(tmp_path / "why.html", images[0], GraphView("prediction", pred.graph, pred.sem_map,
                                                                 scene_topk=pred.scenes, explanation=pred.explanation))
    driver = _browser(tmp_path)
    try:
        _open(driver, path)
        titles = driver.execute_script(
            "return Array.from(document.querySelectorAll('.graphbox circle title')).map(t => t.textContent)")
        assert len(titles) == pred.graph.num_nodes and all(" — score " in t for t in titles)
        edges = driver.execute_script("return document.querySelectorAll('.graphbox line[data-score]').length")
        assert edges == pred.graph.num_edges // 2
        assert driver.execute_script("return document.querySelector('.because').textContent").startswith(
            pred.explanation.scene)
        assert driver.execute_script("return document.querySelectorAll('.streams .stream').length") == 2
        opacity = driver.execute_script("""var s = document.querySelector('input.cam-opacity'); s.value = 20;
            s.dispatchEvent(new Event('input')); return document.querySelector('img.cam').style.opacity""")
        assert float(opacity) == pytest.approx(0.2)
        driver.execute_script("window.twostreamViewer.select(0, 0)")
        info = driver.execute_script("return document.querySelector('.info').textContent")
        assert "importance" in info and "occlusion" in info and "confidence" in info
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()


def _browser(tmp_path):
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from test_viz_browser import CHROMIUM_FLAGS, _chromium

    options = webdriver.ChromeOptions()
    options.binary_location = _chromium()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    return driver


def test_explain_check_panel_uses_the_method_it_is_given(tmp_path, monkeypatch):
    """tools/explain_check.py --panel draws the explanation by --explain-method, the method the check scored."""
    import twostream.explain.explainer as explainer_module
    from twostream.data.synthetic import make_synthetic
    from twostream.explain.check import explain_example

    root = tmp_path / "relation"
    make_synthetic(root, train_per_scene=1, val_per_scene=2, size=64, seed=3, scenes=["living_room", "dining_room"],
                   relation_fraction=1.0)
    run = make_run(tmp_path / "run", f"data.root={root}")
    used = []

    class Recording(explainer_module.SceneExplainer):
        def __init__(self, *args, method: str = "integrated_gradients", **kwargs):
            used.append(method)
            super().__init__(*args, method=method, **kwargs)

    monkeypatch.setattr(explainer_module, "SceneExplainer", Recording)
    panel = explain_example(run, tmp_path / "panel.png", method="saliency", width=400)
    assert used == ["saliency"] and panel.is_file() and panel.stat().st_size > 0
