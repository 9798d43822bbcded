"""Segmentation evaluation that runs on any segmenter (UPSNet, a Hugging Face checkpoint, a detectron2 model).

The same images, the same code: ``evaluate_segmenter(segmenter, loader, class_table)`` compares a trained UPSNet and a
published checkpoint on equal terms. Metrics follow the ADE20K benchmark (and mmsegmentation):

- pixels annotated ``IGNORE_INDEX`` (255) and, by default, the background ``0 = other`` are not scored;
- ``miou``: mean over the table's classes (background excluded) whose union of prediction and annotation is
  non-empty, of ``|pred & gt| / |pred | gt|`` accumulated over the whole loader (torchmetrics
  ``MulticlassJaccardIndex``); a predicted ``other`` on an annotated pixel counts as a miss of the true class;
- ``pixel_accuracy``: correct / scored pixels (``MulticlassAccuracy``, micro);
- ``mean_accuracy``: mean per-class recall over classes with annotated pixels;
- ``per_class_iou``: ``{name: IoU or None}``; ``num_images``.

Predictions refer to ``segmenter.class_table``; annotations to ``class_table`` (ADE20K-150). They must be the same
label set: a segmenter with its own table (COCO, Cityscapes) has no defined mIoU against ADE20K annotations, and
asking for one raises ``ValueError``. Under DDP, torchmetrics sums the statistics of every process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from twostream.data.classes import IGNORE_INDEX, ClassTable

__all__ = ["evaluate_segmenter"]


def _device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate_segmenter(segmenter: nn.Module, loader: Iterable[dict | None], class_table: ClassTable, *,
                       device: torch.device | str | None = None, amp_dtype: torch.dtype | None = None,
                       ignore_background: bool = True) -> dict:
    """mIoU and pixel accuracy of ``segmenter`` on the annotated images of ``loader``.

    Args:
        segmenter: a :class:`~twostream.models.segmenter.Segmenter` (or a DDP wrapper of one).
        loader: yields dicts with ``"image"`` ``(B, 3, H, W)`` in ``[0, 1]`` and ``"sem_seg"`` ``(B, H, W)`` int64
            labels of ``class_table`` (255 = ignore); ``None`` batches (all items skipped) are passed over.
        class_table: the annotations' label set.
        device: where to run; default the segmenter's device.
        amp_dtype: autocast dtype for the forward pass (``None`` = full precision).
        ignore_background: leave pixels annotated ``class_table.background`` (ADE20K ``other``) unscored.

    Returns:
        ``{"miou", "pixel_accuracy", "mean_accuracy", "per_class_iou", "num_images"}`` (see the module docstring).

    Raises:
        ValueError: the segmenter's class table is not ``class_table``.
    """
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    inner = getattr(segmenter, "module", segmenter)
    seg_table: ClassTable = inner.class_table
    if tuple(seg_table.names) != tuple(class_table.names):
        raise ValueError(f"evaluate_segmenter: the segmenter predicts labels of '{seg_table.name}' "
                         f"({len(seg_table)} classes) but the annotations use '{class_table.name}' "
                         f"({len(class_table)} classes); mIoU against {class_table.name} annotations is undefined "
                         "for another label set: use a checkpoint whose class names align with it")
    device = torch.device(device) if device is not None else _device_of(inner)
    k = len(class_table)
    kwargs = {"num_classes": k, "ignore_index": IGNORE_INDEX, "validate_args": False}
    iou = MulticlassJaccardIndex(average="none", zero_division=math.nan, **kwargs).to(device)
    pixel_acc = MulticlassAccuracy(average="micro", **kwargs).to(device)
    class_acc = MulticlassAccuracy(average="none", **kwargs).to(device)
    annotated = torch.zeros(k, dtype=torch.long, device=device)
    background = class_table.background if ignore_background else None
    num_images = 0

    was_training = segmenter.training
    segmenter.eval()
    try:
        for batch in loader:
            if batch is None:
                continue
            images = batch["image"].to(device, non_blocking=True)
            target = batch["sem_seg"].to(device, non_blocking=True).long()
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = segmenter(images)["sem_logits"]  # (B, K, H, W)
            if logits.shape[-2:] != target.shape[-2:]:
                logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            pred = logits.argmax(dim=1)  # (B, H, W)
            target = torch.where((target < 0) | (target >= k), IGNORE_INDEX, target)
            if background is not None:
                target = torch.where(target == background, IGNORE_INDEX, target)
            iou.update(pred, target)
            pixel_acc.update(pred, target)
            class_acc.update(pred, target)
            annotated += torch.bincount(target[target != IGNORE_INDEX], minlength=k)[:k]
            num_images += int(images.shape[0])
    finally:
        segmenter.train(was_training)

    per_iou = iou.compute().double()  # (K,), NaN where prediction and annotation never met the class
    recall = class_acc.compute().double()
    scored = torch.ones(k, dtype=torch.bool, device=per_iou.device)
    if background is not None:
        scored[background] = False
    valid_iou = scored & ~torch.isnan(per_iou)
    short = class_table.short_names  # ADE has two 'screen's: those keep their full names
    names = [n if short.count(n) == 1 else full for n, full in zip(short, class_table.names)]
    has_gt = scored & (annotated.to(per_iou.device) > 0)
    return {
        "miou": float(per_iou[valid_iou].mean()) if valid_iou.any() else float("nan"),
        "pixel_accuracy": float(pixel_acc.compute()) if num_images else float("nan"),
        "mean_accuracy": float(recall[has_gt].mean()) if has_gt.any() else float("nan"),
        "per_class_iou": {names[c]: (None if math.isnan(v) else v) for c, v in enumerate(per_iou.tolist())
                          if scored[c]},
        "num_images": num_images,
    }
