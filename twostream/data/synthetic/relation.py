"""Relation-only layouts: two scenes (dining_room, living_room) with the same objects, told apart by one adjacency.

Every relation-only image has exactly the objects wall, ceiling, floor, painting, table, chair and sofa. In a dining
room the chair touches the table and the sofa stands apart; in a living room the sofa touches the table and the chair
stands apart (:data:`RELATION_SCENES`). Every random draw happens in the same order whatever the scene is, and sizes
are integers in pixels, so for one seed the two variants have identical class sets and identical per-class pixel
counts: only which objects touch which differs. Object presence alone cannot tell them apart; adjacency can.

Four layouts (:data:`RELATION_LAYOUTS`):

- ``boxes``: three rectangles in a row on the floor, ``[toucher][table] gap [other]`` (or mirrored). The objects'
  boxes give the contact away: the toucher's box abuts the table's, the other's is a gap away, so a model of each
  object's geometry (area, centroid, box) with no edges can tell the scenes apart.
- ``irregular``: concave furniture whose boxes overlap whether or not they touch. The table is a slab on two legs of
  different widths, placed so that the table's centroid is its box centre (the first moments of the legs balance);
  the chair and the sofa are each a body standing beside the table and a seat (an arm) reaching under the slab to
  the same depth. On the side of the thin leg that depth reaches the leg (contact); on the side of the thick leg,
  which stands nearer the centre, it stops a few pixels short. Which side the thin leg is on is a coin flip, so a
  dining room with the thin leg on one side has exactly the node geometry (area, centroid, box of every object,
  wall and floor included) of the living room of the same draws with the thin leg on the other side: the geometry of
  the objects has the same distribution in both scenes, and only the edges tell them apart.

In both, the toucher has one contact more than the other object (the table), and a degree-preserving shuffle of the
edges keeps that difference. The degree-matched layouts add a **shelf**, and the object that stands apart from the
table touches it instead, so every object has the same number of contacts in both scenes (the class sets and
per-class pixel counts stay identical too). The contacts chair–table and sofa–shelf (dining room) against sofa–table
and chair–shelf (living room) are the whole difference, which is exactly one double edge swap: the edges decide, and
a degree-preserving rewiring of them cannot:

- ``degree_matched``: boxes, ``[toucher][table] gap [other][shelf]`` on the floor (or mirrored); the boxes give the
  contacts away, as in ``boxes``.
- ``irregular_degree_matched``: the furniture of ``irregular``, plus a wall shelf above the table with the table's
  width, on two brackets of different widths placed like the table's legs. Chair and sofa each also have an arm
  reaching under the shelf, above the table, to the same depth; the shelf's thin bracket is on the side of the
  table's *thick* leg, so the object apart from the table touches the shelf. A dining room with the table's thin leg
  on one side again has exactly the node geometry of the living room of the same draws with it on the other side,
  and all boxes of the furniture overlap: neither the geometry nor the degrees tell the scenes apart.

:data:`RELATION_CONTACTS` names the deciding contacts of each layout (``synthetic.json`` records them).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from twostream.data.synthetic.canvas import Canvas
from twostream.data.synthetic.scenes import room

__all__ = ["RELATION_CONTACTS", "RELATION_LAYOUTS", "RELATION_SCENES"]

# The relation-only pair: scene -> the object that touches the table in that scene (the other one stands apart)
RELATION_SCENES: dict[str, str] = {"dining_room": "chair", "living_room": "sofa"}


def _boxes(c: Canvas, r: np.random.Generator, toucher: str, side: int | None = None) -> None:
    """Layout ``boxes``: ``[toucher][table] gap [other]`` on the floor, or mirrored (``side``: -1 puts the toucher
    left of the table, +1 right, ``None`` draws it).

    Every random draw happens in the same order whatever ``toucher`` is, and sizes are integers in pixels, so the
    two variants of one seed have the same pixel count per class; only the adjacency table–chair / table–sofa
    differs.
    """
    assert toucher in ("chair", "sofa")
    h, w = c.h, c.w
    top, hz = room(c, r, ceiling=True, slant=False)  # flat: where an object stands cannot change what it touches
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
    if side is not None:
        mirrored = side > 0
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


def _slab_on_legs(c: Canvas, name: str, cx: int, half: int, top: int, slab: int, bottom: int, e1: int, e2: int,
                  thin_side: int, u: int) -> int:
    """One object: a slab ``[cx - half, cx + half) x [top, top + slab)`` on two legs reaching down to ``bottom``
    (exclusive), the thin one (``2u`` wide, ``e1`` from the centre line) on ``thin_side`` (-1 left, +1 right), the
    thick one (``4u``, ``e2``) on the other side. With ``e1 = 2 e2 + 3u`` the legs' first moments cancel: the
    object's area, centroid and box are the same whichever side the thin leg is on."""
    obj = c.rect_px(name, cx - half, top, cx + half, top + slab)
    for leg_side in (-1, 1):
        e, lw = (e1, 2 * u) if leg_side == thin_side else (e2, 4 * u)
        x0 = cx + e if leg_side > 0 else cx - e - lw
        c.rect_px(name, x0, top + slab, x0 + lw, bottom, obj=obj)
    return obj


def _irregular(c: Canvas, r: np.random.Generator, toucher: str, side: int | None = None) -> None:
    """Layout ``irregular`` (see the module docstring); ``side`` is the side of the thin leg and the toucher (-1 left,
    +1 right; ``None`` draws it). All sizes in pixels, in units ``u`` of 1 px per whole 64 px of image."""
    assert toucher in ("chair", "sofa")
    h, w = c.h, c.w
    top, hz = room(c, r, ceiling=True, slant=False)  # flat: where an object stands cannot change what it touches
    px = r.uniform(0.2, 0.55)
    c.rect("painting", px, top + 0.06, px + 0.22, top + 0.2)
    check_relation_size("irregular", h, w)
    u = min(h, w) // 64
    # legs 2u (thin) and 4u (thick) wide at distances e1, e2 from the centre line: 2u(e1 + u) = 4u(e2 + 2u), so
    # their first moments about the centre line cancel and the table's centroid is its box centre, whichever side
    e2 = int(r.integers(u, 2 * u + 1))
    e1 = 2 * e2 + 3 * u
    half = int(r.integers(10 * u, 13 * u + 1))  # half the table's width
    reach = half - e1 - 2 * u  # how far a seat reaches under the slab: to the thin leg exactly; >= u
    slab = max(2, round(r.uniform(0.03, 0.05) * h))
    legs = max(6 * u, round(r.uniform(0.1, 0.15) * h))
    y1 = round((hz + r.uniform(0.12, 0.2)) * h)  # where everything stands on the floor (exclusive)
    shape = {}  # name -> (body width, body height, gap to the table, seat thickness, seat top)
    for name, (wr, hr) in (("chair", ((0.08, 0.12), (0.2, 0.26))), ("sofa", ((0.14, 0.2), (0.16, 0.22)))):
        bw, bh = round(r.uniform(*wr) * w), round(r.uniform(*hr) * h)
        gap = int(r.integers(u, 3 * u + 1))
        thick = int(r.integers(2 * u, 3 * u + 1))
        lowest_top = max(y1 - legs + u, y1 - bh)  # one free row (u) under the slab; the seat joins the body
        seat_top = int(r.integers(lowest_top, y1 - thick + 1))
        shape[name] = (bw, bh, gap, thick, seat_top)
    drawn = -1 if r.random() < 0.5 else 1
    side = drawn if side is None else side
    other = "sofa" if toucher == "chair" else "chair"
    left, right = (toucher, other) if side < 0 else (other, toucher)
    total = shape[left][0] + shape[left][2] + 2 * half + shape[right][2] + shape[right][0]
    x = round(r.uniform(0.03, 0.97 - total / w) * w)
    tx = x + shape[left][0] + shape[left][2]  # the table's left edge
    cx, top_y = tx + half, y1 - legs - slab
    _slab_on_legs(c, "table", cx, half, top_y, slab, y1, e1, e2, side, u)
    for name in ("chair", "sofa"):  # fixed painting order: object ids (and so colours) match across variants
        bw, bh, gap, thick, seat_top = shape[name]
        if name == left:
            body0, seat0, seat1 = tx - gap - bw, tx - gap, tx + reach
        else:
            body0 = tx + 2 * half + gap
            seat0, seat1 = tx + 2 * half - reach, body0
        obj = c.rect_px(name, body0, y1 - bh, body0 + bw, y1)
        c.rect_px(name, seat0, seat_top, seat1, seat_top + thick, obj=obj)


def _other(toucher: str) -> str:
    assert toucher in ("chair", "sofa")
    return "sofa" if toucher == "chair" else "chair"


def _boxes_degree_matched(c: Canvas, r: np.random.Generator, toucher: str, side: int | None = None) -> None:
    """Layout ``degree_matched``: ``[toucher][table] gap [other][shelf]`` on the floor, or mirrored (``side``: -1
    puts the toucher at the left end, +1 at the right, ``None`` draws it). The object that does not touch the table
    touches the shelf, so every object has the same contacts count in both scenes; the boxes still give the contacts
    away, as in ``boxes``."""
    other = _other(toucher)
    h, w = c.h, c.w
    top, hz = room(c, r, ceiling=True, slant=False)
    px = r.uniform(0.2, 0.55)
    c.rect("painting", px, top + 0.06, px + 0.22, top + 0.2)
    size = {  # (width, height) in pixels; narrower than in ``boxes`` so that four objects and the gap fit in a row
        "table": (round(r.uniform(0.2, 0.26) * w), round(r.uniform(0.12, 0.18) * h)),
        "chair": (round(r.uniform(0.08, 0.11) * w), round(r.uniform(0.2, 0.26) * h)),
        "sofa": (round(r.uniform(0.16, 0.22) * w), round(r.uniform(0.16, 0.22) * h)),
        "shelf": (round(r.uniform(0.08, 0.12) * w), round(r.uniform(0.2, 0.28) * h)),
    }
    gap = max(2, round(r.uniform(0.06, 0.1) * w))
    y1 = round((hz + r.uniform(0.12, 0.2)) * h)
    mirrored = r.random() < 0.5 if side is None else side > 0
    row = [toucher, "table", other, "shelf"]
    total = sum(size[n][0] for n in row) + gap
    x = round(r.uniform(0.03, 0.97 - total / w) * w)
    if mirrored:  # [shelf][other] gap [table][toucher]
        row = row[::-1]
    left: dict[str, int] = {}
    for k, name in enumerate(row):
        left[name] = x
        x += size[name][0] + (gap if k == 1 else 0)  # the gap always follows the second object of the row
    for name in ("table", "chair", "sofa", "shelf"):  # fixed painting order: object ids match across variants
        bw, bh = size[name]
        c.rect_px(name, left[name], y1 - bh, left[name] + bw, y1)


def _irregular_degree_matched(c: Canvas, r: np.random.Generator, toucher: str, side: int | None = None) -> None:
    """Layout ``irregular_degree_matched``: the concave furniture of ``irregular`` plus a wall shelf above the table
    that the other object touches, so that neither the objects' geometry nor their numbers of contacts tell the
    scenes apart (see the module docstring). ``side`` is the side of the table's thin leg and of the toucher (-1 left,
    +1 right; ``None`` draws it); the shelf's thin bracket is on the other side. Sizes in units ``u`` of 1 px per
    whole 64 px of image."""
    other = _other(toucher)
    h, w = c.h, c.w
    check_relation_size("irregular_degree_matched", h, w)
    top, hz = room(c, r, ceiling=True, slant=False)  # flat: where an object stands cannot change what it touches
    px = r.uniform(0.2, 0.55)
    c.rect("painting", px, top + 0.04, px + 0.22, top + 0.16)  # high enough to stay clear of the shelf
    u = min(h, w) // 64
    half = int(r.integers(10 * u, 13 * u + 1))  # half the width of the table and of the shelf above it
    # legs (table) and brackets (shelf): thin 2u at e1, thick 4u at e2 = (e1 - 3u) / 2 from the centre line
    e2_table, e2_shelf = (int(r.integers(u, 2 * u + 1)) for _ in range(2))
    e1_table, e1_shelf = 2 * e2_table + 3 * u, 2 * e2_shelf + 3 * u
    reach_table, reach_shelf = half - e1_table - 2 * u, half - e1_shelf - 2 * u  # to the thin leg / bracket; >= u
    slab, shelf_slab = (max(2, round(r.uniform(0.03, 0.05) * h)) for _ in range(2))
    legs = max(6 * u, round(r.uniform(0.1, 0.15) * h))
    y1 = round((hz + r.uniform(0.12, 0.2)) * h)  # where everything stands on the floor (exclusive)
    table_top = y1 - legs - slab
    # rows, bottom up: the table's slab, u free rows, the arms (2-3u thick), u free rows, the shelf's slab; the
    # brackets hang from the shelf's slab down to the free rows above the table
    arm_thick = {n: int(r.integers(2 * u, 3 * u + 1)) for n in ("chair", "sofa")}
    arm_bottom = table_top - u  # exclusive
    arm_top = arm_bottom - max(arm_thick.values())
    shelf_top = arm_top - u - shelf_slab
    shape = {}  # name -> (body width, body height, gap to the table, seat thickness, seat top, arm top)
    for name, (wr, extra) in (("chair", ((0.08, 0.12), (2, 5))), ("sofa", ((0.14, 0.2), (0, 3)))):
        bw = round(r.uniform(*wr) * w)
        bh = y1 - arm_top + int(r.integers(extra[0] * u, extra[1] * u + 1))  # the body holds the arm
        gap = int(r.integers(u, 3 * u + 1))
        thick = int(r.integers(2 * u, 3 * u + 1))
        seat_top = int(r.integers(y1 - legs + u, y1 - thick + 1))  # one free row (u) under the slab
        shape[name] = (bw, bh, gap, thick, seat_top, arm_bottom - arm_thick[name])
    drawn = -1 if r.random() < 0.5 else 1
    side = drawn if side is None else side
    left, right = (toucher, other) if side < 0 else (other, toucher)
    total = shape[left][0] + shape[left][2] + 2 * half + shape[right][2] + shape[right][0]
    x = round(r.uniform(0.03, 0.97 - total / w) * w)
    tx = x + shape[left][0] + shape[left][2]  # the left edge of the table and of the shelf
    cx = tx + half
    _slab_on_legs(c, "table", cx, half, table_top, slab, y1, e1_table, e2_table, side, u)
    _slab_on_legs(c, "shelf", cx, half, shelf_top, shelf_slab, arm_bottom, e1_shelf, e2_shelf, -side, u)
    for name in ("chair", "sofa"):  # fixed painting order: object ids (and so colours) match across variants
        bw, bh, gap, thick, seat_top, top_of_arm = shape[name]
        if name == left:
            body0, inner = tx - gap - bw, tx - gap
            seat = (inner, tx + reach_table)
            arm = (inner, tx + reach_shelf)
        else:
            body0 = inner = tx + 2 * half + gap
            seat = (tx + 2 * half - reach_table, inner)
            arm = (tx + 2 * half - reach_shelf, inner)
        obj = c.rect_px(name, body0, y1 - bh, body0 + bw, y1)
        c.rect_px(name, seat[0], seat_top, seat[1], seat_top + thick, obj=obj)
        c.rect_px(name, arm[0], top_of_arm, arm[1], arm_bottom, obj=obj)


# name -> layout(canvas, generator, toucher, side=None); see the module docstring
# The smallest image side a layout draws at: the irregular ones' legs, brackets and gaps are whole pixels.
RELATION_MIN_SIZE: dict[str, int] = {"irregular": 64, "irregular_degree_matched": 64}


def check_relation_size(layout: str, h: int, w: int) -> None:
    """A ``ValueError`` line when ``layout`` cannot be drawn on ``h x w`` images (:data:`RELATION_MIN_SIZE`)."""
    least = RELATION_MIN_SIZE.get(layout, 0)
    if min(h, w) < least:
        raise ValueError(f"synthetic: the {layout} relation layout needs images of at least {least}x{least} pixels "
                         f"(its legs, brackets and gaps are whole pixels), got {h}x{w}")


RELATION_LAYOUTS: dict[str, Callable[..., None]] = {
    "boxes": _boxes,
    "irregular": _irregular,
    "degree_matched": _boxes_degree_matched,
    "irregular_degree_matched": _irregular_degree_matched,
}

_TABLE_CONTACTS = {"dining_room": (("chair", "table"),), "living_room": (("sofa", "table"),)}
_MATCHED_CONTACTS = {"dining_room": (("chair", "table"), ("sofa", "shelf")),
                     "living_room": (("sofa", "table"), ("chair", "shelf"))}
# layout -> scene -> the contacts (pairs of class names) that the scene's relation-only images have and the other
# scene's have not: the deciding adjacencies (written to synthetic.json as "relation_contacts")
RELATION_CONTACTS: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "boxes": _TABLE_CONTACTS, "irregular": _TABLE_CONTACTS,
    "degree_matched": _MATCHED_CONTACTS, "irregular_degree_matched": _MATCHED_CONTACTS,
}
