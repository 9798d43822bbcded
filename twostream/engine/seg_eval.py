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
from torch import Tensor, nn

from twostream.data.classes import IGNORE_INDEX, ClassTable

__all__ = ["SegMetrics", "check_same_table", "evaluate_segmenter", "metric_names"]


def _device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


class SegMetrics:
    """Accumulates segmentation statistics over batches: ``update(pred, target)``, then ``compute()``.

    Args:
        class_table: the annotations' label set (predictions must use it too).
        device: where the statistics live.
        ignore_background: leave pixels annotated ``class_table.background`` (ADE20K ``other``) unscored.
    """

    def __init__(self, class_table: ClassTable, device: torch.device | str = "cpu",
                 ignore_background: bool = True) -> None:
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        self.class_table = class_table
        k = self.k = len(class_table)
        kwargs = {"num_classes": k, "ignore_index": IGNORE_INDEX, "validate_args": False}
        self.iou = MulticlassJaccardIndex(average="none", zero_division=math.nan, **kwargs).to(device)
        self.pixel_acc = MulticlassAccuracy(average="micro", **kwargs).to(device)
        self.class_acc = MulticlassAccuracy(average="none", **kwargs).to(device)
        # annotated pixels per class and the image count: summed over ranks in compute()
        self.counts = torch.zeros(k + 1, dtype=torch.long, device=device)
        self.background = class_table.background if ignore_background else None

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred`` ``(B, H, W)`` labels (or ``(B, K, h, w)`` logits, resized to the target), ``target`` ``(B, H, W)``
        labels of ``class_table`` with 255 = ignore."""
        target = target.to(self.counts.device).long()
        if pred.ndim == 4:
            if pred.shape[-2:] != target.shape[-2:]:
                pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            pred = pred.argmax(dim=1)
        pred = pred.to(self.counts.device)
        target = torch.where((target < 0) | (target >= self.k), IGNORE_INDEX, target)
        if self.background is not None:
            target = torch.where(target == self.background, IGNORE_INDEX, target)
        self.iou.update(pred, target)
        self.pixel_acc.update(pred, target)
        self.class_acc.update(pred, target)
        self.counts[: self.k] += torch.bincount(target[target != IGNORE_INDEX], minlength=self.k)[: self.k]
        self.counts[self.k] += int(target.shape[0])

    def compute(self) -> dict:
        """``{"miou", "pixel_accuracy", "mean_accuracy", "per_class_iou", "num_images"}`` (module docstring)."""
        from twostream.engine.distributed import all_reduce_sum

        counts = all_reduce_sum(self.counts).cpu()
        annotated, num_images = counts[: self.k], int(counts[self.k])
        k, class_table = self.k, self.class_table
        per_iou = self.iou.compute().double().cpu()  # (K,), NaN where prediction and annotation never met the class
        recall = self.class_acc.compute().double().cpu()
        scored = torch.ones(k, dtype=torch.bool)
        if self.background is not None:
            scored[self.background] = False
        valid_iou = scored & ~torch.isnan(per_iou)
        names = metric_names(class_table)
        has_gt = scored & (annotated > 0)
        return {
            "miou": float(per_iou[valid_iou].mean()) if valid_iou.any() else float("nan"),
            "pixel_accuracy": float(self.pixel_acc.compute()) if num_images else float("nan"),
            "mean_accuracy": float(recall[has_gt].mean()) if has_gt.any() else float("nan"),
            "per_class_iou": {names[c]: (None if math.isnan(v) else v) for c, v in enumerate(per_iou.tolist())
                              if scored[c]},
            "num_images": num_images,
        }


def metric_names(class_table: ClassTable) -> list[str]:
    """Per label id, the name metrics report: the short name, or the full one where short names repeat (ADE20K has
    two 'screen's)."""
    short = class_table.short_names
    return [n if short.count(n) == 1 else full for n, full in zip(short, class_table.names)]


def check_same_table(segmenter_table: ClassTable, class_table: ClassTable) -> None:
    """mIoU compares labels of one table; raise ``ValueError`` naming both when they differ."""
    if tuple(segmenter_table.names) != tuple(class_table.names):
        raise ValueError(f"evaluate_segmenter: the segmenter predicts labels of '{segmenter_table.name}' "
                         f"({len(segmenter_table)} classes) but the annotations use '{class_table.name}' "
                         f"({len(class_table)} classes); mIoU against {class_table.name} annotations is undefined "
                         "for another label set: use a checkpoint whose class names align with it")


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
        ``{"miou", "pixel_accuracy", "mean_accuracy", "per_class_iou", "num_images"}`` (see the module docstring),
        plus ``"panoptic"`` (:class:`~twostream.engine.pq_eval.PanopticMetrics`: PQ, SQ, RQ) when the segmenter
        returns panoptic segments and the batches carry instance annotations (``data.instances``).

    Raises:
        ValueError: the segmenter's class table is not ``class_table``.
    """
    inner = getattr(segmenter, "module", segmenter)
    check_same_table(inner.class_table, class_table)
    device = torch.device(device) if device is not None else _device_of(inner)
    metrics = SegMetrics(class_table, device=device, ignore_background=ignore_background)
    panoptic = None  # PanopticMetrics, once a batch brings both panoptic output and instance annotations
    was_training = segmenter.training
    segmenter.eval()
    try:
        for batch in loader:
            if batch is None:
                continue
            images = batch["image"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = segmenter(images)
            metrics.update(out["sem_logits"], batch["sem_seg"])  # (B, K, H, W) logits
            if "panoptic" in out and "instances" in batch:
                if panoptic is None:
                    from twostream.engine.pq_eval import PanopticMetrics

                    panoptic = PanopticMetrics(class_table, device=device)
                panoptic.update(out["panoptic"], batch["sem_seg"], batch["instances"])
    finally:
        segmenter.train(was_training)
    result = metrics.compute()
    if panoptic is not None:
        result["panoptic"] = panoptic.compute()
    return result
