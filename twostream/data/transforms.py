"""Joint image + label-map transforms (torchvision.transforms.v2) that keep every label exact and aligned.

A pipeline is called as ``image, mask = t(image, mask)`` with ``image`` a ``tv_tensors.Image`` ``(3, H, W)`` uint8
and ``mask`` a ``tv_tensors.Mask`` ``(H, W)`` int64, and returns ``image`` ``(3, h, w)`` float32 in ``[0, 1]`` (or
normalised, when asked) and ``mask`` ``(h, w)`` int64 with the same labels (no interpolated values) plus
``IGNORE_INDEX = 255`` where padding added pixels that have no annotation.

Why the mask geometry is not v2's own: v2 resizes masks with ``NEAREST``, i.e. ``torch`` ``"nearest"``, which picks
source pixel ``floor(i * scale)``; the image, resized bilinearly, samples around ``(i + 0.5) * scale - 0.5``. When
shrinking 512 -> 224 the mask lags the image by ~0.6 source pixels. ``NEAREST_EXACT`` picks the source pixel that
contains the output pixel's centre, which is what bilinear resampling of the image is centred on, so the two stay
aligned to within interpolation error at any scale. ``Resize`` and ``RandomResizedCrop`` below differ from v2's only
in that.

Instances. Per-instance binary masks travel as a third input, :class:`InstanceMasks` ``(M, H, W)`` uint8: every
geometric step treats them exactly like the semantic mask (same crop, same ``NEAREST_EXACT`` source pixel, same flip),
so an instance pixel keeps the class the semantic map gives it; padding fills them with 0 (no instance), never 255.
:func:`instance_targets` then drops instances the crop removed and recomputes the boxes from the masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

from twostream.config import DataConfig
from twostream.data.classes import IGNORE_INDEX

__all__ = [
    "FILL",
    "InstanceMasks",
    "RandomResizedCrop",
    "Resize",
    "ResizeKeepRatio",
    "ResizePad",
    "apply_with_box",
    "build_transforms",
    "instance_targets",
    "keep_ratio_size",
    "make_transforms",
    "resize_labels",
    "segmenter_transforms",
]

FILL = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}  # padding: black image, unsupervised mask

_MASK_INTERPOLATION = InterpolationMode.NEAREST_EXACT  # see module docstring


def apply_with_box(transform: Any, chw: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """A deterministic ``transform`` on a ``(3, H, W)`` uint8 image -> (the image tensor, its content box
    ``(top, left, height, width)`` in it): the part that is the photo, not the padding ``keep_ratio`` adds. A
    blank mask rides along, and the transform fills what it pads with ``IGNORE_INDEX``."""
    h0, w0 = chw.shape[-2:]
    x, mask = transform(tv_tensors.Image(chw), tv_tensors.Mask(torch.zeros(h0, w0, dtype=torch.uint8)))
    content = (mask != IGNORE_INDEX).nonzero()
    top, left = (int(v) for v in content.min(dim=0).values)
    bottom, right = (int(v) + 1 for v in content.max(dim=0).values)
    return x.as_subclass(torch.Tensor), (top, left, bottom - top, right - left)


class InstanceMasks(tv_tensors.Mask):
    """``(M, H, W)`` uint8 0/1 masks, one per instance: geometry like any ``Mask``, but padded with 0, not 255.

    A subclass so that v2's kernels (resize, crop, flip) dispatch to the mask kernels through the MRO while
    :class:`ResizePad` can tell them from the semantic mask.
    """


def instance_targets(masks: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Instances after a transform: empty masks (cropped away, or too thin to survive the resize) are dropped and
    each box is recomputed from its mask, so boxes are exact at the output resolution.

    Args:
        masks: ``(M, H, W)`` bool or 0/1 integer. labels: ``(M,)`` int64 class ids.

    Returns:
        ``{"boxes": (N, 4) float32 (x0, y0, x1, y1) pixel edges, x1 and y1 exclusive (as read_instances),
        "labels": (N,) int64, "masks": (N, H, W) bool}``, ``N <= M``, in the input order.
    """
    masks = masks.as_subclass(torch.Tensor).bool()
    if masks.ndim != 3 or labels.shape != masks.shape[:1]:
        raise ValueError(f"instance_targets: expected masks (M, H, W) and labels (M,), got {tuple(masks.shape)} "
                         f"and {tuple(labels.shape)}")
    keep = masks.flatten(1).any(dim=1)  # (M,)
    masks, labels = masks[keep], labels[keep].long()
    # masks_to_boxes gives the last pixel's index; +1 turns it into the pixel edge (x1, y1 exclusive)
    boxes = masks_to_boxes(masks) + masks.new_tensor([0, 0, 1, 1], dtype=torch.float32)
    return {"boxes": boxes.float(), "labels": labels, "masks": masks}


class Resize(v2.Resize):
    """``v2.Resize`` to an exact ``(H, W)``; masks use centre-aligned nearest neighbour (``NEAREST_EXACT``)."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, self.size, interpolation=_MASK_INTERPOLATION, antialias=False)
        return super().transform(inpt, params)


class RandomResizedCrop(v2.RandomResizedCrop):
    """``v2.RandomResizedCrop``; masks use centre-aligned nearest neighbour (``NEAREST_EXACT``)."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            cropped = F.crop(inpt, params["top"], params["left"], params["height"], params["width"])
            return F.resize(cropped, list(self.size), interpolation=_MASK_INTERPOLATION, antialias=False)
        return super().transform(inpt, params)


class ResizePad(v2.Transform):
    """Resize to fit inside ``size = (H, W)`` keeping the aspect ratio, then pad to exactly ``size``.

    The padding is split evenly between the sides; image padding is 0 (black) and mask padding is ``IGNORE_INDEX``,
    so padded pixels are never supervised; :class:`InstanceMasks` are padded with 0 (no instance there).
    """

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        out_h, out_w = self.size
        s = min(out_h / h, out_w / w)
        new_h, new_w = min(out_h, max(1, round(h * s))), min(out_w, max(1, round(w * s)))
        top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
        # F.pad takes [left, top, right, bottom]
        return {"resized": [new_h, new_w], "padding": [left, top, out_w - new_w - left, out_h - new_h - top]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            out = F.resize(inpt, params["resized"], interpolation=_MASK_INTERPOLATION, antialias=False)
            return F.pad(out, params["padding"], fill=0 if isinstance(inpt, InstanceMasks) else IGNORE_INDEX)
        if isinstance(inpt, tv_tensors.Image):
            out = F.resize(inpt, params["resized"], interpolation=InterpolationMode.BILINEAR, antialias=True)
            return F.pad(out, params["padding"], fill=0)
        return inpt

    def extra_repr(self) -> str:
        return f"size={self.size}"


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(h, w)`` integer labels (class or node ids) -> ``(H, W)``, centre-aligned nearest neighbour, as masks are
    resized here.

    Output pixel ``i`` takes source pixel ``floor((i + 0.5) * h / H)``, in integer arithmetic: float scale factors
    round centres that fall exactly on a source-pixel edge to either side.
    """
    (h, w), (oh, ow) = labels.shape, tuple(size)
    if (h, w) == (oh, ow):
        return labels
    rows = (2 * torch.arange(oh, device=labels.device) + 1) * h // (2 * oh)  # (H,)
    cols = (2 * torch.arange(ow, device=labels.device) + 1) * w // (2 * ow)  # (W,)
    return labels[rows][:, cols]


def keep_ratio_size(h: int, w: int, short: int, long: int) -> tuple[int, int]:
    """mmsegmentation's ``Resize(scale=(long, short), keep_ratio=True)``: the largest scale at which the short side
    is at most ``short`` and the long side at most ``long``; sides rounded to the nearest pixel."""
    scale = min(short / min(h, w), long / max(h, w))
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


class ResizeKeepRatio(v2.Transform):
    """Resize keeping the aspect ratio: the short side to ``short``, the long side at most ``long``
    (:func:`keep_ratio_size`); no padding (a segmenter pads to its stride itself). Masks: ``NEAREST_EXACT``."""

    def __init__(self, short: int, long: int) -> None:
        super().__init__()
        self.short, self.long = int(short), int(long)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"size": list(keep_ratio_size(*query_size(flat_inputs), self.short, self.long))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["size"], interpolation=_MASK_INTERPOLATION, antialias=False)
        if isinstance(inpt, tv_tensors.Image):
            return F.resize(inpt, params["size"], interpolation=InterpolationMode.BILINEAR, antialias=True)
        return inpt

    def extra_repr(self) -> str:
        return f"short={self.short}, long={self.long}"


def _check_range(name: str, value: Sequence[float], lo: float, hi: float) -> None:
    if len(value) != 2 or not (lo < value[0] <= value[1] <= hi):
        raise ValueError(f"transforms: {name} must be (min, max) with {lo} < min <= max <= {hi}, got {tuple(value)}")


def make_transforms(
    image_size: Sequence[int],
    *,
    train: bool,
    hflip: float = 0.5,
    scale: Sequence[float] = (0.5, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    color_jitter: float = 0.2,
    keep_ratio: bool = False,
    normalize: bool = False,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> v2.Compose:
    """A joint pipeline ``(Image uint8 (3, H, W), Mask (H, W)) -> (float32 (3, h, w), int64 (h, w))``.

    A third input, :class:`InstanceMasks` ``(M, H, W)`` uint8, is transformed jointly and comes back as
    ``(M, h, w)`` uint8 (pass it through :func:`instance_targets`).

    Args:
        image_size: output ``(h, w)``.
        train: random resized crop (``scale``, ``ratio``), horizontal flip (probability ``hflip``) and colour
            jitter (``color_jitter``); validation only resizes.
        scale: area range of the random crop; ``(1.0, 1.0)`` switches cropping off (plain resize).
        keep_ratio: resize to fit and pad (image 0, mask 255) instead of stretching to ``image_size``; applies to
            validation and to training without cropping.
        normalize: subtract ``mean`` and divide by ``std`` after scaling to ``[0, 1]`` (models normally do it).
    """
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"transforms: image_size must be (H, W) with positive sides, got {tuple(image_size)}")
    size = [int(image_size[0]), int(image_size[1])]
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"transforms: hflip is a probability in [0, 1], got {hflip}")
    if color_jitter < 0:
        raise ValueError(f"transforms: color_jitter must be >= 0 (0 switches it off), got {color_jitter}")
    _check_range("scale", scale, 0.0, 1.0)
    _check_range("ratio", ratio, 0.0, math.inf)
    resize = ResizePad(size) if keep_ratio else Resize(size, antialias=True)
    steps: list[Any] = []
    if train:
        crop = tuple(scale) != (1.0, 1.0)
        steps.append(RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), antialias=True) if crop
                     else resize)
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(p=hflip))
        if color_jitter > 0:
            steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    else:
        steps.append(resize)
    steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                            scale=True))
    if normalize:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)


def build_transforms(data_cfg: DataConfig, train: bool) -> v2.Compose:
    """The pipeline ``cfg.data`` describes: training augmentation from ``data.augment``, validation resize."""
    a = data_cfg.augment
    return make_transforms(
        data_cfg.image_size,
        train=train,
        hflip=a.hflip,
        scale=a.scale,
        ratio=a.ratio,
        color_jitter=a.color_jitter,
        keep_ratio=data_cfg.keep_ratio,
        normalize=data_cfg.normalize,
        mean=data_cfg.mean,
        std=data_cfg.std,
    )


def segmenter_transforms(data_cfg: DataConfig, size: Sequence[int], *, keep_ratio: bool = False,
                         long_side: int = 0) -> v2.Compose:
    """The validation pipeline at a segmenter's input size (``model.segmenter.input_size``) instead of
    ``data.image_size``: what graph stores of its predictions and the predictor feed it.

    ``keep_ratio`` (mmsegmentation's whole-image inference): short side ``min(size)``, long side at most
    ``long_side`` (``0``: 4 x the short side), each image its own size; otherwise exactly ``size``, stretched or,
    with ``data.keep_ratio``, fitted and padded (mask padding 255) as the classifier's images are.
    """
    if not keep_ratio:
        return make_transforms(size, train=False, keep_ratio=data_cfg.keep_ratio, normalize=data_cfg.normalize,
                               mean=data_cfg.mean, std=data_cfg.std)
    short = min(int(size[0]), int(size[1]))
    steps: list[Any] = [ResizeKeepRatio(short, long_side or 4 * short),
                        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                                   scale=True)]
    if data_cfg.normalize:
        steps.append(v2.Normalize(mean=list(data_cfg.mean), std=list(data_cfg.std)))
    return v2.Compose(steps)
