"""The synthetic scenes' drawing surface: a label map, an object map and the list of objects, in painter's order.

Scene recipes (:mod:`.scenes`, :mod:`.relation`) draw shapes on a :class:`Canvas` in relative coordinates; the
painter (:mod:`.paint`) colours the result. Class names are ADE20K-150's (``ade20k150()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache, lru_cache

import cv2
import numpy as np

from twostream.data.classes import ade20k150

__all__ = ["Canvas", "class_id", "stuff_classes"]


@cache
def class_id(name: str) -> int:
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
def stuff_classes() -> np.ndarray:
    """(151,) bool: the class is amorphous stuff (no instances)."""
    return np.asarray(ade20k150().stuff, dtype=bool)


class Canvas:
    """Shapes in relative coordinates (x right, y down, both in [0, 1]) painted into ``label`` (H, W) uint8 and
    ``obj`` (H, W) uint16; later shapes cover earlier ones. ``classes[o]`` is the class id of object ``o``."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.label = np.zeros((h, w), np.uint8)
        self.obj = np.zeros((h, w), np.uint16)
        self.classes: list[int] = [0]  # object 0: nothing painted (label 0, other)

    def new(self, name: str) -> int:
        self.classes.append(class_id(name))
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
