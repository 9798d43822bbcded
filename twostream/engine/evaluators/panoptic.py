"""Panoptic quality (PQ, Kirillov et al., "Panoptic Segmentation", CVPR 2019) of a segmenter's panoptic output.

Segments are matched per image and per class when their IoU exceeds 0.5 (a unique match), then, per class::

    PQ = sum of matched IoUs / (TP + FP / 2 + FN / 2)  =  SQ (mean matched IoU)  x  RQ (TP / (TP + FP / 2 + FN / 2))

and ``pq`` is the mean over the classes that occur (TP + FP + FN > 0); ``pq_things`` and ``pq_stuff`` average the
thing and the stuff classes apart. Void follows the reference implementation (``pq_compute`` of the COCO panoptic
API): a predicted segment's pixels on void ground truth leave its IoU's union, and a predicted segment lying mostly
(> 50 %) on void is not a false positive; a ground-truth segment the prediction leaves void (UPSNet's "unknown") is a
false negative. torchmetrics' ``PanopticQuality`` treats predicted void like annotated void (it leaves such segments
out of the false negatives and out of the union), which would reward predicting "unknown", so the counting is done
here, vectorised per image with ``bincount``.

The project's formats become ``(category, segment)`` pixel pairs first:

- ground truth, from the semantic map and the instance annotations (``data.instances``): a stuff pixel is its class
  (one segment per stuff class and image); a pixel of instance ``j`` is ``(labels[j], j + 1)``; void (not scored) are
  the background label (ADE20K ``other``), ignore (255), and thing-class pixels that no instance claims;
- prediction, from ``(panoptic_map, segments_info)`` (:class:`~twostream.models.panoptic.PanopticHead`): a pixel of
  segment ``s`` is ``(category_id, s)``; segment id ``0`` (unknown, background) is void.

The state is per-class sums (matched IoU, TP, FP, FN) and an image count, summed over ranks once before the
division.
"""

from __future__ import annotations

import torch
from torch import Tensor

from twostream.data.classes import ClassTable
from twostream.engine.evaluators.base import Evaluator, sum_over_ranks
from twostream.engine.evaluators.semseg import metric_names
from twostream.models.panoptic import instance_owner, stuff_and_thing_ids

__all__ = ["PanopticEvaluator", "panoptic_prediction", "panoptic_stats", "panoptic_target"]

VOID = -1  # the category of void pixels


def panoptic_target(sem_seg: Tensor, instances: dict | None, class_table: ClassTable) -> Tensor:
    """One image's ground truth as ``(H, W, 2)`` int64 ``(category, instance)`` pairs (module docstring).

    Args:
        sem_seg: ``(H, W)`` labels of ``class_table`` (255 = ignore).
        instances: ``{"labels" (M,), "masks" (M, H, W) bool}`` or ``None`` (no instance annotations: every thing
            pixel is void). Where masks overlap, the later instance owns the pixel.
    """
    sem = sem_seg.long()
    k = len(class_table)
    is_thing = torch.zeros(k, dtype=torch.bool, device=sem.device)
    is_thing[stuff_and_thing_ids(class_table)[1]] = True
    category = torch.where(is_thing[sem.clamp(0, k - 1)] & (sem < k), VOID, sem)
    instance = torch.zeros_like(sem)
    if instances is not None and len(instances["labels"]):
        owner = instance_owner(instances["masks"].to(sem.device))  # (H, W) 1..M, 0 = no instance
        labels = instances["labels"].to(sem.device).long()
        category = torch.where(owner > 0, labels[(owner - 1).clamp(min=0)], category)
        instance = owner
    return torch.stack([category, instance], dim=-1)


def panoptic_prediction(panoptic_map: Tensor, segments_info: list[dict]) -> Tensor:
    """One image's predicted segments as ``(H, W, 2)`` int64 ``(category, segment id)`` pairs; id 0 is void."""
    ids = panoptic_map.long()
    size = max([int(ids.max()) if ids.numel() else 0] + [s["id"] for s in segments_info]) + 1
    category = torch.full((size,), VOID, dtype=torch.long, device=ids.device)
    instance = torch.zeros(size, dtype=torch.long, device=ids.device)
    for s in segments_info:  # one entry per segment, not per pixel
        category[s["id"]] = int(s["category_id"])
        instance[s["id"]] = int(s["id"])
    return torch.stack([category[ids], instance[ids]], dim=-1)


def _segments(pairs: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(H, W, 2)`` pairs -> per pixel a segment index (``-1`` = void: a category outside ``0..num_classes-1``)
    ``(H * W,)`` and each segment's category ``(S,)``."""
    category, instance = pairs[..., 0].flatten(), pairs[..., 1].flatten()
    valid = (category >= 0) & (category < num_classes)
    stride = int(instance.max()) + 1 if instance.numel() else 1
    keys, inverse = torch.unique(category[valid] * stride + instance[valid], return_inverse=True)
    ids = torch.full_like(category, -1)
    ids[valid] = inverse
    return ids, keys // stride


def panoptic_stats(pred: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One image's per-class ``(iou_sum, tp, fp, fn)``, each ``(num_classes,)`` float64, from ``(H, W, 2)`` pairs
    (:func:`panoptic_prediction`, :func:`panoptic_target`); categories outside ``0..num_classes-1`` are void."""
    k = num_classes
    gid, gcat = _segments(target, k)
    pid, pcat = _segments(pred, k)
    g, p = len(gcat), len(pcat)
    g_area = torch.bincount(gid[gid >= 0], minlength=g)
    p_area = torch.bincount(pid[pid >= 0], minlength=p)
    both = (gid >= 0) & (pid >= 0)
    inter = torch.bincount(gid[both] * p + pid[both], minlength=g * p).view(g, p)
    p_on_void = torch.bincount(pid[(gid < 0) & (pid >= 0)], minlength=p)
    union = g_area[:, None] + p_area[None, :] - inter - p_on_void[None, :]
    iou = inter.double() / union.clamp(min=1).double()
    # IoU > 0.5 makes a match unique: segments of one map do not overlap
    match = (iou > 0.5) & (gcat[:, None] == pcat[None, :])
    g_idx, p_idx = match.nonzero(as_tuple=True)
    g_matched = torch.zeros(g, dtype=torch.bool, device=gid.device)
    p_matched = torch.zeros(p, dtype=torch.bool, device=gid.device)
    g_matched[g_idx], p_matched[p_idx] = True, True
    false_pos = ~p_matched & (p_on_void.double() <= 0.5 * p_area.double())

    def count(categories: Tensor, weights: Tensor | None = None) -> Tensor:
        return torch.bincount(categories, weights=weights, minlength=k).double()

    return (count(gcat[g_idx], iou[g_idx, p_idx]), count(gcat[g_idx]), count(pcat[false_pos]),
            count(gcat[~g_matched]))


class PanopticEvaluator(Evaluator):
    """PQ of ``outputs["panoptic"]`` against ``inputs["sem_seg"]`` and ``inputs["instances"]``.

    Batches without both (a segmenter without a panoptic head, data without instance annotations) are passed over;
    ``evaluate()`` then reports ``num_images: 0``.

    Args:
        class_table: the label set of the annotations and of the predictions; its ``stuff`` flags split the classes,
            and its background label is void.
        device: where the counts live.
    """

    def __init__(self, class_table: ClassTable, device: torch.device | str = "cpu") -> None:
        self.class_table = class_table
        self.device = torch.device(device)
        stuff, self.things = stuff_and_thing_ids(class_table)
        self.stuffs = [i for i in stuff if i != class_table.background]  # the background is void, not a class
        self.reset()

    def reset(self) -> None:
        # rows: iou_sum, tp, fp, fn per class; the last column counts the images
        self.counts = torch.zeros(4, len(self.class_table) + 1, dtype=torch.float64, device=self.device)

    def update(self, panoptic: list[tuple[Tensor, list[dict]]], sem_seg: Tensor, instances: list[dict | None]) -> None:
        """``panoptic``: per image ``(panoptic_map (H, W), segments_info)``; ``sem_seg`` ``(B, H, W)``;
        ``instances``: per image the annotation dict of :func:`panoptic_target` (or ``None``)."""
        if not len(panoptic) == len(sem_seg) == len(instances):
            raise ValueError(f"PanopticEvaluator.update: {len(panoptic)} predictions, {len(sem_seg)} semantic maps "
                             f"and {len(instances)} instance annotations; expected one of each per image")
        device, k = self.counts.device, len(self.class_table)
        for (panoptic_map, segments), sem, inst in zip(panoptic, sem_seg, instances):
            pred = panoptic_prediction(panoptic_map.to(device), segments)
            target = panoptic_target(sem.to(device), inst, self.class_table)
            if pred.shape != target.shape:
                raise ValueError(f"PanopticEvaluator.update: a panoptic map of {tuple(pred.shape[:2])} pixels for an "
                                 f"annotation of {tuple(target.shape[:2])}")
            if self.class_table.background is not None:  # a segment labelled background is void, as in the target
                pred[..., 0] = torch.where(pred[..., 0] == self.class_table.background, VOID, pred[..., 0])
            self.counts[:, :k] += torch.stack(panoptic_stats(pred, target, k))
        self.counts[0, k] += len(panoptic)

    def process(self, inputs: dict, outputs: dict) -> None:
        if "panoptic" in outputs and "instances" in inputs:
            self.update(outputs["panoptic"], inputs["sem_seg"], inputs["instances"])

    def metrics(self, counts: Tensor) -> dict:
        """``{"pq", "sq", "rq", "pq_things", "pq_stuff", "per_class_pq", "num_images"}`` of (reduced) counts; each
        average is over the classes with TP + FP + FN > 0 (NaN when there are none); ``per_class_pq``:
        ``{name: PQ or None}``."""
        counts = counts.cpu()
        k = len(self.class_table)
        iou, tp, fp, fn = counts[:, :k]
        denominator = tp + 0.5 * fp + 0.5 * fn
        occurs = denominator > 0
        pq = torch.where(occurs, iou / denominator.clamp(min=1e-12), 0.0)
        sq = torch.where(tp > 0, iou / tp.clamp(min=1), 0.0)
        rq = torch.where(occurs, tp / denominator.clamp(min=1e-12), 0.0)

        def mean(values: Tensor, classes: list[int]) -> float:
            idx = torch.tensor([c for c in classes if occurs[c]], dtype=torch.long)
            return float(values[idx].mean()) if len(idx) else float("nan")

        every = sorted(self.things + self.stuffs)
        names = metric_names(self.class_table)
        return {
            "pq": mean(pq, every), "sq": mean(sq, every), "rq": mean(rq, every),
            "pq_things": mean(pq, self.things), "pq_stuff": mean(pq, self.stuffs),
            "per_class_pq": {names[c]: (float(pq[c]) if occurs[c] else None) for c in every},
            "num_images": int(counts[0, k]),
        }

    def evaluate(self) -> dict:
        return self.metrics(sum_over_ranks(self.counts))
