"""Where a segmenter segments: its own input size, apart from the image encoder's ``data.image_size``.

A segmenter is trained at one resolution (UPSNet on ADE20K: 512x512 crops, mmsegmentation's setting) and should
segment there; the image encoder was pretrained at another (224). :class:`SegmenterInput` says how an image becomes
the segmenter's input, and the helpers here run a segmenter through it, on any batch ``(B, 3, H, W)``:

1. **resize** to :meth:`SegmenterInput.resized`: the fixed ``size``, or (``keep_ratio``, mmsegmentation's
   whole-image inference) the short side to ``min(size)`` and the long side at most ``max_size``;
2. **pad** the bottom and right with zeros up to a multiple of the segmenter's ``stride`` (the class declares it:
   UPSNet's pyramid goes to stride 32; kinds that resize images themselves declare 1);
3. **run** the segmenter on that canvas;
4. **crop** the padding off its outputs (``sem_logits``, ``features``, panoptic maps), so what comes back covers the
   resized image exactly: the semantic map, and the scene graph built from it, are at the segmenter's size.

``SegmenterInput(size=None)`` runs a segmenter on images as they are given (kinds that resize themselves: their
processor decides). Nothing here reads a config file or a checkpoint: :func:`segmenter_input` maps the resolved
``model.segmenter`` keys to a :class:`SegmenterInput`, and the engine resolves ``input_size: null`` from the
checkpoint (:func:`twostream.engine.checkpoint.resolve_segmenter_config`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from twostream.config import DataConfig, SegmenterConfig
from twostream.data.transforms import keep_ratio_size

log = logging.getLogger(__name__)

__all__ = ["ResizedSegmenter", "SegmenterInput", "crop_outputs", "keep_ratio_size", "log_once", "model_input_size",
           "resize_images", "segment", "segmenter_canvas", "segmenter_input"]

_LOGGED: set[str] = set()


def log_once(message: str, *args) -> None:
    """``log.info`` a message the first time it is given in this process (the same fallback is met by every
    loader worker, every split and every build of a model)."""
    text = message % args if args else message
    if text not in _LOGGED:
        _LOGGED.add(text)
        log.info("%s", text)


def resize_images(images: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, 3, H, W)`` -> ``(B, 3, *size)``, bilinear, antialiased when shrinking (as the data transforms);
    the input itself when it already has that size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


@dataclass(frozen=True)
class SegmenterInput:
    """How an ``(H, W)`` image becomes a segmenter's input.

    Args:
        size: ``(H, W)`` to resize to, or ``None``: as given.
        keep_ratio: keep the aspect ratio: short side ``min(size)``, long side at most ``max_size``.
        max_size: ``keep_ratio``: the long side's cap; ``0`` = 4 x the short side (mmseg's ADE20K 512 / 2048).
        stride: the canvas's sides are multiples of it (the segmenter class's ``stride``).
    """

    size: tuple[int, int] | None = None
    keep_ratio: bool = False
    max_size: int = 0
    stride: int = 1

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"SegmenterInput: size must be (H, W) with positive sides or None, got {self.size}")
        if self.stride < 1 or self.max_size < 0:
            raise ValueError(f"SegmenterInput: stride must be >= 1 and max_size >= 0, got {self.stride}, "
                             f"{self.max_size}")

    @property
    def long_side(self) -> int:
        """The long-side cap of ``keep_ratio``."""
        assert self.size is not None
        return self.max_size or 4 * min(self.size)

    def resized(self, h: int, w: int) -> tuple[int, int]:
        """The size an ``(h, w)`` image is resized to (before padding to the stride)."""
        if self.size is None:
            return int(h), int(w)
        if self.keep_ratio:
            return keep_ratio_size(h, w, min(self.size), self.long_side)
        return int(self.size[0]), int(self.size[1])

    def canvas(self, h: int, w: int) -> tuple[int, int]:
        """``resized(h, w)`` rounded up to multiples of ``stride``: what the segmenter runs on."""
        rh, rw = self.resized(h, w)
        s = self.stride
        return math.ceil(rh / s) * s, math.ceil(rw / s) * s

    def to_dict(self) -> dict:
        """JSON-ready: what graph stores key on."""
        return {"size": list(self.size) if self.size is not None else None, "keep_ratio": self.keep_ratio,
                "max_size": self.long_side if self.keep_ratio and self.size is not None else 0,
                "stride": self.stride}

    def __str__(self) -> str:
        if self.size is None:
            return "as given"
        if self.keep_ratio:
            return f"short side {min(self.size)}, long side <= {self.long_side}, padded to {self.stride}"
        pad = "" if all(s % self.stride == 0 for s in self.size) else f", padded to {self.stride}"
        return f"{self.size[0]}x{self.size[1]}{pad}"


# --------------------------------------------------------------------------------------------------------------------
# Running a segmenter at its size
# --------------------------------------------------------------------------------------------------------------------


def segmenter_canvas(images: Tensor, geometry: SegmenterInput) -> tuple[Tensor, tuple[int, int]]:
    """``(B, 3, H, W)`` -> (the segmenter's canvas ``(B, 3, ph, pw)``, the content ``(rh, rw)`` at its top left):
    resized to ``geometry.resized(H, W)``, then zero-padded at the bottom and right to ``geometry.canvas``."""
    h, w = images.shape[-2:]
    content = geometry.resized(h, w)
    ph, pw = geometry.canvas(h, w)
    x = resize_images(images, content)
    if (ph, pw) != content:
        x = F.pad(x, (0, pw - content[1], 0, ph - content[0]))
    return x, content


def crop_outputs(out: dict, content: tuple[int, int]) -> dict:
    """A segmenter's output dict on a padded canvas -> the same at ``content = (rh, rw)``: ``sem_logits`` and
    panoptic maps cropped to it, ``features`` (at a fraction of the canvas) to the matching fraction, rounded up."""
    rh, rw = content
    logits = out["sem_logits"]
    ph, pw = logits.shape[-2:]
    if (ph, pw) == (rh, rw):
        return out
    out = dict(out)
    out["sem_logits"] = logits[..., :rh, :rw]
    features = out.get("features")
    if features is not None:
        fh, fw = features.shape[-2:]
        out["features"] = features[..., :math.ceil(rh * fh / ph), :math.ceil(rw * fw / pw)]
    if out.get("panoptic") is not None:
        out["panoptic"] = [(pmap[:rh, :rw], info) for pmap, info in out["panoptic"]]
    return out


def segment(segmenter: nn.Module, images: Tensor, geometry: SegmenterInput) -> Tensor:
    """The segmenter's class logits of ``images (B, 3, H, W)`` at its size: ``(B, K, rh, rw)`` with ``(rh, rw) =
    geometry.resized(H, W)`` (its :meth:`~twostream.models.segmenter_base.Segmenter.segment`: the semantic path
    only)."""
    x, content = segmenter_canvas(images, geometry)
    return crop_outputs({"sem_logits": segmenter.segment(x)}, content)["sem_logits"]


class ResizedSegmenter(nn.Module):
    """A segmenter that takes images of any size and segments them at ``geometry``: ``forward(images)`` returns
    the segmenter's output dict at ``geometry.resized(H, W)`` (what ``tools/eval.py`` scores)."""

    def __init__(self, segmenter: nn.Module, geometry: SegmenterInput) -> None:
        super().__init__()
        self.segmenter, self.geometry = segmenter, geometry
        self.class_table = segmenter.class_table

    def forward(self, images: Tensor, targets: dict | None = None) -> dict:
        if targets is not None:
            raise ValueError("ResizedSegmenter segments at the segmenter's size; train the segmenter itself")
        x, content = segmenter_canvas(images, self.geometry)
        return crop_outputs(self.segmenter(x), content)

    def segment(self, images: Tensor) -> Tensor:
        return segment(self.segmenter, images, self.geometry)

    def predict(self, images: Tensor) -> Tensor:
        return self.segment(images).argmax(dim=1)

    def extra_repr(self) -> str:
        return f"input={self.geometry}"


# --------------------------------------------------------------------------------------------------------------------
# From config
# --------------------------------------------------------------------------------------------------------------------


def segmenter_input(seg: SegmenterConfig, data: DataConfig, segmenter_cls: type) -> SegmenterInput:
    """The :class:`SegmenterInput` of the resolved ``model.segmenter`` keys for a segmenter of ``segmenter_cls``.

    ``input_size: null`` (the engine sets it from the segmenter's checkpoint when there is one): a kind that resizes
    images itself (``resizes_input``) gets them as given; any other falls back to ``data.image_size`` (logged once).
    """
    stride = int(getattr(segmenter_cls, "stride", 1))
    size = seg.input_size
    if size is None:
        if getattr(segmenter_cls, "resizes_input", False):
            return SegmenterInput(None, stride=stride)
        size = tuple(data.image_size)
        log_once("model.segmenter.input_size is not set and no segmenter checkpoint records a training size: the "
                 "segmenter segments at data.image_size %s", list(size))
    geometry = SegmenterInput(tuple(int(s) for s in size), keep_ratio=seg.keep_ratio, max_size=seg.max_size,
                              stride=stride)
    if not seg.keep_ratio and any(s % stride for s in geometry.size):
        log_once("model.segmenter.input_size %s is not divisible by %d, the stride of segmenter kind '%s': images "
                 "are resized to it and padded up to %s", list(geometry.size), stride, segmenter_cls.kind,
                 list(geometry.canvas(*geometry.size)))
    return geometry


def model_input_size(image_size: tuple[int, int], geometry: SegmenterInput | None) -> tuple[int, int]:
    """The ``(H, W)`` a classifier's images are read at: ``image_size`` (the image encoder's), or, when the
    segmenter runs on them (``geometry`` given) and its input is larger, the segmenter's size for an image of that
    shape, so it segments pixels that were read at its resolution (the model shrinks a copy for the encoder)."""
    image_size = (int(image_size[0]), int(image_size[1]))
    if geometry is None or geometry.size is None:
        return image_size
    seg = geometry.resized(*image_size)
    return seg if seg[0] * seg[1] > image_size[0] * image_size[1] else image_size

