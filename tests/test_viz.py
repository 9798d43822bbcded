"""The scene-graph drawings: overlay, node-id map, PNG panels for 0/1/many nodes, the self-contained HTML viewer."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twostream.data.classes import ClassTable, ade20k150
from twostream.graph.scene_graph import SceneGraph
from twostream.viz import GraphView, draw_panel, node_id_map, overlay, save_panel, scene_graph_html, write_html
from twostream.viz.html import MAX_MAP_SIDE, rle_encode


# ----------------------------------------------------------------------------------------------------- helpers
def class_graph(sem: np.ndarray, table: ClassTable | None = None) -> SceneGraph:
    """A class-granularity graph of ``sem`` (H, W), computed here independently of the package's builder:
    one node per present class except 0, edges between classes whose pixels are 4-neighbours."""
    table = table or ade20k150()
    sem = np.asarray(sem, dtype=np.int64)
    h, w = sem.shape
    labels = np.array([c for c in np.unique(sem) if 0 < c < len(table)], dtype=np.int64)
    masks = sem[None] == labels[:, None, None]  # (N, H, W)
    ys, xs = np.mgrid[0:h, 0:w]
    count = masks.sum(axis=(1, 2))
    centroid = np.stack([(masks * xs).sum(axis=(1, 2)) / count / w, (masks * ys).sum(axis=(1, 2)) / count / h], 1)
    bbox = np.array([[xs[m].min() / w, ys[m].min() / h, (xs[m].max() + 1) / w, (ys[m].max() + 1) / h]
                     for m in masks]).reshape(-1, 4)
    index = np.full(max(int(sem.max()), len(table)) + 1, -1)
    index[labels] = np.arange(len(labels))
    node = index[sem]
    a = np.concatenate([node[:, 1:].ravel(), node[1:].ravel()])
    b = np.concatenate([node[:, :-1].ravel(), node[:-1].ravel()])
    keep = (a != b) & (a >= 0) & (b >= 0)
    pairs = np.concatenate([np.stack([a[keep], b[keep]], 1), np.stack([b[keep], a[keep]], 1)])
    uniq, boundary = np.unique(pairs, axis=0, return_counts=True)  # sorted by (source, target)
    # each touching pixel pair was counted once per direction above
    return SceneGraph(
        labels=torch.from_numpy(labels), area=torch.from_numpy((count / (h * w)).astype(np.float32)),
        centroid=torch.from_numpy(centroid.astype(np.float32)).reshape(-1, 2),
        bbox=torch.from_numpy(bbox.astype(np.float32)), edge_index=torch.from_numpy(uniq.T.reshape(2, -1).copy()),
        boundary=torch.from_numpy(boundary.astype(np.float32)), image_size=(h, w), class_table=table,
    ).validate()


def photo_and_map(n_segments: int = 12, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A real photograph (skimage's coffee) and a semantic map from SLIC superpixels mapped to ADE class ids."""
    skimage = pytest.importorskip("skimage")
    from skimage import data, segmentation, transform

    img = data.coffee()
    img = (transform.resize(img, (size * 2 // 3, size), anti_aliasing=True) * 255).round().astype(np.uint8)
    seg = segmentation.slic(img, n_segments=n_segments, compactness=10, start_label=0)
    classes = np.array([1, 3, 4, 6, 8, 13, 15, 16, 20, 24, 34, 38, 43, 65, 67, 71, 90, 100, 120, 148])
    del skimage
    return img, classes[seg % len(classes)]


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def page_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="twostream-data">(.*?)</script>', page, re.S)
    assert m, "the page must embed its data as JSON"
    return json.loads(m.group(1))


# ----------------------------------------------------------------------------------------------------- overlay
def test_overlay_blends_class_colours_and_keeps_background():
    table = ade20k150()
    img = np.full((4, 6, 3), 100, np.uint8)
    sem = np.zeros((4, 6), np.int64)
    sem[:, 3:] = 3  # sky
    sem[0, 0] = 255  # ignore
    out = overlay(img, sem, table, alpha=0.5, boundaries=False)
    expected = np.round(0.5 * 100 + 0.5 * table.palette[3].astype(float)).astype(np.uint8)
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out[:, 3:], np.broadcast_to(expected, (4, 3, 3)))
    np.testing.assert_array_equal(out[:, :3], img[:, :3])  # 'other' and ignore stay the photo
    edged = overlay(img, sem, table, alpha=0.5, boundaries=True)
    assert (edged[:, 3].astype(int) < out[:, 3].astype(int)).all()  # the label change is darkened
    np.testing.assert_array_equal(edged[:, 5], out[:, 5])


def test_overlay_rejects_bad_inputs():
    table = ade20k150()
    with pytest.raises(TypeError, match="uint8"):
        overlay(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.int64), table)
    with pytest.raises(ValueError, match="shape"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.int64), table)
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int64), table, alpha=2)


def test_node_id_map_class_granularity_and_region_graphs_refused():
    sem = np.array([[0, 3, 3], [5, 5, 3], [255, 5, 0]])
    g = class_graph(sem)
    assert g.labels.tolist() == [3, 5]
    np.testing.assert_array_equal(node_id_map(sem, g), [[-1, 0, 0], [1, 1, 0], [-1, 1, -1]])
    region = SceneGraph(labels=torch.tensor([3, 3]), area=torch.zeros(2), centroid=torch.zeros(2, 2),
                        bbox=torch.zeros(2, 4), edge_index=torch.zeros(2, 0, dtype=torch.int64),
                        boundary=torch.zeros(0), image_size=(3, 3), class_table=ade20k150())
    with pytest.raises(ValueError, match="node_map"):
        node_id_map(sem, region)


# ------------------------------------------------------------------------------------------------------ panels
@pytest.mark.parametrize("kind", ["empty", "one", "many"])
def test_panel_png_for_0_1_many_nodes(tmp_path, kind):
    img, sem = photo_and_map()
    if kind == "empty":
        sem = np.zeros_like(sem)
    elif kind == "one":
        sem = np.full_like(sem, 3)
    g = class_graph(sem)
    assert g.num_nodes == {"empty": 0, "one": 1}.get(kind, g.num_nodes) and (kind != "many" or g.num_nodes > 5)
    path = save_panel(tmp_path / "panel.png", img, GraphView("prediction", g, sem, scene_topk=[("bedroom", 0.7)]),
                      title="coffee.jpg", width=600)
    out = np.asarray(Image.open(path).convert("RGB"))
    h, w = out.shape[:2]
    assert w == 600
    # three cells of the image's aspect ratio side by side, plus a title and a caption strip
    cell = (600 - 4 * round(600 * 0.008)) / 3
    assert cell * img.shape[0] / img.shape[1] < h < cell * img.shape[0] / img.shape[1] + 120
    # the left cell shows the photo: its mean colour matches the input's (independent of the drawing code)
    left = out[h - round(cell * img.shape[0] / img.shape[1]) - 5: h - 8, 8: int(cell)]
    assert np.abs(left.reshape(-1, 3).mean(0) - img.reshape(-1, 3).mean(0)).max() < 12


def test_panel_comparison_has_two_rows_and_no_segmentation_is_fine():
    img, sem = photo_and_map()
    g = class_graph(sem)
    one = draw_panel(img, GraphView("prediction", g, sem), width=600)
    two = draw_panel(img, [GraphView("prediction", g, sem), GraphView("ground truth", class_graph(sem[::-1]),
                                                                         sem[::-1])], width=600)
    graph_only = draw_panel(img, GraphView("prediction", g), width=600)  # nodes at centroids, no regions
    h1, h2 = (f.get_size_inches()[1] * f.dpi for f in (one, two))
    assert 1.8 * h1 < h2 < 2.1 * h1
    assert graph_only.get_size_inches()[1] == one.get_size_inches()[1]
    # one row = image, overlay and graph axes
    assert len(one.axes) == 3 and len(two.axes) == 6


def test_panel_quantised_png_keeps_class_colours_exact(tmp_path):
    img, sem = photo_and_map()
    view = GraphView("prediction", class_graph(sem), sem)
    full = np.asarray(Image.open(save_panel(tmp_path / "full.png", img, view, width=600)).convert("RGB"))
    with Image.open(save_panel(tmp_path / "small.png", img, view, width=600, colors=64)) as im:
        assert im.mode == "P"
        small = np.asarray(im.convert("RGB"))
    assert len(np.unique(small.reshape(-1, 3), axis=0)) <= 64
    assert np.abs(small.astype(int) - full.astype(int)).mean() < 8
    for colour in ade20k150().palette[view.graph.labels.numpy()]:  # every node's fill survives exactly
        assert (full == colour).all(-1).sum() == (small == colour).all(-1).sum() > 0
    with pytest.raises(ValueError, match="colors"):
        save_panel(tmp_path / "x.png", img, view, colors=1)


def test_panel_rejects_bad_views():
    img, sem = photo_and_map()
    with pytest.raises(TypeError, match="GraphView"):
        draw_panel(img, [class_graph(sem)])
    with pytest.raises(ValueError, match="shape"):
        draw_panel(img, GraphView("p", class_graph(sem), sem[:-1]))


# -------------------------------------------------------------------------------------------------------- HTML
def test_rle_round_trip():
    values = np.array([[-1, -1, 0, 0, 0], [2, 2, 2, -1, 7]])
    rle = rle_encode(values)
    assert rle == [-1, 2, 0, 3, 2, 3, -1, 1, 7, 1]
    decoded = np.repeat(rle[0::2], rle[1::2]).reshape(values.shape)
    np.testing.assert_array_equal(decoded, values)
    assert rle_encode(np.zeros((0,))) == []


def test_html_is_self_contained_and_carries_the_graph(tmp_path):
    img, sem = photo_and_map()
    g = class_graph(sem)
    path = write_html(tmp_path / "graph.html", img, GraphView("prediction", g, sem, scene_topk=[("kitchen", 0.6)]))
    page = path.read_text(encoding="utf-8")
    # nothing to fetch: no remote URL anywhere, every src is a data URI, styles and scripts are inline
    assert not re.search(r"https?://", page)
    srcs = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and not re.search(r"<script[^>]*\bsrc=", page)
    assert {png_size(base64.b64decode(s.split(",", 1)[1])) for s in srcs} == {(img.shape[1], img.shape[0])}
    data = page_data(page)
    (view,) = data["views"]
    assert len(view["nodes"]) == g.num_nodes and len(view["edges"]) == g.num_edges // 2
    assert [n["label"] for n in view["nodes"]] == g.labels.tolist()
    assert view["topk"] == [["kitchen", 0.6]]
    # the embedded node map is the class map of the graph's labels
    rle = view["node_map"]["rle"]
    decoded = np.repeat(rle[0::2], rle[1::2]).reshape(view["node_map"]["height"], view["node_map"]["width"])
    np.testing.assert_array_equal(decoded, node_id_map(sem, g))
    # neighbours listed with their boundary lengths, as in the graph
    src, dst = g.edge_index.tolist()
    for i, node in enumerate(view["nodes"]):
        expected = {(d, b) for s, d, b in zip(src, dst, g.boundary.tolist()) if s == i}
        assert {(j, b) for j, b in node["neighbours"]} == expected


def test_html_node_map_is_downscaled_for_large_images():
    img = np.zeros((300, 1000, 3), np.uint8)
    sem = np.zeros((300, 1000), np.int64)
    sem[:, 500:] = 3
    view = page_data(scene_graph_html(img, GraphView("p", class_graph(sem), sem)))["views"][0]
    assert max(view["node_map"]["width"], view["node_map"]["height"]) == MAX_MAP_SIDE
    rle = view["node_map"]["rle"]
    assert rle[0::2] == [-1, 0] * view["node_map"]["height"]  # each row: left half none, right half sky


def test_html_escapes_class_and_file_names():
    evil = "<script>alert(1)</script>"
    table = ClassTable("evil", ("other", evil, 'sky & "quoted"'), np.array([[0, 0, 0], [200, 0, 0], [0, 0, 200]]))
    img = np.zeros((20, 30, 3), np.uint8)
    sem = np.ones((20, 30), np.int64)
    sem[:8] = 2
    title = 'A&B "q" \'s <b>.jpg'
    page = scene_graph_html(img, GraphView("</script><i>x</i>", class_graph(sem, table), sem,
                                           scene_topk=[(evil, 0.5)]), title=title)
    assert evil not in page and "</script><i>" not in page
    assert len(re.findall(r"<script", page)) == 2  # the JSON block and the viewer script, nothing injected
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the scene name, escaped in markup
    assert "A&amp;B &quot;q&quot; &#x27;s &lt;b&gt;.jpg" in page
    data = page_data(page)  # and the JSON still carries the exact names
    assert data["title"] == title and data["views"][0]["nodes"][0]["name"] == evil


def test_html_comparison_of_prediction_and_truth():
    img, sem = photo_and_map()
    truth = sem.copy()
    truth[truth == truth.max()] = 1  # the truth lacks the prediction's highest class
    page = scene_graph_html(img, [GraphView("prediction", class_graph(sem), sem),
                                  GraphView("ground truth", class_graph(truth), truth)])
    assert page.count('<section class="view"') == 2 and page.count('<button type="button" data-tab=') == 3
    assert "classes precision / recall" in page
    assert page.count("data:image/png;base64,") == 3  # the photo once, one segmentation per view


# ------------------------------------------------------------------------------------------- tools/visualize.py
ADE = Path(__file__).resolve().parents[2] / "shared" / "ade20k"
SAMPLE_IMAGE = ADE / "sample" / "images" / "validation" / "ADE_val_00000001.jpg"
SAMPLE_ANNOTATION = ADE / "sample" / "annotations" / "validation" / "ADE_val_00000001.png"


def _tool():
    spec = importlib.util.spec_from_file_location("visualize_tool", Path(__file__).resolve().parents[1] / "tools"
                                                  / "visualize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_tool(monkeypatch, *argv: str) -> int:
    from twostream.cli import run_cli

    tool = _tool()
    monkeypatch.setattr(sys, "argv", ["visualize.py", *argv])
    return run_cli(tool.get_args_parser, tool.main)


@pytest.mark.skipif(not SAMPLE_IMAGE.exists(), reason=f"real ADE20K sample not found under {ADE}")
def test_visualize_tool_compares_prediction_with_ground_truth(tmp_path, monkeypatch):
    from twostream.graph.builder import SceneGraphBuilder

    truth = np.asarray(Image.open(SAMPLE_ANNOTATION), dtype=np.int64)
    pred = truth.copy()
    pred[pred == 10] = 13  # grass predicted as person
    pred = pred[::2, ::2]  # the prediction is at half resolution: the tool resizes it to the image
    Image.fromarray(pred.astype(np.uint8)).save(tmp_path / "pred_sem.png")
    pred_graph = SceneGraphBuilder()(pred)
    record = {**pred_graph.to_json(), "sem_seg": "pred_sem.png",
              "scenes": [{"scene": "abbey", "prob": 0.7}, {"scene": "castle", "prob": 0.2}]}
    (tmp_path / "pred.json").write_text(json.dumps(record))
    out = tmp_path / "viz"
    rc = _run_tool(monkeypatch, "--image", str(SAMPLE_IMAGE), "--prediction", str(tmp_path / "pred.json"),
                   "--annotation", str(SAMPLE_ANNOTATION), "--out", str(out), "--width", "600")
    assert rc == 0
    with Image.open(out / "panel.png") as im:
        assert im.size[0] == 600 and im.size[1] > 2 * 200 * 512 / 683  # two rows of cells ~ 191 x 143
    data = page_data((out / "graph.html").read_text(encoding="utf-8"))
    names = [v["name"] for v in data["views"]]
    assert names == ["prediction", "ground truth"]
    labels = {v["name"]: [n["label"] for n in v["nodes"]] for v in data["views"]}
    assert labels["ground truth"] == [c for c in np.unique(truth).tolist() if c != 0]
    assert labels["prediction"] == pred_graph.labels.tolist() and 13 in labels["prediction"]
    assert data["views"][0]["topk"] == [["abbey", 0.7], ["castle", 0.2]]
    assert data["title"] == "ADE_val_00000001.jpg"


@pytest.mark.parametrize("problem", ["missing image", "not an image", "wrong annotation size", "bad prediction"])
def test_visualize_tool_reports_bad_input_in_one_line(tmp_path, monkeypatch, capsys, problem):
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(img)
    ann = tmp_path / "ann.png"
    Image.fromarray(np.ones((8, 10), np.uint8)).save(ann)
    args = {"missing image": ["--image", str(tmp_path / "nope.jpg"), "--annotation", str(ann)],
            "not an image": ["--image", str(tmp_path / "fake.jpg"), "--annotation", str(ann)],
            "wrong annotation size": ["--image", str(img), "--annotation", str(tmp_path / "small.png")],
            "bad prediction": ["--image", str(img), "--prediction", str(tmp_path / "pred.json")]}[problem]
    (tmp_path / "fake.jpg").write_text("not a jpeg")
    Image.fromarray(np.ones((4, 10), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "pred.json").write_text('{"graph": {"labels": [1]}}')
    bad = Path(args[1] if problem in ("missing image", "not an image") else args[3])
    rc = _run_tool(monkeypatch, *args, "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("error: ") and str(bad) in err[0]
    assert not (tmp_path / "out").exists()
