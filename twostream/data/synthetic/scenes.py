"""The eight scene recipes: which ADE20K-150 objects a scene has and where they stand.

Each recipe draws one scene on a :class:`~twostream.data.synthetic.canvas.Canvas` from a random generator: the floor
lies below the furniture and every piece of furniture stands on it, the sky is above the buildings, a lamp stands on
the chest of drawers beside the bed, chairs touch the dining table, pillows lie on the bed, a mirror hangs above the
bathroom sink, cars drive on the road. :data:`SCENES` is the name -> recipe table; a new scene is one function plus
one entry (and colours for new classes in :mod:`.paint`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from twostream.data.synthetic.canvas import Canvas

__all__ = ["SCENES", "room"]


def room(c: Canvas, r: np.random.Generator, ceiling: bool = True, slant: bool = True) -> tuple[float, float]:
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


def _window(c: Canvas, r: np.random.Generator, top: float, hz: float, curtains: bool) -> None:
    ww, wh = r.uniform(0.14, 0.24), r.uniform(0.18, 0.28)
    x0, y0 = r.uniform(0.05, 0.9 - ww), r.uniform(top + 0.04, max(top + 0.05, hz - wh - 0.12))
    c.rect("windowpane", x0, y0, x0 + ww, y0 + wh)
    if curtains:
        cw = r.uniform(0.03, 0.06)
        c.rect("curtain", x0 - cw, y0 - 0.03, x0 + cw, y0 + wh + 0.05)
        c.rect("curtain", x0 + ww - cw, y0 - 0.03, x0 + ww + cw, y0 + wh + 0.05)


def _bedroom(c: Canvas, r: np.random.Generator) -> None:
    top, hz = room(c, r)
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


def _kitchen(c: Canvas, r: np.random.Generator) -> None:
    top, hz = room(c, r, ceiling=r.random() < 0.5)
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


def _bathroom(c: Canvas, r: np.random.Generator) -> None:
    top, hz = room(c, r, ceiling=False)
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


def _living_room(c: Canvas, r: np.random.Generator) -> None:
    top, hz = room(c, r)
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


def _dining_room(c: Canvas, r: np.random.Generator) -> None:
    top, hz = room(c, r, ceiling=True)
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


def _office(c: Canvas, r: np.random.Generator) -> None:
    top, hz = room(c, r, ceiling=True)
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


def _outdoor(c: Canvas, r: np.random.Generator) -> float:
    c.rect("sky", 0, 0, 1, 1)
    return r.uniform(0.42, 0.55)


def _cars(c: Canvas, r: np.random.Generator, hz: float, lo: float, hi: float, n: int, truck: bool) -> None:
    for k in range(n):
        y1 = r.uniform(hz + 0.12, 0.95)
        s = (y1 - hz) / (1 - hz)  # perspective: nearer cars are bigger
        w = 0.1 + 0.2 * s
        x0 = r.uniform(lo, hi - w)
        name = "truck" if truck and k == 0 else "car"
        h = w * (0.7 if name == "truck" else 0.45)
        car = c.rect(name, x0, y1 - h * 0.6, x0 + w, y1)
        c.rect(name, x0 + 0.2 * w, y1 - h, x0 + 0.8 * w, y1 - h * 0.6 + 0.005, obj=car)


def _street(c: Canvas, r: np.random.Generator) -> None:
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


def _highway(c: Canvas, r: np.random.Generator) -> None:
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



SCENES: dict[str, Callable[[Canvas, np.random.Generator], None]] = {
    "bedroom": _bedroom,
    "kitchen": _kitchen,
    "bathroom": _bathroom,
    "living_room": _living_room,
    "dining_room": _dining_room,
    "office": _office,
    "street": _street,
    "highway": _highway,
}
