"""Painting the synthetic scenes: each object's label region becomes a textured, shaded, noisy colour.

Every class has a typical colour and a texture (planks, tiles, window grids, stripes, grain); an object gets a colour
jitter, a texture contrast, low-frequency shading, a slight blur and pixel noise, all vectorised over the image.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from twostream.data.classes import ade20k150
from twostream.data.synthetic.canvas import Canvas, class_id, stuff_classes

__all__ = ["instance_map", "paint"]

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
    "painting": ((90, 110, 140), GRAIN), "shelf": ((175, 140, 100), HSTRIPES),
    "cabinet": ((160, 120, 80), VSTRIPES), "countertop": ((60, 60, 65), GRAIN),
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


@lru_cache(maxsize=1)
def _looks() -> tuple[np.ndarray, np.ndarray]:
    """Per class id (151,): the typical colour (151, 3) and the texture (151,)."""
    table = ade20k150()
    colour = table.palette.astype(np.float32).copy()
    texture = np.full(len(table), GRAIN, dtype=np.int64)
    for name, (rgb, tex) in _LOOK.items():
        colour[class_id(name)] = rgb
        texture[class_id(name)] = tex
    return colour, texture


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


def paint(c: Canvas, r: np.random.Generator) -> np.ndarray:
    """Colour the objects drawn on ``c``: ``(H, W, 3)`` uint8 RGB."""
    colour, texture = _looks()
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


def instance_map(c: Canvas) -> np.ndarray:
    """``(H, W, 3)`` uint8: R = class id, G = instance index 1..k of visible "thing" objects (painting order)."""
    stuff = stuff_classes()
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

