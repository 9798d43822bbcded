"""A self-contained interactive HTML viewer of scene graphs.

    write_html("graph.html", image, [GraphView("prediction", graph, sem_map, scene_topk=topk),
                                     GraphView("ground truth", gt_graph, gt_map)], title="ADE_val_00000001.jpg")

One file, no network: CSS and JavaScript inline, the image and the segmentation overlay embedded as base64 PNG data
URIs, the graphs as JSON. Each view shows the image with the segmentation and the graph drawn on it, beside the graph
drawn alone (SVG, networkx spring layout or the centroids). Hovering or clicking a node (in either drawing, or a region
of the image) highlights its region on a canvas, its neighbours and its adjacencies, and fills the info panel: class,
area, centroid, bbox and the boundary length to each neighbour. Several views (prediction, ground truth) appear as
tabs or all at once for comparison.

A view with an explanation (``GraphView(..., explanation=e)``) also shows why: a "because" line, the CAM as a layer
over the image (with its own opacity slider), the streams' contributions as a small bar, nodes sized by their
importance and nodes' rims and edges coloured by its sign (red: for the explained scene, blue: against); hovering a
node or an edge shows its numbers (attribution score, occlusion drop, segmenter confidence), and the info panel lists
them.

The region of a node comes from the node-id map ``(H, W)`` (which node each pixel belongs to), embedded run-length
encoded at display resolution. All text from data (class names, file names, scene names) reaches the page escaped:
``html.escape`` in markup, and ``<``, ``>``, ``&`` as ``\\u003c``-style escapes inside the JSON, which the script
only ever writes with ``textContent``.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from twostream.viz.common import (
    GraphView,
    as_image,
    as_label_map,
    graph_layout,
    hex_colour,
    short_label,
    undirected_edges,
)
from twostream.viz.explanation import explanation_payload

__all__ = ["rle_encode", "scene_graph_html", "write_html"]

MAX_MAP_SIDE = 640  # the node-id map is embedded at most this large (nearest-neighbour): enough to show a region
MAX_IMAGE_SIDE = 1280  # the embedded photo and overlay are downscaled beyond this, to keep the file small


# ----------------------------------------------------------------------------------------------------- helpers
def rle_encode(values: np.ndarray) -> list[int]:
    """Run-length code of a flat integer array: ``[value, count, value, count, ...]`` (row-major order)."""
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        return []
    starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))  # (R,) first index of each run
    counts = np.diff(np.append(starts, flat.size))
    return np.stack([flat[starts], counts], axis=1).reshape(-1).astype(np.int64).tolist()


def _png_data_uri(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _downscale_index(size: int, limit: int) -> np.ndarray:
    """Nearest-neighbour sample positions that shrink ``size`` to at most ``limit``."""
    if size <= limit:
        return np.arange(size)
    return np.floor((np.arange(limit) + 0.5) * size / limit).astype(np.int64)


def _shrink(array: np.ndarray, limit: int) -> np.ndarray:
    """Shrink ``(H, W, ...)`` so its longer side is at most ``limit`` (nearest for labels, area average for images)."""
    h, w = array.shape[:2]
    scale = limit / max(h, w)
    if scale >= 1:
        return array
    if array.dtype == np.uint8 and array.ndim == 3:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BOX))
    rows = _downscale_index(h, max(1, round(h * scale)))
    cols = _downscale_index(w, max(1, round(w * scale)))
    return array[rows][:, cols]


def _segmentation_rgba(sem: np.ndarray, class_table) -> np.ndarray:
    """``(H, W, 4)`` uint8: class colours, transparent where the label is the background or outside the table."""
    rgb = class_table.colorize(np.clip(sem, 0, None))
    labelled = (sem >= 0) & (sem < len(class_table))
    if class_table.background is not None:
        labelled &= sem != class_table.background
    return np.concatenate([rgb, (labelled * 255).astype(np.uint8)[:, :, None]], axis=2)


def _without_cam(ex: dict | None) -> dict | None:
    """The explanation payload for the page's JSON: the CAM is in the markup already, the JSON says whether."""
    return None if ex is None else {**ex, "cam": ex["cam"] is not None}


def _asset(name: str) -> str:
    """The viewer's stylesheet or script (twostream/viz/static/), to inline into the page."""
    return resources.files("twostream.viz").joinpath("static", name).read_text(encoding="utf-8")


def _json_for_script(data) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` can end the element."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _view_payload(view: GraphView, img: np.ndarray, seed: int) -> dict:
    """Everything the page needs about one view, as JSON-ready data (coordinates normalised to [0, 1])."""
    g = view.graph
    table = g.class_table
    n = g.num_nodes
    labels = g.labels.detach().cpu().numpy().astype(np.int64)
    area = g.area.detach().cpu().numpy().astype(float)
    centroid = g.centroid.detach().cpu().numpy().astype(float).reshape(n, 2)
    bbox = g.bbox.detach().cpu().numpy().astype(float).reshape(n, 4)
    pairs, boundary = undirected_edges(g)
    layout = graph_layout(g, seed=seed)
    neighbours: list[list[list[float]]] = [[] for _ in range(n)]
    for (i, j), b in zip(pairs.tolist(), boundary.tolist()):
        neighbours[i].append([j, b])
        neighbours[j].append([i, b])
    nodes = [{
        "id": i,
        "label": int(labels[i]),
        "name": table.names[labels[i]] if 0 <= labels[i] < len(table) else f"#{labels[i]}",
        "short": short_label(table, labels[i]),
        "color": hex_colour(table.palette[labels[i]]) if 0 <= labels[i] < len(table) else "#ffffff",
        "stuff": bool(table.stuff[labels[i]]) if 0 <= labels[i] < len(table) else False,
        "area": round(float(area[i]), 6),
        "centroid": [round(float(c), 5) for c in centroid[i]],
        "bbox": [round(float(c), 5) for c in bbox[i]],
        "layout": [round(float(c), 4) for c in layout[i]],
        "neighbours": sorted(neighbours[i], key=lambda nb: -nb[1]),
    } for i in range(n)]
    payload: dict = {
        "name": view.name,
        "image_size": [int(img.shape[0]), int(img.shape[1])],
        "graph_size": list(g.image_size),
        "nodes": nodes,
        "edges": [[int(i), int(j), float(b)] for (i, j), b in zip(pairs.tolist(), boundary.tolist())],
        "topk": [[str(s), float(p)] for s, p in view.scene_topk] if view.scene_topk else None,
        "segmentation": None,
        "node_map": None,
        "explanation": explanation_payload(g, view.explanation),
    }
    if view.sem_map is not None:
        sem = as_label_map(view.sem_map, img.shape[:2], what=f"{view.name} sem_map")
        payload["segmentation"] = _png_data_uri(_shrink(_segmentation_rgba(sem, table), MAX_IMAGE_SIDE))
    node_map = view.resolved_node_map()
    if node_map is not None:
        node_map = as_label_map(node_map, img.shape[:2], what=f"{view.name} node_map")
        small = _shrink(node_map, MAX_MAP_SIDE)
        payload["node_map"] = {"width": int(small.shape[1]), "height": int(small.shape[0]),
                               "rle": rle_encode(small)}
    return payload


def _comparison(views: Sequence[GraphView]) -> dict | None:
    """Class and adjacency agreement of the first view (prediction) with the second (ground truth), by class."""
    if len(views) < 2:
        return None
    sets = []
    for v in views[:2]:
        labels = v.graph.labels.detach().cpu().numpy().tolist()
        pairs, _ = undirected_edges(v.graph)
        sets.append(({int(x) for x in labels},
                     {tuple(sorted((labels[i], labels[j]))) for i, j in pairs.tolist()}))
    table = views[0].graph.class_table

    def score(pred: set, true: set) -> dict:
        hit = len(pred & true)
        return {"precision": hit / len(pred) if pred else None, "recall": hit / len(true) if true else None}

    names = [views[0].name, views[1].name]
    return {
        "names": names,
        "classes": score(sets[0][0], sets[1][0]),
        "adjacencies": score(sets[0][1], sets[1][1]),
        "only_first": sorted(short_label(table, c) for c in sets[0][0] - sets[1][0]),
        "only_second": sorted(short_label(table, c) for c in sets[1][0] - sets[0][0]),
    }


# ------------------------------------------------------------------------------------------------- page template


def _explanation_markup(ex: dict | None) -> tuple[str, str, str, str]:
    """The static parts of an explanation: the "because" line (and notes), the CAM layer, its slider, the streams."""
    if not ex:
        return "", "", "", ""
    esc = html.escape
    notes = "".join(f"<li>{esc(note)}</li>" for note in ex["notes"])
    because = (f'<p class="because" title="{esc(ex["method"])}">{esc(ex["because"])}</p>'
               + (f'<ul class="notes">{notes}</ul>' if notes else ""))
    cam = cam_control = ""
    if ex["cam"]:
        cam = f'<img class="cam" alt="class-activation map for {esc(ex["scene"])}" src="{ex["cam"]}">'
        cam_control = '<label>CAM <input class="cam-opacity" type="range" min="0" max="100" value="55"></label>'
    values = [v for v in ex["streams"].values() if v is not None]
    span = max([abs(v) for v in values] + [0.05])
    bars = []
    for name, value in ex["streams"].items():
        if value is None:
            continue
        width = 50.0 * abs(value) / span
        left = 50.0 if value >= 0 else 50.0 - width
        kind = "for" if value >= 0 else "against"
        bars.append(f'<div class="stream" title="{esc(name)}: the scene probability drops by {value:+.4f} when this '
                    f'stream is replaced by its training-set mean"><span>{esc(name)} {value:+.2f}</span>'
                    f'<b><i class="{kind}" style="left:{left:.1f}%;width:{width:.1f}%"></i></b></div>')
    streams = f'<div class="streams">streams (Δp when averaged): {"".join(bars)}</div>' if bars else ""
    return because, cam, cam_control, streams


def _view_markup(k: int, view: dict, image_uri: str, image_size: tuple[int, int]) -> str:
    """The static part of one view's section; the script adds the SVG drawings, the region canvas and the info."""
    esc = html.escape
    h, w = image_size
    topk = ""
    if view["topk"]:
        items = "".join(f"<li>{esc(s)} {p:.1%}</li>" for s, p in view["topk"])
        topk = f'<ol class="topk" title="scene prediction, best first">{items}</ol>'
    seg = (f'<img class="seg" alt="segmentation of {esc(view["name"])}" src="{view["segmentation"]}">'
           if view["segmentation"] else "")
    n, e = len(view["nodes"]), len(view["edges"])
    src = f' src="{image_uri}"' if image_uri else ""
    because, cam, cam_control, streams = _explanation_markup(view.get("explanation"))
    size_control = ("<span>node size ~ area, edge width ~ shared boundary</span>" if not view.get("explanation") else
                    '<label>size <select class="size"><option value="importance">importance</option>'
                    '<option value="area">area</option></select></label>'
                    "<span>red: for the scene, blue: against; hover for the numbers</span>")
    return f"""
<section class="view" data-view="{k}">
  <h2>{esc(view["name"])} <span class="meta">— {n} object{"s" * (n != 1)}, {e} adjacenc{"ies" if e != 1 else "y"}</span>
  </h2>
  {topk}
  {because}{streams}
  <div class="row">
    <div>
      <div class="imgbox" style="aspect-ratio:{max(w, 1)} / {max(h, 1)}">
        <img class="photo" alt="image"{src}>
        {seg}
        {cam}
        <canvas class="region"></canvas>
        <svg class="marks"></svg>
      </div>
      <div class="controls">
        <label>segmentation <input class="opacity" type="range" min="0" max="100" value="45"></label>
        <label><input class="show-marks" type="checkbox" checked> graph on image</label>
        {cam_control}
      </div>
    </div>
    <div>
      <div class="graphbox"><svg></svg></div>
      <div class="controls">
        <label>layout <select class="layout"><option value="spring">spring</option>
          <option value="centroid">centroids</option></select></label>
        {size_control}
      </div>
    </div>
    <aside class="info"></aside>
  </div>
</section>"""


# --------------------------------------------------------------------------------------------------- top level
def scene_graph_html(image: np.ndarray, views: GraphView | Sequence[GraphView], *, title: str | None = None,
                     seed: int = 0) -> str:
    """The viewer page as one self-contained HTML string (inline CSS/JS, data URIs, JSON; no network).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        views: one :class:`GraphView` or several (e.g. prediction and ground truth, shown as tabs or all at once;
            with two, a summary compares their classes and adjacencies, the first against the second).
            ``sem_map`` and ``node_map``, when given, must be ``(H, W)``.
        title: page heading, e.g. the image's file name (escaped), or ``None``.
        seed: seed of the spring layout.

    Returns:
        The HTML document.
    """
    img = as_image(image)
    views = [views] if isinstance(views, GraphView) else list(views)
    if not views:
        raise ValueError("scene_graph_html: give at least one GraphView")
    for v in views:
        if not isinstance(v, GraphView):
            raise TypeError(f"scene_graph_html: views must be GraphView objects, got {type(v).__name__}")
    payloads = [_view_payload(v, img, seed) for v in views]
    image_uri = _png_data_uri(_shrink(img, MAX_IMAGE_SIDE))
    esc = html.escape
    heading = title if title else "scene graph"
    tabs = ""
    if len(views) > 1:
        buttons = "".join(f'<button type="button" data-tab="{k}">{esc(v.name)}</button>' for k, v in enumerate(views))
        tabs = f'<nav class="tabs">{buttons}<button type="button" data-tab="-1">all</button></nav>'
    summary = ""
    cmp = _comparison(views)
    if cmp:
        def fmt(s: dict) -> str:
            return " / ".join("–" if s[k] is None else f"{s[k]:.0%}" for k in ("precision", "recall"))
        a, b = (esc(x) for x in cmp["names"])
        summary = (f'<div class="summary">{a} vs {b}: classes precision / recall {fmt(cmp["classes"])}, '
                   f'adjacencies {fmt(cmp["adjacencies"])}; only in {a}: '
                   f'{esc(", ".join(cmp["only_first"]) or "none")}; only in {b}: '
                   f'{esc(", ".join(cmp["only_second"]) or "none")}</div>')
    # the photo is embedded once, in the first view; the script gives the other views the same source
    sections = "".join(_view_markup(k, p, image_uri if k == 0 else "", img.shape[:2]) for k, p in enumerate(payloads))
    # the images are in the markup already; the JSON only says whether a view has a segmentation
    data = {"title": heading, "views": [{**p, "segmentation": p["segmentation"] is not None,
                                         "explanation": _without_cam(p["explanation"])} for p in payloads]}
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(heading)} — twostream scene graph</title>
<style>{_asset("viewer.css")}</style>
</head>
<body>
<header><h1>{esc(heading)}</h1><span class="meta">twostream scene graph · hover or click a node or a region</span>
{tabs}</header>
{summary}
<main>{sections}
</main>
<script type="application/json" id="twostream-data">{_json_for_script(data)}</script>
<script>{_asset("viewer.js")}</script>
</body>
</html>
"""


def write_html(path: str | Path, image: np.ndarray, views: GraphView | Sequence[GraphView], **kwargs) -> Path:
    """Write :func:`scene_graph_html` (same keyword arguments) to ``path`` as UTF-8; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(scene_graph_html(image, views, **kwargs), encoding="utf-8")
    return path
