"""Drawing one synthetic image: a scene recipe (or a relation-only layout) on a canvas, then the painter."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from twostream.data.synthetic.canvas import Canvas
from twostream.data.synthetic.paint import instance_map, paint
from twostream.data.synthetic.relation import RELATION_LAYOUTS, RELATION_SCENES
from twostream.data.synthetic.scenes import SCENES

__all__ = ["render_relation_pair", "render_scene", "size_hw"]


def size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 32 or w < 32:
        raise ValueError(f"synthetic: size must be at least 32x32 pixels, got {h}x{w}")
    return h, w


def render_scene(
    scene: str, seed: int | np.random.SeedSequence = 0, size: int | Sequence[int] = 128, relation_only: bool = False,
    relation_layout: str = "boxes",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one synthetic image of ``scene``.

    Args:
        scene: a name in ``SCENES``.
        seed: everything (layout, colours, noise) follows from it.
        size: ``H = W`` or ``(H, W)`` in pixels.
        relation_only: use the shared relation-only layout (scenes in ``RELATION_SCENES`` only).
        relation_layout: which one, a key of ``RELATION_LAYOUTS``: ``boxes`` (default), ``irregular``,
            ``degree_matched`` or ``irregular_degree_matched``.

    Returns:
        ``image`` ``(H, W, 3)`` uint8 RGB, ``label`` ``(H, W)`` uint8 (ADE20K-150 ids, 0 = other), ``instances``
        ``(H, W, 3)`` uint8 (R = class id, G = instance index, 0 = none).
    """
    if scene not in SCENES:
        raise ValueError(f"synthetic: unknown scene '{scene}'; choose from: {', '.join(SCENES)}")
    if relation_only and scene not in RELATION_SCENES:
        raise ValueError(f"synthetic: scene '{scene}' has no relation-only variant; only {', '.join(RELATION_SCENES)}")
    if relation_layout not in RELATION_LAYOUTS:
        raise ValueError(f"synthetic: unknown relation layout '{relation_layout}'; choose from: "
                         f"{', '.join(RELATION_LAYOUTS)}")
    h, w = size_hw(size)
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    # children derived by hand, not ss.spawn(): spawn() counts calls on the object, so a reused seed would drift
    layout_rng, colour_rng = (np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, k)))
                              for k in range(2))
    c = Canvas(h, w)
    if relation_only:
        RELATION_LAYOUTS[relation_layout](c, layout_rng, RELATION_SCENES[scene])
    else:
        SCENES[scene](c, layout_rng)
    return paint(c, colour_rng), c.label, instance_map(c)


def render_relation_pair(
    seed: int | np.random.SeedSequence = 0, size: int | Sequence[int] = 128, layout: str = "boxes"
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Both relation-only variants of one seed: scene -> ``render_scene(scene, seed, size, relation_only=True,
    relation_layout=layout)``."""
    return {s: render_scene(s, seed, size, relation_only=True, relation_layout=layout) for s in RELATION_SCENES}
