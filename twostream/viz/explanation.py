"""Drawing explanations: the CAM over the image, importance colours, the streams bar, the viewer's payload.

Importance is drawn with one diverging scale everywhere: red for evidence *for* the explained scene, blue for
evidence *against* it, stronger colour and larger size for larger magnitude (relative to the largest in the graph).
"""

from __future__ import annotations

import numpy as np

from twostream.viz.common import as_image, hex_colour, undirected_edges

__all__ = ["cam_overlay", "edge_values", "explanation_payload", "importance_colours"]

_FOR, _AGAINST, _NEUTRAL = np.array([214, 39, 40]), np.array([31, 119, 180]), np.array([200, 200, 200])


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``(H, W, 3)`` uint8 image with the ``(h, w)`` class-activation map (values in ``[0, 1]``) blended over it in
    matplotlib's ``turbo`` colours; a map of another size is resized bilinearly to the image's."""
    from matplotlib import colormaps
    from PIL import Image

    img = as_image(image)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam_overlay: expected an (H, W) map, got shape {cam.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"cam_overlay: alpha must lie in [0, 1], got {alpha}")
    if cam.shape != img.shape[:2]:
        cam = np.asarray(Image.fromarray(cam).resize(img.shape[1::-1], Image.Resampling.BILINEAR))
    heat = colormaps["turbo"](np.clip(cam, 0, 1))[:, :, :3] * 255.0  # (H, W, 3)
    out = img.astype(np.float32) * (1 - alpha) + heat * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def importance_colours(values: np.ndarray) -> list[str]:
    """``#rrggbb`` per value: red for positive, blue for negative, towards grey as ``|value|`` shrinks relative to
    the largest magnitude."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    scale = max(float(np.abs(v).max(initial=0.0)), 1e-12)
    out = []
    for x in v:
        t = min(abs(x) / scale, 1.0) ** 0.7
        target = _FOR if x >= 0 else _AGAINST
        out.append(hex_colour(np.round(_NEUTRAL + t * (target - _NEUTRAL)).astype(int)))
    return out


def edge_values(graph, explanation, key: str = "edge_scores") -> np.ndarray | None:
    """The explanation's ``key`` (``edge_scores`` / ``edge_occlusion``) in the order of
    :func:`~twostream.viz.common.undirected_edges` of ``graph`` (``None`` when absent or for another graph)."""
    values = getattr(explanation, key, None)
    if values is None:
        return None
    pairs, _ = undirected_edges(graph)
    index = {(int(a), int(b)): k for k, (a, b) in enumerate(np.asarray(explanation.edges).tolist())}
    if len(index) != len(pairs) or any((int(a), int(b)) not in index for a, b in pairs):
        return None
    return np.array([values[index[(int(a), int(b))]] for a, b in pairs], dtype=np.float32)


def explanation_payload(graph, explanation) -> dict | None:
    """What the HTML viewer shows of an explanation, JSON-ready, aligned with the viewer's nodes and edges."""
    from twostream.viz.html import _png_data_uri, _shrink

    if explanation is None:
        return None
    n = graph.num_nodes if graph is not None else 0

    def per_node(values) -> list[float] | None:
        if values is None or len(values) != n:
            return None
        return [round(float(x), 5) for x in values]

    def per_edge(key: str) -> list[float] | None:
        values = edge_values(graph, explanation, key) if graph is not None else None
        return None if values is None else [round(float(x), 5) for x in values]

    cam = None
    if explanation.cam is not None:
        from twostream.viz.html import MAX_IMAGE_SIDE

        heat = cam_overlay(np.zeros((*explanation.cam.shape, 3), dtype=np.uint8), explanation.cam, alpha=1.0)
        cam = _png_data_uri(_shrink(heat, MAX_IMAGE_SIDE))
    return {
        "scene": explanation.scene, "prob": float(explanation.prob), "method": explanation.method,
        "because": explanation.because(),
        "node_scores": per_node(explanation.node_scores), "node_occlusion": per_node(explanation.node_occlusion),
        "node_confidence": per_node(explanation.node_confidence),
        "edge_scores": per_edge("edge_scores"), "edge_occlusion": per_edge("edge_occlusion"),
        "streams": {k: (None if v is None else round(float(v), 5)) for k, v in explanation.streams.items()},
        "notes": list(explanation.notes), "cam": cam,
    }
