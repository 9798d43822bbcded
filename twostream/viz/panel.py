"""PNG panels of a scene graph: image | segmentation overlay with the graph drawn on it | the graph laid out alone.

    fig = draw_panel(image, GraphView("prediction", graph, sem_map, scene_topk=[("bedroom", 0.8)]))
    save_panel("panel.png", image, [GraphView("prediction", ...), GraphView("ground truth", ...)])  # two rows

A view with an explanation (``GraphView(..., explanation=e)``) draws why: the first cell shows the CAM over the image
and a small bar of the two streams' contributions, the graph cell sizes nodes by the magnitude of their importance
and colours nodes' rims and edges by its sign (red: for the explained scene, blue: against), labelling the strongest
nodes with their score; the caption names the explained scene and its top evidence.

Drawing uses matplotlib's object API on an Agg canvas (no pyplot state, no display needed). Sizes are in pixels: the
panel is ``width`` pixels wide and as tall as the image's aspect ratio asks, one row per view; fonts, markers and line
widths scale with the drawn image so labels stay readable on small and large images alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from twostream.data.classes import ClassTable
from twostream.viz.common import (
    GraphView,
    as_image,
    as_label_map,
    graph_layout,
    hex_colour,
    short_label,
    undirected_edges,
)
from twostream.viz.explanation import cam_overlay, edge_values, importance_colours

__all__ = ["draw_panel", "overlay", "save_panel"]

# Candidate label offsets, in units of (label width, label height) from the anchor: on the anchor first, then
# around it; the first spot that overlaps no earlier label (and no other node's marker) wins.
_LABEL_OFFSETS = ((0.0, 0.0), (0.0, -1.0), (0.0, 1.0), (0.6, 0.0), (-0.6, 0.0), (0.6, -1.0), (-0.6, -1.0),
                  (0.6, 1.0), (-0.6, 1.0), (0.0, -2.0), (0.0, 2.0), (1.1, 0.0), (-1.1, 0.0))


# The drawing's own flat colours (background, graph cell, edges, outlines, text): exact in quantised PNGs.
_UI_COLOURS = np.array([[255, 255, 255], [243, 243, 241], [107, 107, 107], [17, 17, 17], [34, 34, 34],
                        [200, 200, 200], [85, 85, 85], [0, 0, 0]], dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------- helpers
def overlay(image: np.ndarray, sem_map: np.ndarray, class_table: ClassTable, alpha: float = 0.5,
            boundaries: bool = True) -> np.ndarray:
    """Blend the class colours of ``sem_map`` over ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        sem_map: ``(H, W)`` int labels of ``class_table``; the background label (``other``) and labels outside the
            table (``255`` = ignore) leave the image as it is.
        class_table: names and palette of the labels.
        alpha: weight of the class colour, in ``[0, 1]``.
        boundaries: darken the pixels where the label changes, so neighbouring regions of similar colour separate.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    img = as_image(image)
    sem = as_label_map(sem_map, img.shape[:2])
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must lie in [0, 1], got {alpha}")
    colour = class_table.colorize(np.clip(sem, 0, None)).astype(np.float32)  # (H, W, 3)
    labelled = (sem >= 0) & (sem < len(class_table))
    if class_table.background is not None:
        labelled &= sem != class_table.background
    weight = (alpha * labelled)[:, :, None]  # (H, W, 1)
    out = img.astype(np.float32) * (1.0 - weight) + colour * weight
    if boundaries:
        edge = np.zeros(sem.shape, dtype=bool)
        edge[:, 1:] |= sem[:, 1:] != sem[:, :-1]
        edge[1:, :] |= sem[1:, :] != sem[:-1, :]
        out[edge] *= 0.45
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Overlap area between box ``a`` (4,) and boxes ``b`` (K, 4), both ``(x0, y0, x1, y1)`` in display pixels."""
    if len(b) == 0:
        return np.zeros(0)
    w = np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0])
    h = np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def _place_labels(ax, renderer, xy: np.ndarray, texts: Sequence[str], order: np.ndarray, fontsize: float,
                  markers: np.ndarray, outline: float) -> None:
    """Add one label per node near its anchor ``xy`` (N, 2) in data coordinates, keeping labels from overlapping.

    Greedy: nodes in ``order`` (largest first) take the first candidate spot around their anchor that overlaps no
    placed label, no other node's marker box (``markers`` (N, 4), display pixels) and stays inside the axes; when none
    is free, the spot with the least overlap. Labels are white with a dark outline, readable on any colour.
    """
    frame = ax.get_window_extent(renderer)
    placed: list[np.ndarray] = []
    to_data = ax.transData.inverted()
    effects = [patheffects.withStroke(linewidth=outline, foreground="#111111")]
    for i in order:
        text = ax.text(*xy[i], texts[i], fontsize=fontsize, color="white", ha="center", va="center", zorder=6,
                       path_effects=effects, clip_on=True)
        box = text.get_window_extent(renderer)
        w, h = box.width, box.height * 1.05
        cx, cy = ax.transData.transform(xy[i])
        others = np.delete(markers, i, axis=0)
        best, best_cost = (cx, cy), np.inf
        for dx, dy in _LABEL_OFFSETS:
            x, y = cx + dx * w, cy + dy * h
            cand = np.array([x - w / 2, y - h / 2, x + w / 2, y + h / 2])
            outside = (max(frame.x0 - cand[0], 0) + max(cand[2] - frame.x1, 0)) * h + \
                      (max(frame.y0 - cand[1], 0) + max(cand[3] - frame.y1, 0)) * w
            cost = 10.0 * _overlap(cand, np.array(placed).reshape(-1, 4)).sum() + \
                _overlap(cand, others).sum() + 5.0 * outside
            if cost < best_cost:
                best, best_cost = (x, y), cost
            if cost == 0:
                break
        text.set_position(to_data.transform(best))
        placed.append(np.array([best[0] - w / 2, best[1] - h / 2, best[0] + w / 2, best[1] + h / 2]))


# ------------------------------------------------------------------------------------------------ drawing blocks
class _Style:
    """Pixel sizes derived from the drawn cell, so everything scales with the image."""

    def __init__(self, cell_w: float, cell_h: float, dpi: float):
        self.dpi = dpi
        self.font_px = float(np.clip(min(cell_w, cell_h) / 26.0, 9.0, 22.0))
        self.pt = 72.0 / dpi  # points per pixel

    @property
    def font_pt(self) -> float:
        return self.font_px * self.pt


def _draw_graph_edges(ax, p0: np.ndarray, p1: np.ndarray, boundary: np.ndarray, max_lw_px: float, colour: str,
                      outline_px: float) -> None:
    """Segments ``p0 -> p1`` ((P, 2) data coords) with widths ~ sqrt(shared boundary); an optional dark casing."""
    if len(p0) == 0:
        return
    rel = np.sqrt(boundary / max(float(boundary.max()), 1e-6))
    lw = (0.6 + max_lw_px * rel)  # px
    segments = np.stack([p0, p1], axis=1)  # (P, 2, 2)
    if outline_px > 0:
        ax.add_collection(LineCollection(segments, linewidths=(lw + 2 * outline_px) * (72.0 / ax.figure.dpi),
                                         colors="#111111", zorder=3, capstyle="round"))
    ax.add_collection(LineCollection(segments, linewidths=lw * (72.0 / ax.figure.dpi), colors=colour, zorder=4,
                                     capstyle="round"))


def _draw_overlay_cell(ax, renderer, img: np.ndarray, view: GraphView, style: _Style, alpha: float) -> None:
    h, w = img.shape[:2]
    g = view.graph
    table = g.class_table
    shown = overlay(img, view.sem_map, table, alpha) if view.sem_map is not None else img
    ax.imshow(shown, interpolation="antialiased")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    n = g.num_nodes
    if n == 0:
        return
    xy = np.asarray(g.centroid.detach().cpu(), dtype=np.float64) * np.array([w, h])  # (N, 2) pixels
    pairs, boundary = undirected_edges(g)
    px_per_data = ax.get_window_extent(renderer).width / w  # display pixels per image pixel
    _draw_graph_edges(ax, xy[pairs[:, 0]], xy[pairs[:, 1]], boundary, style.font_px * 0.5, "white",
                      outline_px=max(1.0, style.font_px * 0.08))
    labels = g.labels.detach().cpu().numpy()
    colours = [hex_colour(table.palette[lab]) if 0 <= lab < len(table) else "#ffffff" for lab in labels]
    marker_px = style.font_px * 0.9
    ax.scatter(xy[:, 0], xy[:, 1], s=(marker_px * style.pt) ** 2, c=colours, edgecolors="white",
               linewidths=max(1.0, style.font_px * 0.12) * style.pt, zorder=5)
    # labels sit beside the marker (one marker below its centre first), so the marker stays visible
    anchor = xy + np.array([0.0, marker_px * 1.1 / px_per_data])
    centres = ax.transData.transform(xy)
    markers = np.concatenate([centres - marker_px / 2, centres + marker_px / 2], axis=1)
    area = g.area.detach().cpu().numpy()
    _place_labels(ax, renderer, anchor, [short_label(table, lab) for lab in labels], np.argsort(-area, kind="stable"),
                  style.font_pt, markers, outline=max(1.5, style.font_px * 0.2) * style.pt * 1.4)


def _draw_graph_cell(ax, renderer, view: GraphView, style: _Style, cell_w: float, seed: int) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("#f3f3f1")
    for spine in ax.spines.values():
        spine.set_color("#c8c8c8")
    g = view.graph
    n = g.num_nodes
    if n == 0:
        ax.text(0.5, 0.5, "no objects\n(empty scene graph)", ha="center", va="center", fontsize=style.font_pt,
                color="#555555")
        return
    table = g.class_table
    labels = g.labels.detach().cpu().numpy()
    area = g.area.detach().cpu().numpy()
    diameter_px = style.font_px * 1.0 + np.sqrt(np.clip(area, 0, 1)) * cell_w * 0.2  # node size ~ area
    expl = view.explanation
    scores = expl.node_scores if expl is not None and expl.node_scores is not None and len(expl.node_scores) == n \
        else None
    edge_scores = edge_values(g, expl) if expl is not None else None
    rim, rim_px, order = "#222222", max(1.0, style.font_px * 0.08), np.argsort(-area, kind="stable")
    texts = [short_label(table, lab) for lab in labels]
    if scores is not None:  # node size ~ |importance|, rim colour = its sign; the strongest get their score
        rel = np.abs(scores) / max(float(np.abs(scores).max()), 1e-12)
        diameter_px = style.font_px * 0.8 + np.sqrt(rel) * cell_w * 0.09
        rim, rim_px = importance_colours(scores), max(1.5, style.font_px * 0.22)
        order = np.argsort(-np.abs(scores), kind="stable")
        for i in order[:3]:
            texts[i] = f"{texts[i]} {scores[i]:+.2f}"
    # keep the largest node and its label inside the cell: pad the layout by its radius (and a label's height)
    box = ax.get_window_extent(renderer)
    pad = (diameter_px.max() / 2 + style.font_px) / np.array([box.width, box.height]) + 0.02  # (2,) axes fraction
    pos = graph_layout(g, seed=seed)  # (N, 2) in [0.08, 0.92], y down
    pos = pad + (pos - 0.08) / 0.84 * (1 - 2 * pad)
    pairs, boundary = undirected_edges(g)
    if edge_scores is not None:  # edge width ~ |importance|, colour = its sign
        _draw_graph_edges(ax, pos[pairs[:, 0]], pos[pairs[:, 1]], np.abs(edge_scores), style.font_px * 0.8,
                          importance_colours(edge_scores), outline_px=0)
    else:
        _draw_graph_edges(ax, pos[pairs[:, 0]], pos[pairs[:, 1]], boundary, style.font_px * 0.55, "#6b6b6b",
                          outline_px=0)
    colours = [hex_colour(table.palette[lab]) if 0 <= lab < len(table) else "#ffffff" for lab in labels]
    ax.scatter(pos[:, 0], pos[:, 1], s=(diameter_px * style.pt) ** 2, c=colours, edgecolors=rim,
               linewidths=rim_px * style.pt, zorder=5)
    centres = ax.transData.transform(pos)
    markers = np.concatenate([centres - diameter_px[:, None] / 4, centres + diameter_px[:, None] / 4], axis=1)
    _place_labels(ax, renderer, pos, texts, order, style.font_pt, markers,
                  outline=max(1.5, style.font_px * 0.2) * style.pt * 1.4)


def _row_caption(view: GraphView) -> str:
    g = view.graph
    pairs, _ = undirected_edges(g)
    text = f"{view.name}: {g.num_nodes} object{'s' * (g.num_nodes != 1)}, {len(pairs)} adjacenc" \
           f"{'ies' if len(pairs) != 1 else 'y'}"
    if view.scene_topk:
        text += "   |   scene: " + "  ·  ".join(f"{name} {p:.0%}" for name, p in view.scene_topk[:5])
    e = view.explanation
    if e is not None:
        top = []  # the two strongest objects and the strongest contact (their scores are not on one scale)
        if e.node_scores is not None and e.num_nodes:
            top += [e.node_label(int(i)) for i in e.node_order()[:2] if e.node_scores[i] > 0]
        if e.edge_scores is not None and len(e.edges):
            k = int(e.edge_order()[0])
            if e.edge_scores[k] > 0:
                top.append(f"{e.node_names[e.edges[k, 0]]}–{e.node_names[e.edges[k, 1]]}")
        text += f"   |   why {e.scene}: " + (", ".join(top) if top else "see the CAM")
    return text


def _draw_streams(ax, streams: dict, style: _Style) -> None:
    """A small bar chart of the streams' contributions (change in the scene's probability) in the lower left."""
    items = [(name, float(v)) for name, v in streams.items() if v is not None]
    if not items:
        return
    inset = ax.inset_axes((0.03, 0.03, 0.5, 0.06 + 0.07 * (len(items) + 1)))
    inset.set_facecolor((1, 1, 1, 0.85))
    values = np.array([v for _, v in items])
    span = max(float(np.abs(values).max()), 0.05)
    # labels on the left (x < -1.15 span), bars around the zero line on the right
    inset.barh(np.arange(len(items)), values, color=importance_colours(values), height=0.6)
    inset.axvline(0, color="#555555", lw=0.6)
    for k, (name, v) in enumerate(items):
        inset.text(-2.3 * span, k, f"{name} {v:+.2f}", ha="left", va="center", fontsize=style.font_pt * 0.75,
                   color="#222222")
    inset.set_xlim(-2.35 * span, 1.1 * span)
    inset.text(-2.3 * span, -1, "streams: Δp when averaged", ha="left", va="center", fontsize=style.font_pt * 0.7,
               color="#555555")  # a title row inside the box, readable on any image
    inset.set_ylim(len(items) - 0.4, -1.6)
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_color("#c8c8c8")


# --------------------------------------------------------------------------------------------------- top level
def draw_panel(image: np.ndarray, views: GraphView | Sequence[GraphView], *, title: str | None = None,
               width: int = 1500, dpi: int = 100, alpha: float = 0.5, seed: int = 0) -> Figure:
    """Draw one row per view: image | segmentation overlay with the graph on it | the graph laid out alone.

    On the overlay each node is a marker at its centroid in its class colour, each pair of touching objects a line
    whose width grows with their shared boundary, labels are short class names (white, dark outline) placed to
    avoid each other. The graph cell uses a spring layout started from the centroids; node size grows with area.
    Several views (prediction, ground truth) give several rows for comparison.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        views: one :class:`GraphView` or a list; each ``sem_map`` must be ``(H, W)``.
        title: a line above the rows (e.g. the file name), or ``None``.
        width: figure width in pixels; the height follows from the image's aspect ratio and the number of rows.
        dpi: resolution of the saved PNG (pixels = inches * dpi).
        alpha: weight of the class colours over the image.
        seed: seed of the graph layout (the drawing is deterministic for a given seed).

    Returns:
        A matplotlib ``Figure`` on an Agg canvas (``fig.savefig(path)`` writes it).
    """
    img = as_image(image)
    views = [views] if isinstance(views, GraphView) else list(views)
    if not views:
        raise ValueError("draw_panel: give at least one GraphView")
    for k, v in enumerate(views):
        if not isinstance(v, GraphView):
            raise TypeError(f"draw_panel: views must be GraphView objects, got {type(v).__name__}")
        if v.sem_map is not None:
            views[k] = replace(v, sem_map=as_label_map(v.sem_map, img.shape[:2], what=f"{v.name} sem_map"))
    if width < 300:
        raise ValueError(f"draw_panel: width must be at least 300 pixels, got {width}")
    h, w = img.shape[:2]
    margin = round(width * 0.008)
    cell_w = (width - 4 * margin) / 3.0
    cell_h = cell_w * h / w
    style = _Style(cell_w, cell_h, dpi)
    strip = style.font_px * 2.0  # caption above each row
    header = style.font_px * 2.6 if title else 0.0
    height = round(header + len(views) * (strip + cell_h) + (len(views) + 1) * margin)

    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    if title:
        fig.text(margin / width, 1 - (margin + header / 2) / height, title, ha="left", va="center",
                 fontsize=style.font_pt * 1.25, fontweight="bold")
    top = margin + header  # pixels from the top edge
    for v in views:
        fig.text(margin / width, 1 - (top + strip / 2) / height, _row_caption(v), ha="left", va="center",
                 fontsize=style.font_pt, color="#222222")
        y0 = 1 - (top + strip + cell_h) / height  # bottom of the row's cells, figure fraction
        cells = [fig.add_axes(((margin + k * (cell_w + margin)) / width, y0, cell_w / width, cell_h / height))
                 for k in range(3)]
        e = v.explanation
        first = cam_overlay(img, e.cam) if e is not None and e.cam is not None else img
        cells[0].imshow(first, interpolation="antialiased")
        cells[0].set_axis_off()
        if e is not None:
            label = f"CAM: {e.scene}" if e.cam is not None else (
                "no CAM (graph-only model)" if e.streams.get("image") is None else "")
            cells[0].text(0.02, 0.98, label, transform=cells[0].transAxes, ha="left", va="top",
                          fontsize=style.font_pt * 0.9, color="white",
                          path_effects=[patheffects.withStroke(linewidth=2, foreground="#111111")])
            _draw_streams(cells[0], e.streams, style)
        _draw_overlay_cell(cells[1], renderer, img, v, style, alpha)
        _draw_graph_cell(cells[2], renderer, v, style, cell_w, seed)
        top += strip + cell_h + margin
    return fig


def save_panel(path: str | Path, image: np.ndarray, views: GraphView | Sequence[GraphView], *,
               colors: int | None = None, **kwargs) -> Path:
    """Draw the panel (:func:`draw_panel` keyword arguments) and write it as PNG to ``path``; returns the path.

    ``colors``: quantise to this many colours (2..256, median cut with dithering): files ~3x smaller, e.g. for
    documentation; ``None`` keeps full colour.
    """
    from PIL import Image

    if colors is not None and not 2 <= colors <= 256:
        raise ValueError(f"save_panel: colors must lie in 2..256 (or None for full colour), got {colors}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = draw_panel(image, views, **kwargs)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[:, :, :3]  # (H, W, 3) uint8, exactly the figure's pixels
    if colors is None:
        out = Image.fromarray(rgb)
    else:
        views = [views] if isinstance(views, GraphView) else list(views)
        node_colours = [v.graph.class_table.palette[v.graph.labels.cpu().numpy() % len(v.graph.class_table)]
                        for v in views]
        out = _quantize(rgb, colors, np.concatenate([_UI_COLOURS, *node_colours]))
    out.save(path, format="PNG", optimize=True)
    return path


def _quantize(rgb: np.ndarray, colors: int, exact: np.ndarray):
    """``(H, W, 3)`` uint8 -> a palette PIL image of ``colors`` entries that keeps flat colours exact.

    Up to a quarter of the palette holds exact colours: ``exact`` ``(K, 3)`` (the drawing's own: background, node
    fills, text), then the most frequent others. Pixels of exactly those colours keep them; the rest (the photograph,
    antialiased edges) get an adaptive median-cut palette with Floyd-Steinberg dithering. Median cut alone shifts the
    colours of small markers, which then no longer match their class colours.
    """
    from PIL import Image

    h, w, _ = rgb.shape

    def code(c: np.ndarray) -> np.ndarray:
        c = c.astype(np.int64)
        return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]

    codes = code(rgb)  # (H, W)
    uniq, counts = np.unique(codes, return_counts=True)
    budget = min(colors // 4, len(uniq) - 1)
    wanted = np.unique(code(np.asarray(exact)))
    wanted = wanted[np.isin(wanted, uniq)][:budget]  # only colours that occur
    frequent = uniq[np.argsort(-counts, kind="stable")]
    frequent = frequent[~np.isin(frequent, wanted)][: budget - len(wanted)]
    keep = np.sort(np.concatenate([wanted, frequent]))  # (K,)
    adaptive = Image.fromarray(rgb).quantize(colors - len(keep), method=Image.Quantize.MEDIANCUT,
                                             dither=Image.Dither.FLOYDSTEINBERG)
    index = np.asarray(adaptive, dtype=np.int64)  # (H, W) in [0, colors - K)
    slot = np.searchsorted(keep, codes)
    exact = keep[np.clip(slot, 0, len(keep) - 1)] == codes
    index = np.where(exact, colors - len(keep) + slot, index)
    kept = np.stack([(keep >> 16) & 255, (keep >> 8) & 255, keep & 255], axis=1)  # (K, 3)
    palette = np.asarray(adaptive.getpalette()[: 3 * (colors - len(keep))]).reshape(-1, 3)
    palette = np.concatenate([palette, kept]).astype(np.uint8)
    out = Image.frombytes("P", (w, h), index.astype(np.uint8).tobytes())
    out.putpalette(palette.reshape(-1).tolist())
    return out
