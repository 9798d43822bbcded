"""Segmentation metrics that run on any segmenter (UPSNet, a Hugging Face checkpoint, a detectron2 model).

The same images, the same code: :func:`evaluate_segmenter` compares a trained UPSNet and a published checkpoint on
equal terms. Metrics follow the ADE20K benchmark (and mmsegmentation):

- pixels annotated ``IGNORE_INDEX`` (255) and, by default, the background ``0 = other`` are not scored;
- ``miou``: mean over the table's classes (background excluded) whose union of prediction and annotation is
  non-empty, of ``|pred & gt| / |pred | gt|`` accumulated over the whole loader; a predicted ``other`` on an
  annotated pixel counts as a miss of the true class;
- ``pixel_accuracy``: correct / scored pixels;
- ``mean_accuracy``: mean per-class recall over classes with annotated pixels;
- ``per_class_iou``: ``{name: IoU or None}``; ``num_images``.

The state is one confusion matrix (plus an image count), summed over ranks once. Ratios are computed as torchmetrics'
``MulticlassJaccardIndex`` / ``MulticlassAccuracy`` compute them from a confusion matrix (float32), which earlier
versions of this module used, so numbers match earlier runs digit for digit.

Predictions refer to ``segmenter.class_table``; annotations to ``class_table`` (ADE20K-150). They must be the same
label set: a segmenter with its own table (COCO, Cityscapes) has no defined mIoU against ADE20K annotations, and
asking for one raises ``ValueError``.

At which size. A batch that carries ``"sem_seg_original"`` (a list of each image's annotation at its own size, what
``tools/eval.py`` reads) is scored there, as mmsegmentation and the ADE20K benchmark score: each image's logits,
cropped to its content (the padding ``data.keep_ratio`` added, 255 in ``"sem_seg"``), are upsampled bilinearly to its
annotation's size. So a segmenter is scored against the same annotation whatever size it segmented at. Without it,
against ``"sem_seg"`` (the annotation at the batch's size: the training stage's validation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twostream.data.classes import IGNORE_INDEX, ClassTable
from twostream.engine.evaluators.base import Evaluator, inference_on_dataset, run_segmenter, sum_over_ranks

__all__ = ["SemSegEvaluator", "check_same_table", "content_logits", "evaluate_segmenter", "metric_names",
           "predicted_labels"]


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


def predicted_labels(outputs: dict, size: tuple[int, int]) -> Tensor | None:
    """``(B, H, W)`` int64 argmax of ``outputs["sem_logits"]`` (bilinearly resized to ``size`` first when it differs),
    computed once per batch and kept in ``outputs["sem_labels"]`` for the other evaluators; ``None`` without
    ``"sem_logits"``."""
    if "sem_labels" not in outputs:
        logits = outputs.get("sem_logits")
        if logits is None:
            return None
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
        outputs["sem_labels"] = logits.argmax(dim=1)
    return outputs["sem_labels"]


def content_logits(logits: Tensor, sem_seg: Tensor | None) -> Tensor:
    """One image's ``(K, h, w)`` logits cropped to its content: the rows and columns of ``sem_seg`` ``(H, W)`` (the
    annotation at the model's input size) that are not all padding (255), scaled to the logits' size."""
    if sem_seg is None:
        return logits
    content = sem_seg != IGNORE_INDEX
    rows, cols = content.any(dim=1).nonzero(), content.any(dim=0).nonzero()
    if len(rows) == 0 or (len(rows) == sem_seg.shape[0] and len(cols) == sem_seg.shape[1]):
        return logits
    (hh, ww), (h, w) = sem_seg.shape, logits.shape[-2:]
    top, bottom = int(rows[0]) * h // hh, -(-(int(rows[-1]) + 1) * h // hh)
    left, right = int(cols[0]) * w // ww, -(-(int(cols[-1]) + 1) * w // ww)
    return logits[..., top:bottom, left:right]


def at_original_size(logits: Tensor, sem_seg: Tensor | None, size: tuple[int, int]) -> Tensor:
    """``(K, h, w)`` logits of one image -> ``(H, W)`` labels at its annotation's ``size``: cropped to the content
    (:func:`content_logits`), upsampled bilinearly, argmax."""
    crop = content_logits(logits, sem_seg).float()[None]
    if tuple(crop.shape[-2:]) != tuple(size):
        crop = F.interpolate(crop, size=tuple(size), mode="bilinear", align_corners=False)
    return crop[0].argmax(dim=0)


def _ratio(num: Tensor, den: Tensor, zero_division: float) -> Tensor:
    """``num / den`` in float32 with ``zero_division`` where ``den == 0`` (torchmetrics' ``_safe_divide``)."""
    num, den = num.float(), den.float()
    return torch.where(den == 0, torch.tensor(zero_division, dtype=num.dtype), num / torch.where(den == 0, 1, den))


class SemSegEvaluator(Evaluator):
    """mIoU, pixel accuracy and mean accuracy of ``outputs["sem_logits"]`` against ``inputs["sem_seg"]``.

    Batches without ``"sem_logits"`` (a classifier on cached graphs) are passed over.

    Args:
        class_table: the annotations' label set (predictions must use it too).
        device: where the confusion matrix lives (the model's device).
        ignore_background: leave pixels annotated ``class_table.background`` (ADE20K ``other``) unscored.
    """

    def __init__(self, class_table: ClassTable, device: torch.device | str = "cpu",
                 ignore_background: bool = True) -> None:
        self.class_table = class_table
        self.k = len(class_table)
        self.device = torch.device(device)
        self.background = class_table.background if ignore_background else None
        self.reset()

    def reset(self) -> None:
        # rows = annotation, columns = prediction; the last entry counts the images
        self.state = torch.zeros(self.k * self.k + 1, dtype=torch.long, device=self.device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred`` ``(B, H, W)`` labels (or ``(B, K, h, w)`` logits, resized to the target), ``target`` ``(B, H, W)``
        labels of ``class_table`` with 255 = ignore."""
        target = target.to(self.device).long()
        if pred.ndim == 4:
            pred = predicted_labels({"sem_logits": pred}, tuple(target.shape[-2:]))
        pred = pred.to(self.device).long()
        k = self.k
        target = torch.where((target < 0) | (target >= k), IGNORE_INDEX, target)
        if self.background is not None:
            target = torch.where(target == self.background, IGNORE_INDEX, target)
        scored = target != IGNORE_INDEX
        codes = target[scored] * k + pred[scored].clamp(0, k - 1)
        self.state[: k * k] += torch.bincount(codes, minlength=k * k)
        self.state[k * k] += int(target.shape[0])

    def process(self, inputs: dict, outputs: dict) -> None:
        target = inputs["sem_seg"]
        originals = inputs.get("sem_seg_original")
        if originals is not None:  # each image at its own annotation's size (module docstring)
            logits = outputs.get("sem_logits")
            if logits is None:
                return
            for i, original in enumerate(originals):
                pred = at_original_size(logits[i], target[i], tuple(original.shape))
                self.update(pred[None], original[None])
            return
        pred = predicted_labels(outputs, tuple(target.shape[-2:]))
        if pred is not None:
            self.update(pred, target)

    def metrics(self, state: Tensor) -> dict:
        """``{"miou", "pixel_accuracy", "mean_accuracy", "per_class_iou", "num_images"}`` of a (reduced) state."""
        k = self.k
        cm = state[: k * k].view(k, k).cpu()
        num_images = int(state[k * k])
        cmf = cm.float()  # as torchmetrics: float32 sums of the confusion matrix
        tp = torch.diag(cmf)
        per_iou = _ratio(tp, cmf.sum(0) + cmf.sum(1) - tp, math.nan).double()  # NaN: class never met
        recall = _ratio(torch.diag(cm), cm.sum(1), 0.0).double()
        pixel_accuracy = float(_ratio(cm.diag().sum(), cm.sum(), 0.0))
        annotated = cm.sum(1)
        scored = torch.ones(k, dtype=torch.bool)
        if self.background is not None:
            scored[self.background] = False
        valid_iou = scored & ~torch.isnan(per_iou)
        names = metric_names(self.class_table)
        has_gt = scored & (annotated > 0)
        return {
            "miou": float(per_iou[valid_iou].mean()) if valid_iou.any() else float("nan"),
            "pixel_accuracy": pixel_accuracy if num_images else float("nan"),
            "mean_accuracy": float(recall[has_gt].mean()) if has_gt.any() else float("nan"),
            "per_class_iou": {names[c]: (None if math.isnan(v) else v) for c, v in enumerate(per_iou.tolist())
                              if scored[c]},
            "num_images": num_images,
        }

    def evaluate(self) -> dict:
        return self.metrics(sum_over_ranks(self.state))


def _device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def evaluate_segmenter(segmenter: nn.Module, loader: Iterable[dict | None], class_table: ClassTable, *,
                       device: torch.device | str | None = None, amp_dtype: torch.dtype | None = None,
                       ignore_background: bool = True) -> dict:
    """mIoU and pixel accuracy of ``segmenter`` on the annotated images of ``loader``.

    Args:
        segmenter: a :class:`~twostream.models.segmenter_base.Segmenter` (or a DDP wrapper of one).
        loader: yields dicts with ``"image"`` ``(B, 3, H, W)`` in ``[0, 1]`` and ``"sem_seg"`` ``(B, H, W)`` int64
            labels of ``class_table`` (255 = ignore); ``None`` batches (all items skipped) are passed over.
        class_table: the annotations' label set.
        device: where to run; default the segmenter's device.
        amp_dtype: autocast dtype for the forward pass (``None`` = full precision).
        ignore_background: leave pixels annotated ``class_table.background`` (ADE20K ``other``) unscored.

    Returns:
        ``{"miou", "pixel_accuracy", "mean_accuracy", "per_class_iou", "num_images"}`` (see the module docstring),
        plus ``"panoptic"`` (:class:`~twostream.engine.evaluators.panoptic.PanopticEvaluator`: PQ, SQ, RQ) when the
        segmenter returns panoptic segments and the batches carry instance annotations (``data.instances``).

    Raises:
        ValueError: the segmenter's class table is not ``class_table``.
    """
    from twostream.engine.evaluators.panoptic import PanopticEvaluator

    inner = getattr(segmenter, "module", segmenter)
    check_same_table(inner.class_table, class_table)
    device = torch.device(device) if device is not None else _device_of(inner)
    results = inference_on_dataset(
        segmenter, loader,
        {"segmentation": SemSegEvaluator(class_table, device, ignore_background=ignore_background),
         "panoptic": PanopticEvaluator(class_table, device)},
        forward=run_segmenter, device=device, amp_dtype=amp_dtype)
    metrics = results["segmentation"]
    if results["panoptic"]["num_images"]:
        metrics["panoptic"] = results["panoptic"]
    return metrics
