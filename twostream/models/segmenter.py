"""The segmentation-stream interface and its builder.

Every segmenter (UPSNet, a Hugging Face checkpoint, a detectron2 model) takes RGB images in [0, 1] and returns
per-class logits at input size together with the class table those logits refer to. The class table travels with
the segmenter into the scene graph, the GNN's class embedding and every output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from twostream.config import SegmenterConfig
from twostream.data.classes import ClassTable

__all__ = ["SEGMENTERS", "Segmenter", "build_segmenter", "parse_segmenter_spec"]


class Segmenter(nn.Module):
    """Base class: images in, per-class logits out.

    ``forward(images, targets=None) -> dict``:
        images: ``(B, 3, H, W)`` float RGB in ``[0, 1]``; each segmenter normalises with its own mean/std.
        targets: training only: ``{"sem_seg": (B, H, W) int64, 255 = ignore}`` and, for an instance head,
            ``"instances"``: a list of per-image dicts (``boxes (M, 4)``, ``labels (M,)``, ``masks (M, H, W)``).
    Returns:
        ``"sem_logits"``: ``(B, K, H, W)`` float, ``K = len(self.class_table)``;
        ``"features"`` (optional): ``(B, C, H/4, W/4)`` features under which node features can be pooled;
        ``"panoptic"`` (optional): per image ``(panoptic_map (H, W) int32, segments_info list[dict])``;
        ``"losses"`` (when ``targets`` is given): ``dict[str, Tensor]`` of scalar losses.
    """

    class_table: ClassTable

    def predict(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, H, W)`` int64 label map in ``self.class_table``."""
        return self(images)["sem_logits"].argmax(dim=1)


def _build_upsnet(cfg: SegmenterConfig, class_table: ClassTable) -> Segmenter:
    from twostream.models.upsnet import build_upsnet

    return build_upsnet(cfg, class_table)


def _build_hf(cfg: SegmenterConfig, class_table: ClassTable) -> Segmenter:
    from twostream.models.hf_segmenter import build_hf_segmenter

    return build_hf_segmenter(cfg, class_table)


def _build_detectron2(cfg: SegmenterConfig, class_table: ClassTable) -> Segmenter:
    from twostream.models.d2_segmenter import build_detectron2_segmenter

    return build_detectron2_segmenter(cfg, class_table)


# Optional dependencies (transformers, detectron2) are imported only when their kind is asked for.
SEGMENTERS: dict[str, Callable[[SegmenterConfig, ClassTable], Segmenter]] = {
    "upsnet": _build_upsnet,
    "hf": _build_hf,
    "detectron2": _build_detectron2,
}


def build_segmenter(cfg: SegmenterConfig, class_table: ClassTable) -> Segmenter:
    """Build the segmenter ``cfg.kind`` names. Does not load a trained checkpoint (``cfg.checkpoint``): the engine does.

    ``class_table`` is the project's table (ADE20K-150); an adapter whose checkpoint has another label set replaces it
    with its own, so read ``segmenter.class_table`` afterwards.
    """
    if cfg.kind not in SEGMENTERS:
        raise ValueError(f"unknown segmenter kind '{cfg.kind}'; known: {', '.join(SEGMENTERS)}")
    segmenter = SEGMENTERS[cfg.kind](cfg, class_table)
    assert isinstance(segmenter, Segmenter), f"{cfg.kind} builder returned {type(segmenter).__name__}"
    return segmenter


def parse_segmenter_spec(spec: str, base: SegmenterConfig | None = None) -> SegmenterConfig:
    """A ``--segmenter`` command-line spec -> :class:`SegmenterConfig` (other fields from ``base`` or defaults).

    Forms: ``hf:NAME`` (hub name or folder), ``detectron2:CONFIG[@WEIGHTS]`` (model-zoo name or .yaml file; weights
    path or URL, ``none`` = random init), ``upsnet:CHECKPOINT`` (a segmentation-stage checkpoint), ``none``.

        >>> parse_segmenter_spec("detectron2:COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml@model.pkl").d2_weights
        'model.pkl'
    """
    base = base if base is not None else SegmenterConfig()
    kind, sep, rest = spec.strip().partition(":")
    kind, rest = kind.strip().lower(), rest.strip()
    forms = "hf:NAME, detectron2:CONFIG[@WEIGHTS], upsnet:CHECKPOINT or none"
    if kind == "none" and not rest:
        return dataclasses.replace(base, kind="none")
    if not sep or not rest or kind not in SEGMENTERS:
        raise ValueError(f"--segmenter '{spec}': expected {forms}")
    if kind == "hf":
        return dataclasses.replace(base, kind="hf", hf_model=rest)
    if kind == "detectron2":
        config, _, weights = rest.partition("@")  # zoo names and config paths carry no '@'; URLs may after it
        return dataclasses.replace(base, kind="detectron2", d2_config=config.strip(), d2_weights=weights.strip())
    return dataclasses.replace(base, kind="upsnet", checkpoint=rest)


@torch.no_grad()
def predict_labels(segmenter: Segmenter, images: Tensor) -> Tensor:
    """Inference helper: eval-mode, no-grad ``(B, H, W)`` int64 label maps."""
    was_training = segmenter.training
    segmenter.eval()
    try:
        return segmenter.predict(images)
    finally:
        segmenter.train(was_training)
