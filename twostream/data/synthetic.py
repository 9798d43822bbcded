"""Synthetic scenes in the exact ADEChallengeData2016 layout, so that every test exercises the real reader.

Eight scene types named after ADE20K scenes: bedroom, kitchen, bathroom, living_room, dining_room, office, street,
highway. Each has its own distribution of ADE20K-150 objects (real class ids from ``ade20k150()``) and spatial rules:
the floor lies below the furniture and every piece of furniture stands on it, the sky is above the buildings, a lamp
stands on the chest of drawers beside the bed, chairs touch the dining table, pillows lie on the bed, a mirror hangs
above the bathroom sink, cars drive on the road. Objects are drawn as textured shapes (cv2 and array slicing into a
label map), then coloured with a class-typical colour, a per-object colour jitter, a class texture (planks, tiles,
window grids, stripes, grain), low-frequency shading, a slight blur and pixel noise, all vectorised.

Relation-only images. A fraction of the ``living_room`` and ``dining_room`` images (``relation_fraction``, spread
evenly) are drawn by one shared layout with exactly the same objects: wall, ceiling, floor, painting, table, chair
and sofa, placed in a row on the floor as ``[toucher][table] gap [other]`` (or mirrored). In a dining room the chair
touches the table and the sofa stands apart; in a living room the sofa touches the table and the chair stands apart.
Sizes, heights, gap, start position, mirroring and colours come from the same random draws, so for one seed the two
variants have identical class sets and identical per-class pixel counts: only which objects touch which differs
(``render_relation_pair`` draws both). Object presence alone cannot tell these images apart; adjacency can.

Output (``make_synthetic``)::

    out/images/{training,validation}/ADE_{train,val}_########.jpg   JPEG, quality 90
    out/annotations/{training,validation}/*.png                     uint8, 0 = other, 1..150
    out/annotations_instance/{split}/*.png                          with instances=True: RGB, R = class, G = index
    out/sceneCategories.txt                                         both splits
    out/synthetic.json                                              parameters and the relation-only image names

Scenes are assigned round-robin over the file index (image 1 is the first scene, image 2 the second, ...), so the
first N files of a split (``data.max_items``) cover every scene. Every image has its own generator seeded from
``(seed, split, index)``: output bytes depend only on the parameters, not on ``workers``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from twostream.data.classes import ade20k150
from twostream.data.io import read_instances

__all__ = [
    "RELATION_SCENES",
    "SCENES",
    "make_synthetic",
    "read_instances",
    "render_relation_pair",
    "render_scene",
]

log = logging.getLogger(__name__)

SPLITS = {"training": "ADE_train_", "validation": "ADE_val_"}
_SPLIT_CODE = {"training": 1, "validation": 2}
_META = "synthetic.json"

# --------------------------------------------------------------------------------------------------------------------
# Classes, colours, textures
# --------------------------------------------------------------------------------------------------------------------

FLAT, GRAIN, HSTRIPES, VSTRIPES, GRID, CHECKER, VGRADIENT = range(7)

# name: (typical RGB, texture)
_LOOK: dict[str, tuple[tuple[int, int, int], int]] = {
    "wall": ((214, 206, 188), GRAIN), "floor": ((150, 108, 70), HSTRIPES), "ceiling": ((236, 234, 228), FLAT),
    "sky": ((120, 170, 230), VGRADIENT), "building": ((170, 150, 135), GRID), "skyscraper": ((120, 140, 160), GRID),
    "road": ((90, 90, 95), GRAIN), "sidewalk": ((175, 170, 160), CHECKER), "grass": ((80, 150, 60), GRAIN),
    "field": ((150, 160, 80), HSTRIPES), "mountain": ((110, 120, 130), GRAIN), "tree": ((50, 110, 45), GRAIN),
    "bed": ((220, 220, 235), GRAIN), "pillow": ((245, 245, 250), FLAT), "blanket": ((120, 60, 80), HSTRIPES),
    "chest of drawers": ((120, 80, 50), HSTRIPES), "lamp": ((250, 230, 170), FLAT),
    "wardrobe": ((135, 95, 60), VSTRIPES), "rug": ((150, 50, 50), CHECKER), "windowpane": ((180, 210, 235), GRID),
    "curtain": ((200, 170, 120), VSTRIPES),
    "painting": ((90, 110, 140), GRAIN), "cabinet": ((160, 120, 80), VSTRIPES), "countertop": ((60, 60, 65), GRAIN),
    "stove": ((40, 40, 40), GRID), "sink": ((200, 205, 210), FLAT), "refrigerator": ((225, 228, 230), FLAT),
    "microwave": ((50, 50, 55), FLAT), "hood": ((170, 170, 175), FLAT), "bathtub": ((245, 245, 245), FLAT),
    "toilet": ((250, 250, 250), FLAT), "mirror": ((200, 220, 230), VGRADIENT), "towel": ((90, 140, 190), HSTRIPES),
    "sofa": ((100, 80, 140), GRAIN), "cushion": ((200, 140, 60), FLAT), "coffee table": ((110, 70, 40), HSTRIPES),
    "television": ((25, 25, 30), FLAT), "plant": ((40, 130, 50), GRAIN), "armchair": ((140, 90, 60), GRAIN),
    "table": ((130, 85, 45), HSTRIPES), "chair": ((95, 60, 35), VSTRIPES), "chandelier": ((240, 210, 120), GRAIN),
    "buffet": ((110, 75, 50), VSTRIPES), "desk": ((150, 120, 90), HSTRIPES), "monitor": ((30, 35, 40), FLAT),
    "swivel chair": ((30, 30, 35), GRAIN), "bookcase": ((120, 85, 55), HSTRIPES), "book": ((160, 60, 50), VSTRIPES),
    "light": ((255, 250, 230), FLAT), "blind": ((225, 220, 205), HSTRIPES), "car": ((170, 30, 40), FLAT),
    "truck": ((220, 220, 215), FLAT), "person": ((60, 70, 110), GRAIN), "streetlight": ((70, 75, 80), FLAT),
    "traffic light": ((40, 40, 40), FLAT), "signboard": ((30, 120, 60), FLAT), "fence": ((140, 120, 90), VSTRIPES),
}


def _class_id(name: str) -> int:
    """ADE20K-150 id of ``name``. objectInfo150.csv writes multi-word names with ';' between the words
    (``coffee;table;cocktail;table``), so a multi-word name the table does not know is matched as a prefix of that
    form; a table with proper multi-word names (``coffee table;cocktail table``) answers directly."""
    table = ade20k150()
    try:
        return table.index(name)
    except KeyError:
        if " " not in name:
            raise
    joined = name.replace(" ", ";")
    for i, full in enumerate(table.names):
        if full == joined or full.startswith(joined + ";"):
            return i
    raise KeyError(f"class '{name}' is not in the {table.name} table")


@lru_cache(maxsize=1)
def _lookup() -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """name -> class id, and per class id (151,) the typical colour (151, 3) and texture (151,)."""
    table = ade20k150()
    ids = {name: _class_id(name) for name in _LOOK}
    colour = table.palette.astype(np.float32).copy()
    texture = np.full(len(table), GRAIN, dtype=np.int64)
    for name, (rgb, tex) in _LOOK.items():
        colour[ids[name]] = rgb
        texture[ids[name]] = tex
    return ids, colour, texture


@lru_cache(maxsize=1)
def _stuff() -> np.ndarray:
    """(151,) bool: the class is amorphous stuff (no instances)."""
    return np.asarray(ade20k150().stuff, dtype=bool)


# --------------------------------------------------------------------------------------------------------------------
# Canvas: a label map, an object map and the list of objects, drawn in painter's order
# --------------------------------------------------------------------------------------------------------------------


class _Canvas:
    """Shapes in relative coordinates (x right, y down, both in [0, 1]) painted into ``label`` (H, W) uint8 and
    ``obj`` (H, W) uint16; later shapes cover earlier ones. ``classes[o]`` is the class id of object ``o``."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.label = np.zeros((h, w), np.uint8)
        self.obj = np.zeros((h, w), np.uint16)
        self.classes: list[int] = [0]  # object 0: nothing painted (label 0, other)
        self.ids = _lookup()[0]

    def new(self, name: str) -> int:
        self.classes.append(self.ids[name])
        return len(self.classes) - 1

    def rect_px(self, name: str, x0: int, y0: int, x1: int, y1: int, obj: int = 0) -> int:
        """Pixel rectangle ``[x0, x1) x [y0, y1)``, clipped to the canvas."""
        o = obj or self.new(name)
        x0, x1 = max(0, x0), min(self.w, x1)
        y0, y1 = max(0, y0), min(self.h, y1)
        if x1 > x0 and y1 > y0:
            self.label[y0:y1, x0:x1] = self.classes[o]
            self.obj[y0:y1, x0:x1] = o
        return o

    def rect(self, name: str, x0: float, y0: float, x1: float, y1: float, obj: int = 0) -> int:
        w, h = self.w, self.h
        return self.rect_px(name, round(x0 * w), round(y0 * h), max(round(x1 * w), round(x0 * w) + 1),
                            max(round(y1 * h), round(y0 * h) + 1), obj)

    def poly(self, name: str, points: Sequence[tuple[float, float]], obj: int = 0) -> int:
        o = obj or self.new(name)
        pts = np.round(np.asarray(points, np.float64) * (self.w, self.h)).astype(np.int32)
        cv2.fillPoly(self.label, [pts], int(self.classes[o]))
        cv2.fillPoly(self.obj, [pts], int(o))
        return o

    def ellipse(self, name: str, cx: float, cy: float, rx: float, ry: float, obj: int = 0) -> int:
        o = obj or self.new(name)
        centre = (round(cx * self.w), round(cy * self.h))
        axes = (max(1, round(rx * self.w)), max(1, round(ry * self.h)))
        cv2.ellipse(self.label, centre, axes, 0, 0, 360, int(self.classes[o]), -1)
        cv2.ellipse(self.obj, centre, axes, 0, 0, 360, int(o), -1)
        return o


# --------------------------------------------------------------------------------------------------------------------
# Scene recipes
# --------------------------------------------------------------------------------------------------------------------


def _room(c: _Canvas, r: np.random.Generator, ceiling: bool = True, slant: bool = True) -> tuple[float, float]:
    """Wall, optional ceiling band, floor below a (slightly slanted) floor line.

    Returns (bottom of the ceiling, lowest point of the floor line), both relative.
    """
    c.rect("wall", 0, 0, 1, 1)
    top = 0.0
    if ceiling:
        top = r.uniform(0.06, 0.15)
        c.rect("ceiling", 0, 0, 1, top)
    hz = r.uniform(0.58, 0.7)
    d = r.uniform(-0.03, 0.03) if slant else 0.0
    c.poly("floor", [(0, hz + d), (1, hz - d), (1, 1), (0, 1)])
    return top, hz + abs(d)


def _window(c: _Canvas, r: np.random.Generator, top: float, hz: float, curtains: bool) -> None:
    ww, wh = r.uniform(0.14, 0.24), r.uniform(0.18, 0.28)
    x0, y0 = r.uniform(0.05, 0.9 - ww), r.uniform(top + 0.04, max(top + 0.05, hz - wh - 0.12))
    c.rect("windowpane", x0, y0, x0 + ww, y0 + wh)
    if curtains:
        cw = r.uniform(0.03, 0.06)
        c.rect("curtain", x0 - cw, y0 - 0.03, x0 + cw, y0 + wh + 0.05)
        c.rect("curtain", x0 + ww - cw, y0 - 0.03, x0 + ww + cw, y0 + wh + 0.05)


def _bedroom(c: _Canvas, r: np.random.Generator) -> None:
    top, hz = _room(c, r)
    if r.random() < 0.7:
        _window(c, r, top, hz, curtains=r.random() < 0.7)
    if r.random() < 0.5:  # wardrobe against the wall, standing on the floor, at one side
        left = r.random() < 0.5
        x0 = 0.0 if left else r.uniform(0.8, 0.86)
        c.rect("wardrobe", x0, top + 0.05, x0 + r.uniform(0.14, 0.2), hz + 0.05)
    if r.random() < 0.5:
        c.rect("rug", r.uniform(0.1, 0.3), hz + 0.2, r.uniform(0.6, 0.9), r.uniform(0.9, 0.98))
    bw = r.uniform(0.38, 0.5)
    bx = r.uniform(0.22, 0.78 - bw)
    by0, by1 = hz - r.uniform(0.1, 0.16), min(0.97, hz + r.uniform(0.18, 0.28))
    if r.random() < 0.7:  # painting above the bed
        c.rect("painting", bx + 0.1 * bw, max(top + 0.04, by0 - 0.22), bx + 0.9 * bw, by0 - 0.06)
    c.rect("bed", bx, by0, bx + bw, by1)
    if r.random() < 0.6:
        c.rect("blanket", bx, by0 + 0.45 * (by1 - by0), bx + bw, by1)
    for k in range(int(r.integers(1, 3))):  # pillows on the head end of the bed
        c.ellipse("pillow", bx + bw * (0.25 + 0.5 * k), by0 + 0.06, bw * 0.18, 0.04)
    # a chest of drawers touching the bed's side, a lamp standing on it: "lamp beside bed"
    nw, nh = r.uniform(0.08, 0.12), r.uniform(0.1, 0.15)
    nx = bx - nw if r.random() < 0.5 else bx + bw
    ny1 = by0 + 0.6 * (by1 - by0)
    c.rect("chest of drawers", nx, ny1 - nh, nx + nw, ny1)
    lamp = c.rect("lamp", nx + 0.4 * nw, ny1 - nh - 0.05, nx + 0.6 * nw, ny1 - nh + 0.005)
    c.poly("lamp", [(nx + 0.1 * nw, ny1 - nh - 0.05), (nx + 0.9 * nw, ny1 - nh - 0.05),
                    (nx + 0.7 * nw, ny1 - nh - 0.11), (nx + 0.3 * nw, ny1 - nh - 0.11)], obj=lamp)


def _kitchen(c: _Canvas, r: np.random.Generator) -> None:
    top, hz = _room(c, r, ceiling=r.random() < 0.5)
    x0, x1 = r.uniform(0.0, 0.15), r.uniform(0.7, 0.85)
    ct, bottom = hz - r.uniform(0.08, 0.14), min(0.96, hz + r.uniform(0.08, 0.14))
    if r.random() < 0.5:
        c.rect("windowpane", 0.45 * (x0 + x1) - 0.1, top + 0.05, 0.45 * (x0 + x1) + 0.1, ct - 0.12)
    for k in range(int(r.integers(2, 4))):  # upper cabinets on the wall
        ux = x0 + k * 0.16
        if ux + 0.14 < x1 and not (0.35 < ux < 0.5):
            c.rect("cabinet", ux, top + 0.03, ux + 0.14, top + r.uniform(0.2, 0.26))
    n = int(r.integers(3, 5))
    edges = np.linspace(x0, x1, n + 1)
    stove_at = int(r.integers(0, n))
    for k in range(n):  # lower cabinets side by side (they touch), one of them a stove
        if k == stove_at:
            c.rect("stove", edges[k], ct + 0.02, edges[k + 1], bottom)
            if r.random() < 0.6:
                c.poly("hood", [(edges[k] + 0.01, top + 0.2), (edges[k + 1] - 0.01, top + 0.2),
                                (edges[k + 1] + 0.02, top + 0.28), (edges[k] - 0.02, top + 0.28)])
        else:
            c.rect("cabinet", edges[k], ct + 0.02, edges[k + 1], bottom)
    c.rect("countertop", x0, ct, x1, ct + 0.025)
    sink_k = (stove_at + 1 + int(r.integers(0, n - 1))) % n
    c.ellipse("sink", 0.5 * (edges[sink_k] + edges[sink_k + 1]), ct + 0.012, 0.05, 0.018)
    c.rect("refrigerator", x1, r.uniform(top + 0.05, 0.25), min(1.0, x1 + r.uniform(0.13, 0.18)), bottom)
    if r.random() < 0.5:  # a microwave standing on the countertop
        mk = (sink_k + 1) % n
        c.rect("microwave", edges[mk] + 0.01, ct - 0.08, edges[mk] + 0.12, ct)


def _bathroom(c: _Canvas, r: np.random.Generator) -> None:
    top, hz = _room(c, r, ceiling=False)
    tub_left = r.random() < 0.5
    tw = r.uniform(0.3, 0.4)
    tx = 0.0 if tub_left else 1.0 - tw
    if r.random() < 0.4:  # shower curtain hanging over the tub
        c.rect("curtain", tx + 0.05 * tw, top + 0.05, tx + 0.3 * tw, hz - 0.02)
    c.rect("bathtub", tx, hz - r.uniform(0.04, 0.1), tx + tw, min(0.97, hz + r.uniform(0.12, 0.2)))
    # sink on a cabinet with a mirror above it, toilet beside, on the other half of the room
    sx = r.uniform(0.45, 0.58) if tub_left else r.uniform(0.08, 0.22)
    cab = c.rect("cabinet", sx, hz - 0.1, sx + 0.16, hz + 0.08)
    del cab
    c.ellipse("sink", sx + 0.08, hz - 0.1, 0.07, 0.025)
    c.rect("mirror", sx + 0.015, hz - 0.38, sx + 0.145, hz - 0.16)
    tx2 = sx + 0.2 if tub_left else sx + 0.24
    toilet = c.rect("toilet", tx2 + 0.02, hz - 0.14, tx2 + 0.11, hz - 0.04)
    c.ellipse("toilet", tx2 + 0.065, hz + 0.0, 0.06, 0.05, obj=toilet)
    c.rect("toilet", tx2 + 0.035, hz + 0.02, tx2 + 0.095, hz + 0.12, obj=toilet)
    if r.random() < 0.7:  # a towel on the wall
        c.rect("towel", tx2 + 0.03, top + 0.12, tx2 + 0.1, top + 0.28)


def _living_room(c: _Canvas, r: np.random.Generator) -> None:
    top, hz = _room(c, r)
    if r.random() < 0.6:
        _window(c, r, top, hz, curtains=r.random() < 0.8)
    if r.random() < 0.6:
        c.poly("rug", [(0.15, hz + 0.14), (0.85, hz + 0.14), (0.95, 0.96), (0.05, 0.96)])
    sw = r.uniform(0.35, 0.48)
    sx = r.uniform(0.15, 0.85 - sw)
    sy0, sy1 = hz - r.uniform(0.1, 0.15), hz + r.uniform(0.06, 0.1)
    if r.random() < 0.7:
        c.rect("painting", sx + 0.15 * sw, max(top + 0.04, sy0 - 0.22), sx + 0.85 * sw, sy0 - 0.07)
    sofa = c.rect("sofa", sx, sy0, sx + sw, sy1)
    c.rect("sofa", sx - 0.03, sy0 + 0.05, sx + sw + 0.03, sy1, obj=sofa)  # armrests
    for k in range(int(r.integers(0, 4))):
        c.ellipse("cushion", sx + sw * (0.2 + 0.3 * k), sy0 + 0.05, 0.035, 0.035)
    c.rect("coffee table", sx + 0.2 * sw, sy1 + r.uniform(0.06, 0.1), sx + 0.8 * sw, sy1 + r.uniform(0.16, 0.2))
    left = sx > 0.5 - sw / 2
    if r.random() < 0.8:  # television on a low cabinet on the far side
        tx = 0.02 if left else 0.8
        c.rect("cabinet", tx, hz - 0.03, tx + 0.17, hz + 0.1)
        c.rect("television", tx + 0.02, hz - 0.17, tx + 0.15, hz - 0.03)
    if r.random() < 0.6:  # a floor lamp beside the sofa
        lx = sx + sw + 0.05 if left else sx - 0.08
        lamp = c.rect("lamp", lx + 0.012, hz - 0.25, lx + 0.02, sy1)
        c.poly("lamp", [(lx - 0.01, hz - 0.25), (lx + 0.042, hz - 0.25), (lx + 0.03, hz - 0.32), (lx, hz - 0.32)],
               obj=lamp)
    if r.random() < 0.5:
        ax = r.uniform(0.0, 0.1) if not left else r.uniform(0.78, 0.86)
        c.rect("armchair", ax, hz + 0.02, ax + 0.14, hz + 0.2)
    if r.random() < 0.4:
        c.ellipse("plant", 0.93, hz - 0.05, 0.05, 0.09)


def _dining_room(c: _Canvas, r: np.random.Generator) -> None:
    top, hz = _room(c, r, ceiling=True)
    if r.random() < 0.5:
        _window(c, r, top, hz, curtains=r.random() < 0.6)
    if r.random() < 0.6:  # sideboard against the wall
        bx = r.uniform(0.05, 0.65)
        c.rect("buffet", bx, hz - 0.12, bx + 0.28, hz + 0.02)
    elif r.random() < 0.7:
        px = r.uniform(0.1, 0.6)
        c.rect("painting", px, top + 0.08, px + 0.25, top + 0.25)
    tw = r.uniform(0.32, 0.45)
    tx = 0.5 - tw / 2 + r.uniform(-0.12, 0.12)
    ty0 = hz + r.uniform(0.02, 0.06)
    ty1 = ty0 + r.uniform(0.05, 0.08)
    # chairs touching the table at both ends (behind it) and, sometimes, in front of it
    ch = r.uniform(0.2, 0.26)
    c.rect("chair", tx - 0.08, ty0 - 0.1, tx, ty0 - 0.1 + ch)
    c.rect("chair", tx + tw, ty0 - 0.1, tx + tw + 0.08, ty0 - 0.1 + ch)
    c.rect("table", tx, ty0, tx + tw, ty1)
    c.rect("table", tx + 0.03, ty1, tx + tw - 0.03, ty1 + 0.12)  # legs/apron as a second, smaller object
    for k in range(int(r.integers(0, 3))):
        fx = tx + tw * (0.2 + 0.4 * k)
        c.rect("chair", fx, ty1 - 0.01, fx + 0.09, min(0.98, ty1 + 0.2))
    # chandelier hanging from the ceiling above the table: cord and body are one object
    cx = tx + tw / 2
    lamp = c.rect("chandelier", cx - 0.004, top, cx + 0.004, top + 0.12)
    c.ellipse("chandelier", cx, top + 0.14, 0.07, 0.035, obj=lamp)


def _office(c: _Canvas, r: np.random.Generator) -> None:
    top, hz = _room(c, r, ceiling=True)
    for k in range(int(r.integers(1, 4))):  # ceiling lights
        lx = 0.1 + 0.3 * k
        c.rect("light", lx, top - 0.025, lx + 0.16, top)
    if r.random() < 0.6:
        wx = r.uniform(0.35, 0.65)
        c.rect("windowpane", wx, top + 0.06, wx + 0.22, hz - 0.18)
        c.rect("blind", wx, top + 0.06, wx + 0.22, top + 0.06 + r.uniform(0.05, 0.15))
    left = r.random() < 0.5
    bx = 0.02 if left else 0.78
    case = c.rect("bookcase", bx, top + 0.06, bx + 0.2, hz + 0.06)
    del case
    for k in range(3):  # rows of books on the bookcase's shelves
        y = top + 0.1 + k * (hz - top - 0.05) / 3
        c.rect("book", bx + 0.02, y, bx + r.uniform(0.1, 0.18), y + 0.07)
    dw = r.uniform(0.35, 0.45)
    dx = r.uniform(0.25, 0.95 - dw) if left else r.uniform(0.02, 0.76 - dw)  # clear of the bookcase
    dy0 = hz - r.uniform(0.0, 0.04)
    c.rect("swivel chair", dx + 0.35 * dw, dy0 - 0.1, dx + 0.6 * dw, dy0 + 0.05)  # behind the desk
    c.rect("desk", dx, dy0, dx + dw, dy0 + r.uniform(0.15, 0.22))
    for k in range(int(r.integers(1, 3))):  # monitors standing on the desk
        mx = dx + 0.1 * dw + k * 0.45 * dw
        c.rect("monitor", mx, dy0 - 0.12, mx + 0.35 * dw, dy0)
    if r.random() < 0.5:
        c.rect("chair", dx + dw + 0.02, dy0 + 0.05, dx + dw + 0.12, dy0 + 0.28)


def _outdoor(c: _Canvas, r: np.random.Generator) -> float:
    c.rect("sky", 0, 0, 1, 1)
    return r.uniform(0.42, 0.55)


def _cars(c: _Canvas, r: np.random.Generator, hz: float, lo: float, hi: float, n: int, truck: bool) -> None:
    for k in range(n):
        y1 = r.uniform(hz + 0.12, 0.95)
        s = (y1 - hz) / (1 - hz)  # perspective: nearer cars are bigger
        w = 0.1 + 0.2 * s
        x0 = r.uniform(lo, hi - w)
        name = "truck" if truck and k == 0 else "car"
        h = w * (0.7 if name == "truck" else 0.45)
        car = c.rect(name, x0, y1 - h * 0.6, x0 + w, y1)
        c.rect(name, x0 + 0.2 * w, y1 - h, x0 + 0.8 * w, y1 - h * 0.6 + 0.005, obj=car)


def _street(c: _Canvas, r: np.random.Generator) -> None:
    hz = _outdoor(c, r)
    vx = r.uniform(0.4, 0.6)
    for side in (0, 1):  # buildings along both sides, from the horizon up to a random height
        x = 0.0 if side == 0 else 1.0
        while (x < vx - 0.12) if side == 0 else (x > vx + 0.12):
            w = r.uniform(0.12, 0.25)
            name = "skyscraper" if r.random() < 0.15 else "building"
            y0 = r.uniform(0.02, 0.15) if name == "skyscraper" else r.uniform(0.12, 0.35)
            xa, xb = (x, min(x + w, vx - 0.1)) if side == 0 else (max(x - w, vx + 0.1), x)
            c.rect(name, xa, y0, xb, hz + 0.08)
            x = xb if side == 0 else xa
    c.poly("sidewalk", [(0, hz + 0.08), (1, hz + 0.08), (1, 1), (0, 1)])
    c.poly("road", [(vx - 0.08, hz + 0.08), (vx + 0.08, hz + 0.08), (1.1, 1), (-0.1, 1)])
    if r.random() < 0.5:
        c.rect("signboard", r.uniform(0.02, 0.2), hz - 0.2, r.uniform(0.25, 0.32), hz - 0.13)
    if r.random() < 0.6:  # a tree on the sidewalk, its crown against the buildings
        tx = r.choice([r.uniform(0.02, 0.08), r.uniform(0.9, 0.96)])
        tree = c.rect("tree", tx - 0.012, hz - 0.05, tx + 0.012, hz + 0.25)
        c.ellipse("tree", tx, hz - 0.1, 0.08, 0.12, obj=tree)
    if r.random() < 0.5:
        lx = r.choice([0.12, 0.86])
        pole = c.rect("streetlight", lx, hz - 0.2, lx + 0.012, hz + 0.3)
        c.rect("streetlight", lx - 0.03, hz - 0.21, lx + 0.04, hz - 0.19, obj=pole)
    if r.random() < 0.3:
        c.rect("traffic light", vx + 0.2, hz - 0.15, vx + 0.23, hz - 0.05)
    for _ in range(int(r.integers(0, 4))):  # people on the sidewalk
        px, py = r.choice([r.uniform(0.02, 0.12), r.uniform(0.86, 0.96)]), r.uniform(hz + 0.25, 0.9)
        s = 0.5 + (py - hz)
        person = c.ellipse("person", px, py - 0.07 * s, 0.02 * s, 0.07 * s)
        c.ellipse("person", px, py - 0.16 * s, 0.015 * s, 0.02 * s, obj=person)
    _cars(c, r, hz, 0.15, 0.85, int(r.integers(1, 4)), truck=False)


def _highway(c: _Canvas, r: np.random.Generator) -> None:
    hz = _outdoor(c, r)
    if r.random() < 0.6:
        peaks = np.sort(r.uniform(0, 1, 3))
        pts = [(0.0, hz)] + [(p, hz - r.uniform(0.08, 0.2)) for p in peaks] + [(1.0, hz)]
        c.poly("mountain", pts)
    ground = "grass" if r.random() < 0.7 else "field"
    c.rect(ground, 0, hz, 1, 1)
    vx = r.uniform(0.4, 0.6)
    c.poly("road", [(vx - 0.04, hz), (vx + 0.04, hz), (1.0, 1), (0.0, 1)])
    if r.random() < 0.5:  # a fence along the road's edge
        c.poly("fence", [(vx + 0.04, hz), (vx + 0.06, hz - 0.01), (1.0, 0.88), (1.0, 1.0)])
    for _ in range(int(r.integers(0, 3))):
        tx = r.choice([r.uniform(0.02, 0.15), r.uniform(0.85, 0.97)])
        ty = r.uniform(hz + 0.02, hz + 0.1)
        tree = c.rect("tree", tx - 0.008, ty - 0.05, tx + 0.008, ty)
        c.ellipse("tree", tx, ty - 0.08, 0.04, 0.06, obj=tree)
    _cars(c, r, hz, 0.1, 0.9, int(r.integers(2, 5)), truck=r.random() < 0.5)


# The relation-only pair: scene -> the object that touches the table in that scene (the other one stands apart)
RELATION_SCENES: dict[str, str] = {"dining_room": "chair", "living_room": "sofa"}


def _relation_room(c: _Canvas, r: np.random.Generator, toucher: str) -> None:
    """The shared layout of relation-only images: ``[toucher][table] gap [other]`` on the floor, or mirrored.

    Every random draw happens in the same order whatever ``toucher`` is, and sizes are integers in pixels, so the
    two variants of one seed have the same pixel count per class; only the adjacency table–chair / table–sofa
    differs.
    """
    assert toucher in ("chair", "sofa")
    h, w = c.h, c.w
    top, hz = _room(c, r, ceiling=True, slant=False)  # flat: where an object stands cannot change what it touches
    px = r.uniform(0.2, 0.55)
    c.rect("painting", px, top + 0.06, px + 0.22, top + 0.2)
    size = {  # (width, height) in pixels; the bottom edge of each stands on the floor
        "table": (round(r.uniform(0.22, 0.3) * w), round(r.uniform(0.12, 0.18) * h)),
        "chair": (round(r.uniform(0.08, 0.12) * w), round(r.uniform(0.2, 0.26) * h)),
        "sofa": (round(r.uniform(0.2, 0.28) * w), round(r.uniform(0.16, 0.22) * h)),
    }
    gap = round(r.uniform(0.06, 0.12) * w)
    y1 = round((hz + r.uniform(0.12, 0.2)) * h)
    mirrored = r.random() < 0.5
    other = "sofa" if toucher == "chair" else "chair"
    row = [toucher, "table", other]
    total = sum(size[n][0] for n in row) + gap
    x = round(r.uniform(0.03, 0.97 - total / w) * w)
    if mirrored:  # [other] gap [table][toucher]
        row = row[::-1]
    left: dict[str, int] = {}
    for k, name in enumerate(row):
        left[name] = x
        x += size[name][0] + (gap if (k == 1 and not mirrored) or (k == 0 and mirrored) else 0)
    for name in ("table", "chair", "sofa"):  # fixed painting order: object ids (and so colours) match across variants
        bw, bh = size[name]
        c.rect_px(name, left[name], y1 - bh, left[name] + bw, y1)


SCENES: dict[str, Callable[[_Canvas, np.random.Generator], None]] = {
    "bedroom": _bedroom,
    "kitchen": _kitchen,
    "bathroom": _bathroom,
    "living_room": _living_room,
    "dining_room": _dining_room,
    "office": _office,
    "street": _street,
    "highway": _highway,
}


# --------------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------------


def _texture_fields(h: int, w: int, r: np.random.Generator) -> np.ndarray:
    """``(7, H, W)`` float32 texture patterns in about [-1, 1], indexed by FLAT, GRAIN, ...; periods scale with
    the image so a texture looks the same at every size."""
    y = np.arange(h, dtype=np.float32)[:, None] / h  # (H, 1)
    x = np.arange(w, dtype=np.float32)[None, :] / w  # (1, W)
    fields = np.zeros((7, h, w), np.float32)
    coarse = r.standard_normal((max(2, h // 6), max(2, w // 6))).astype(np.float32)
    grain = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR) * 0.6
    fields[GRAIN] = grain + r.standard_normal((h, w), dtype=np.float32) * 0.3
    fy, fx = r.uniform(10, 16), r.uniform(10, 16)
    py, px = r.uniform(0, 2 * np.pi, 2)
    sy, sx = np.sin(2 * np.pi * fy * y + py), np.sin(2 * np.pi * fx * x + px)  # (H, 1), (1, W)
    fields[HSTRIPES] = np.where(sy > 0.6, -0.8, 0.25) + 0 * x
    fields[VSTRIPES] = np.where(sx > 0.6, -0.8, 0.25) + 0 * y
    fields[GRID] = np.where((sy > -0.2) & (sx > -0.2), -0.9, 0.4)
    fields[CHECKER] = np.sign(sy * sx) * 0.5
    fields[VGRADIENT] = (y * 2 - 1) * 0.8 + 0 * x
    return fields


def _render(c: _Canvas, r: np.random.Generator) -> np.ndarray:
    """Colour the painted objects: ``(H, W, 3)`` uint8 RGB."""
    _, colour, texture = _lookup()
    h, w = c.h, c.w
    cls = np.asarray(c.classes, dtype=np.int64)  # (n,) class id per object
    n = len(cls)
    base = colour[cls] + r.normal(0, 14, (n, 3)) + r.normal(0, 8, 3)  # per-object jitter and a per-image tint
    base *= r.uniform(0.85, 1.1)  # exposure
    amp = r.uniform(0.06, 0.16, n).astype(np.float32)  # texture contrast per object
    fields = _texture_fields(h, w, r)
    obj = c.obj  # (H, W) object id per pixel
    t = np.choose(texture[cls][obj], fields)  # (H, W): each pixel's own texture pattern
    gain = (1 + amp[obj] * t) * cv2.resize(r.uniform(0.85, 1.1, (3, 3)).astype(np.float32), (w, h),
                                           interpolation=cv2.INTER_LINEAR)  # texture x low-frequency shading
    img = base.astype(np.float32)[obj] * gain[..., None]  # (H, W, 3)
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    img += r.standard_normal(img.shape, dtype=np.float32) * 3.0
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _instance_map(c: _Canvas) -> np.ndarray:
    """``(H, W, 3)`` uint8: R = class id, G = instance index 1..k of visible "thing" objects (painting order)."""
    stuff = _stuff()
    cls = np.asarray(c.classes, dtype=np.int64)
    visible = np.bincount(c.obj.ravel(), minlength=len(cls)) > 0
    thing = visible & ~stuff[cls]
    thing[0] = False
    if thing.sum() > 255:
        raise ValueError(f"{int(thing.sum())} instances in one image; the instance PNG holds at most 255")
    index = np.zeros(len(cls), np.uint8)
    index[thing] = np.arange(1, int(thing.sum()) + 1)
    out = np.zeros((c.h, c.w, 3), np.uint8)
    g = index[c.obj]
    out[..., 0] = np.where(g > 0, cls[c.obj], 0)
    out[..., 1] = g
    return out


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 32 or w < 32:
        raise ValueError(f"synthetic: size must be at least 32x32 pixels, got {h}x{w}")
    return h, w


def render_scene(
    scene: str, seed: int | np.random.SeedSequence = 0, size: int | Sequence[int] = 128, relation_only: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one synthetic image of ``scene``.

    Args:
        scene: a name in ``SCENES``.
        seed: everything (layout, colours, noise) follows from it.
        size: ``H = W`` or ``(H, W)`` in pixels.
        relation_only: use the shared relation-only layout (scenes in ``RELATION_SCENES`` only).

    Returns:
        ``image`` ``(H, W, 3)`` uint8 RGB, ``label`` ``(H, W)`` uint8 (ADE20K-150 ids, 0 = other), ``instances``
        ``(H, W, 3)`` uint8 (R = class id, G = instance index, 0 = none).
    """
    if scene not in SCENES:
        raise ValueError(f"synthetic: unknown scene '{scene}'; choose from: {', '.join(SCENES)}")
    if relation_only and scene not in RELATION_SCENES:
        raise ValueError(f"synthetic: scene '{scene}' has no relation-only variant; only {', '.join(RELATION_SCENES)}")
    h, w = _size(size)
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    # children derived by hand, not ss.spawn(): spawn() counts calls on the object, so a reused seed would drift
    layout_rng, colour_rng = (np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, k)))
                              for k in range(2))
    c = _Canvas(h, w)
    if relation_only:
        _relation_room(c, layout_rng, RELATION_SCENES[scene])
    else:
        SCENES[scene](c, layout_rng)
    return _render(c, colour_rng), c.label, _instance_map(c)


def render_relation_pair(
    seed: int | np.random.SeedSequence = 0, size: int | Sequence[int] = 128
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Both relation-only variants of one seed: scene -> ``render_scene(scene, seed, size, relation_only=True)``."""
    return {s: render_scene(s, seed, size, relation_only=True) for s in RELATION_SCENES}


# --------------------------------------------------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------------------------------------------------


def _is_relation_only(k: int, fraction: float) -> bool:
    """Whether the k-th image (0-based) of a relation scene uses the relation-only layout: spread evenly, with
    floor(n * fraction) of the first n images."""
    return math.floor((k + 1) * fraction + 1e-9) > math.floor(k * fraction + 1e-9)


def _job(task: tuple) -> tuple[str, str, bool]:
    out, split, index, scene, relation, size, seed, instances, quality = task
    stem = f"{SPLITS[split]}{index:08d}"
    try:
        image, label, inst = render_scene(scene, np.random.SeedSequence([seed, _SPLIT_CODE[split], index]), size,
                                          relation)
    except Exception as e:  # a bug in a recipe, not a user mistake: say which image, keep the traceback
        raise RuntimeError(f"synthetic: drawing {scene} image {stem} (seed {seed}) failed: {e}") from e
    out = Path(out)
    Image.fromarray(image, "RGB").save(out / "images" / split / f"{stem}.jpg", quality=quality)
    Image.fromarray(label, "L").save(out / "annotations" / split / f"{stem}.png")
    if instances:
        Image.fromarray(inst, "RGB").save(out / "annotations_instance" / split / f"{stem}.png")
    return stem, scene, relation


def _prepare_out(out: Path, params: dict, overwrite: bool) -> dict | None:
    """Make ``out`` ready; return the existing metadata when it already holds exactly this set."""
    meta_path = out / _META
    if out.is_dir() and any(out.iterdir()):
        if not meta_path.is_file():
            raise ValueError(f"{out}: the folder exists and is not a synthetic set (no {_META}); choose a new or "
                             "empty --out (it is never cleared, in case it holds a real dataset)")
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("params") == params and (out / "sceneCategories.txt").is_file() and not overwrite:
            return old
        if not overwrite:
            changed = sorted(k for k in params if old.get("params", {}).get(k) != params[k])
            raise ValueError(f"{out}: holds a synthetic set made with other parameters ({', '.join(changed)}); "
                             "pass --overwrite to replace it or choose another --out")
        for sub in ("images", "annotations", "annotations_instance"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("sceneCategories.txt", _META):
            (out / name).unlink(missing_ok=True)
    return None


def make_synthetic(
    out: str | Path,
    *,
    train_per_scene: int = 40,
    val_per_scene: int = 10,
    size: int | Sequence[int] = 128,
    seed: int = 0,
    workers: int = 0,
    instances: bool = False,
    scenes: Sequence[str] | None = None,
    relation_fraction: float = 0.25,
    quality: int = 90,
    overwrite: bool = False,
) -> dict:
    """Write a synthetic ADEChallengeData2016-layout dataset to ``out`` (see the module docstring for the layout).

    Args:
        train_per_scene, val_per_scene: images per scene type in each split.
        size: ``H = W`` or ``(H, W)``.
        seed: the same seed (and parameters) gives the same bytes, whatever ``workers``.
        workers: processes that draw and encode images (0 or 1: this process).
        instances: also write ``annotations_instance/<split>/*.png`` (read them with ``read_instances``).
        scenes: scene types to draw (default: all of ``SCENES``, in that order).
        relation_fraction: share of ``living_room``/``dining_room`` images drawn with the relation-only layout.
        quality: JPEG quality.
        overwrite: replace a synthetic set made with other parameters (a folder without ``synthetic.json`` is
            never touched). An existing set with the same parameters is kept as it is.

    Returns:
        The metadata written to ``synthetic.json`` plus ``seconds`` (wall time) and ``images`` (count).
    """
    scenes = list(scenes) if scenes else list(SCENES)
    unknown = [s for s in scenes if s not in SCENES]
    if unknown:
        raise ValueError(f"synthetic: unknown scene(s) {', '.join(unknown)}; choose from: {', '.join(SCENES)}")
    if len(set(scenes)) != len(scenes):
        raise ValueError(f"synthetic: scenes listed twice in {scenes}")
    if train_per_scene < 0 or val_per_scene < 0 or train_per_scene + val_per_scene == 0:
        raise ValueError(f"synthetic: images per scene must be >= 0 and not both 0, got train={train_per_scene}, "
                         f"val={val_per_scene}")
    if not 0.0 <= relation_fraction <= 1.0:
        raise ValueError(f"synthetic: relation_fraction is a share in [0, 1], got {relation_fraction}")
    if not 1 <= quality <= 100:
        raise ValueError(f"synthetic: JPEG quality must be 1..100, got {quality}")
    h, w = _size(size)
    out = Path(out)
    params = {"train_per_scene": train_per_scene, "val_per_scene": val_per_scene, "size": [h, w], "seed": seed,
              "instances": instances, "scenes": scenes, "relation_fraction": relation_fraction, "quality": quality}
    existing = _prepare_out(out, params, overwrite)
    if existing is not None:
        log.info("%s already holds this synthetic set; nothing to do", out)
        return {**existing, "seconds": 0.0, "images": sum(sum(c.values()) for c in existing["counts"].values())}

    tasks = []
    for split, per_scene in (("training", train_per_scene), ("validation", val_per_scene)):
        for sub in ("images", "annotations") + (("annotations_instance",) if instances else ()):
            (out / sub / split).mkdir(parents=True, exist_ok=True)
        for i in range(per_scene * len(scenes)):
            scene, k = scenes[i % len(scenes)], i // len(scenes)  # round-robin: any prefix covers every scene
            relation = scene in RELATION_SCENES and _is_relation_only(k, relation_fraction)
            tasks.append((str(out), split, i + 1, scene, relation, (h, w), seed, instances, quality))

    t0 = time.perf_counter()
    if workers <= 1:
        results = [_job(t) for t in tasks]
    else:  # spawn: the caller may hold torch threads, which do not survive fork reliably
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
            results = list(ex.map(_job, tasks, chunksize=max(1, len(tasks) // (4 * workers))))
    seconds = time.perf_counter() - t0

    results.sort()
    with (out / "sceneCategories.txt").open("w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{stem} {scene}\n" for stem, scene, _ in results)
    counts: dict[str, dict[str, int]] = {}
    for stem, scene, _ in results:
        split = "training" if stem.startswith(SPLITS["training"]) else "validation"
        counts.setdefault(split, {}).setdefault(scene, 0)
        counts[split][scene] += 1
    meta = {
        "format": "twostream-synthetic-v1",
        "params": params,
        "counts": counts,
        "relation_scenes": RELATION_SCENES,
        "relation_only": [stem for stem, _, rel in results if rel],
    }
    (out / _META).write_text(json.dumps(meta, indent=1) + "\n")
    log.info("wrote %d synthetic images (%dx%d) to %s in %.2f s (%.0f images/s, %d worker(s))", len(results), h, w,
             out, seconds, len(results) / max(seconds, 1e-9), max(1, workers))
    return {**meta, "seconds": seconds, "images": len(results)}
