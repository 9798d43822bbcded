"""UPSNet's parameter-free panoptic head (Xiong et al., "UPSNet: A Unified Panoptic Segmentation Network", CVPR 2019).

The semantic head's logits ``X`` (one channel per class) and the instance head's mask logits are combined into one
panoptic logit tensor ``Z`` whose channels are the image's segments, so a per-pixel softmax (argmax at inference)
decides between "this stuff class" and "this instance", and the head has no parameters of its own::

    Z = [ X_stuff                       (S channels: the semantic logits of the stuff classes)
          X_mask_i + Y_i, i = 1..N      (one channel per instance)
          Z_unknown ]                   (1 channel: a thing the instance head missed)

For instance ``i`` with box ``B_i`` and class ``C_i``: ``X_mask_i`` is the semantic logit of class ``C_i`` inside
``B_i`` and 0 outside, ``Y_i`` is the instance's mask logit (the Mask R-CNN output of class ``C_i``, resized into
``B_i``) and 0 outside. Adding the two makes an instance win a pixel when both heads agree it is that thing there.

The unknown channel (paper Sec. 3.4) is ``Z_unknown = max_{c in things} X_c - max_i X_mask_i``: where the semantic
head is confident that *some* thing class is present (large ``max X_thing``) but no instance of a thing class claims
the pixel with its semantic logit (small ``max X_mask``: no box covers it, or only boxes of classes the semantic
head does not believe), the pixel is better called "unknown" (void) than forced into a wrong stuff class or a wrong
instance. This follows the authors' code (``resnet_upsnet.py``): ``X_mask`` is the cropped semantic term only, not
the mask logits. With no instances at all we use 0 for ``max_i X_mask_i``, the value every pixel outside all boxes
gets anyway (the authors' code puts a constant -10 there, which makes "unknown" win more easily on images without
detections; 0 keeps a pixel's decision independent of whether some box exists elsewhere in the image).

During training the head is used with ground-truth boxes: a random 30 % of them (``1 - box_keep_fraction``) are
dropped and their pixels are labelled "unknown", which teaches the rest of the network to produce logits for which
the unknown channel means what it should (the paper's training recipe).

At inference the detections are filtered first as in the authors' code: a score threshold, class-agnostic NMS, and
"mask removal" (an instance whose binary mask is mostly covered by higher-scoring instances of the same class is
dropped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from twostream.data.classes import IGNORE_INDEX, ClassTable

__all__ = ["PanopticHead", "box_masks", "instance_owner", "paste_mask_logits", "stuff_and_thing_ids"]


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def stuff_and_thing_ids(class_table: ClassTable) -> tuple[list[int], list[int]]:
    """Split the label ids: stuff classes plus the background label (``other``), and the countable thing classes.

    The background competes in the panoptic logits like a stuff class; its pixels become void (segment id 0).
    """
    stuff = [i for i in range(len(class_table)) if class_table.stuff[i] or i == class_table.background]
    things = [i for i in range(len(class_table)) if not (class_table.stuff[i] or i == class_table.background)]
    return stuff, things


def instance_owner(masks: Tensor) -> Tensor:
    """``(M, H, W)`` bool instance masks -> ``(H, W)`` int64: per pixel ``1 + `` the index of the last instance
    covering it (later instances win overlaps), ``0`` where none does."""
    ids = torch.arange(1, len(masks) + 1, device=masks.device)[:, None, None]
    return (masks.long() * ids).amax(0)


def box_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Which pixels have their centre inside each box.

    Args:
        boxes: ``(N, 4)`` float ``(x1, y1, x2, y2)`` in pixel-edge coordinates (a box covering pixel columns
            ``a..b`` is ``x1 = a, x2 = b + 1``).
        size: ``(H, W)``.
    Returns:
        ``(N, H, W)`` bool.
    """
    h, w = size
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5  # pixel centres
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5
    inside_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])  # (N, H)
    inside_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])  # (N, W)
    return inside_y[:, :, None] & inside_x[:, None, :]


def paste_mask_logits(mask_logits: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize each ``M x M`` mask into its box of an ``H x W`` canvas (bilinear), 0 outside the box; differentiable.

    Args:
        mask_logits: ``(N, M, M)`` float. boxes: ``(N, 4)`` as in :func:`box_masks`. size: ``(H, W)``.
    Returns:
        ``(N, H, W)`` float.
    """
    n = mask_logits.shape[0]
    h, w = size
    if n == 0:
        return mask_logits.new_zeros((0, h, w))
    boxes = boxes.to(mask_logits.dtype)
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5
    bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
    bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
    # grid_sample's normalised coordinates (align_corners=False): -1 and 1 are the mask's outer edges = box edges
    gx = (xs[None] - boxes[:, 0:1]) / bw[:, None] * 2 - 1  # (N, W)
    gy = (ys[None] - boxes[:, 1:2]) / bh[:, None] * 2 - 1  # (N, H)
    grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)], dim=-1)  # (N, H, W, 2)
    pasted = F.grid_sample(mask_logits[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return pasted[:, 0] * box_masks(boxes, size)  # (N, H, W)


# --------------------------------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------------------------------


class PanopticHead(nn.Module):
    """Parameter-free panoptic head (see the module docstring for the logits).

    Args:
        stuff_ids: label ids of the stuff channels, including the background label (:func:`stuff_and_thing_ids`).
        thing_ids: label ids of the thing classes (the classes instances can have).
        background: label id whose pixels are void in the panoptic map (``None``: every stuff class is a segment).
        score_thresh: inference: detections below this score are not used (authors' default 0.6).
        nms_thresh: inference: class-agnostic NMS IoU threshold between detections (0.5).
        overlap_thresh: inference: drop an instance whose mask overlaps higher-scoring same-class masks by more
            than this fraction of its own area (0.3).
        stuff_area_limit: inference: stuff segments with fewer pixels become void (0 keeps all; the authors used 4096
            at COCO's 800-pixel scale).
        box_keep_fraction: training: fraction of ground-truth instances kept; the dropped ones teach "unknown".

    Shapes (one image):
        sem_logits ``(K, H, W)``; boxes ``(N, 4)`` in the pixel coordinates of ``sem_logits``; labels ``(N,)`` label
        ids (thing classes); mask_logits ``(N, M, M)`` (the mask head's logit of each instance's class);
        panoptic logits ``(S + N + 1, H, W)``.
    """

    def __init__(self, *, stuff_ids: list[int], thing_ids: list[int], background: int | None = 0,
                 score_thresh: float = 0.6, nms_thresh: float = 0.5, overlap_thresh: float = 0.3,
                 stuff_area_limit: int = 0, box_keep_fraction: float = 0.7) -> None:
        super().__init__()
        if not thing_ids:
            raise ValueError("PanopticHead: the class table has no thing classes; a panoptic head needs instances")
        if set(stuff_ids) & set(thing_ids):
            raise ValueError(f"PanopticHead: ids {sorted(set(stuff_ids) & set(thing_ids))} are both stuff and thing")
        if not 0 < box_keep_fraction <= 1:
            raise ValueError(f"PanopticHead: box_keep_fraction must be in (0, 1], got {box_keep_fraction}")
        self.stuff_ids, self.thing_ids = list(stuff_ids), list(thing_ids)
        self.background = background
        self.score_thresh, self.nms_thresh, self.overlap_thresh = score_thresh, nms_thresh, overlap_thresh
        self.stuff_area_limit, self.box_keep_fraction = stuff_area_limit, box_keep_fraction
        num_labels = max(self.stuff_ids + self.thing_ids) + 1
        # label id -> stuff channel (or IGNORE_INDEX for thing classes and the ignore label itself)
        stuff_channel = torch.full((max(num_labels, IGNORE_INDEX + 1),), IGNORE_INDEX, dtype=torch.long)
        stuff_channel[torch.tensor(self.stuff_ids)] = torch.arange(len(self.stuff_ids))
        self.register_buffer("stuff_channel", stuff_channel, persistent=False)
        self.register_buffer("stuff_index", torch.tensor(self.stuff_ids), persistent=False)
        self.register_buffer("thing_index", torch.tensor(self.thing_ids), persistent=False)

    @property
    def num_stuff(self) -> int:
        return len(self.stuff_ids)

    def panoptic_logits(self, sem_logits: Tensor, boxes: Tensor, labels: Tensor, mask_logits: Tensor,
                        unknown: bool = True) -> Tensor:
        """``Z``: ``(S + N (+ 1), H, W)``: stuff logits, instance logits, and (``unknown=True``) the unknown logit."""
        size = tuple(sem_logits.shape[-2:])
        inside = box_masks(boxes, size)  # (N, H, W)
        seg_inst = sem_logits[labels] * inside  # X_mask: (N, H, W), the class's semantic logit inside the box
        inst = seg_inst + paste_mask_logits(mask_logits, boxes, size)  # X_mask + Y
        channels = [sem_logits[self.stuff_index], inst]
        if unknown:
            max_thing = sem_logits[self.thing_index].amax(dim=0)  # (H, W)
            max_inst = seg_inst.amax(dim=0) if len(boxes) else torch.zeros_like(max_thing)
            channels.append((max_thing - max_inst)[None])
        return torch.cat(channels, dim=0)

    # ---- inference --------------------------------------------------------------------------------------------------

    def select(self, boxes: Tensor, labels: Tensor, scores: Tensor, mask_logits: Tensor,
               size: tuple[int, int]) -> Tensor:
        """Indices of the detections the panoptic map uses, best first: score threshold, class-agnostic NMS, then
        mask removal (a loop over detections, at most ``detections_per_img``, not over pixels)."""
        keep = torch.nonzero(scores >= self.score_thresh).flatten()
        keep = keep[nms(boxes[keep].float(), scores[keep].float(), self.nms_thresh)]  # sorted by score
        if len(keep) == 0:
            return keep
        binary = paste_mask_logits(mask_logits[keep], boxes[keep], size) > 0  # (n, H, W)
        taken = {}  # label id -> (H, W) bool pixels already claimed by kept instances of that class
        kept = []
        for j, idx in enumerate(keep.tolist()):
            area = binary[j].sum()
            if area == 0:
                continue
            label = int(labels[idx])
            claimed = taken.get(label)
            if claimed is not None and (binary[j] & claimed).sum() > self.overlap_thresh * area:
                continue
            taken[label] = binary[j] if claimed is None else claimed | binary[j]
            kept.append(idx)
        return torch.tensor(kept, dtype=torch.long, device=boxes.device)

    @torch.no_grad()
    def forward(self, sem_logits: Tensor, boxes: Tensor, labels: Tensor, scores: Tensor,
                mask_logits: Tensor) -> tuple[Tensor, list[dict]]:
        """One image's panoptic segmentation.

        Returns:
            panoptic_map: ``(H, W)`` int32 segment ids, 0 = void (unknown, background, dropped stuff);
            segments_info: one dict per segment id >= 1: ``id``, ``category_id`` (label id), ``isthing``, ``area``
                (pixels), and for things ``score``. Stuff segments come first (by label id), then instances (by score).
        """
        size = tuple(sem_logits.shape[-2:])
        keep = self.select(boxes, labels, scores, mask_logits, size)
        boxes, labels, scores, mask_logits = boxes[keep], labels[keep], scores[keep], mask_logits[keep]
        z = self.panoptic_logits(sem_logits, boxes, labels, mask_logits, unknown=True)  # (S + N + 1, H, W)
        channel = z.argmax(dim=0)  # (H, W)
        area = torch.bincount(channel.flatten(), minlength=z.shape[0]).tolist()
        lut = torch.zeros(z.shape[0], dtype=torch.int32, device=z.device)  # channel -> segment id; unknown -> 0
        segments: list[dict] = []
        for c, label in enumerate(self.stuff_ids):
            if label == self.background or area[c] == 0 or area[c] < self.stuff_area_limit:
                continue
            segments.append({"id": len(segments) + 1, "category_id": label, "isthing": False, "area": area[c]})
            lut[c] = len(segments)
        for i in range(len(keep)):
            c = self.num_stuff + i
            if area[c] == 0:
                continue
            segments.append({"id": len(segments) + 1, "category_id": int(labels[i]), "isthing": True,
                             "area": area[c], "score": float(scores[i])})
            lut[c] = len(segments)
        return lut[channel], segments

    # ---- training ---------------------------------------------------------------------------------------------------

    def targets(self, sem_seg: Tensor, masks: Tensor, keep: Tensor) -> Tensor:
        """The panoptic target of one image: ``(H, W)`` int64 channel index of ``panoptic_logits`` (with unknown).

        Pixels of kept instance ``keep[j]`` -> ``S + j``; of a dropped instance -> the unknown channel; stuff-labelled
        pixels (and background) -> their stuff channel; thing-labelled pixels of no instance and 255 -> ignored.

        Args:
            sem_seg: ``(H, W)`` int64 labels. masks: ``(N, H, W)`` bool instance masks. keep: ``(n,)`` kept indices.
        """
        target = self.stuff_channel[sem_seg.clamp(0, len(self.stuff_channel) - 1)]  # (H, W); 255 -> 255
        if len(masks):
            kept = torch.zeros(len(masks), dtype=torch.bool, device=masks.device)
            kept[keep] = True
            # channel per instance: S + rank among the kept ones, or the unknown channel (S + n) when dropped
            rank = torch.cumsum(kept.long(), 0) - 1
            channel = torch.where(kept, self.num_stuff + rank, torch.full_like(rank, self.num_stuff + len(keep)))
            owner = instance_owner(masks)
            target = torch.where(owner > 0, channel[(owner - 1).clamp(min=0)], target)
        return target

    def loss(self, sem_logits: Tensor, sem_seg: Tensor, boxes: Tensor, labels: Tensor, masks: Tensor,
             mask_logits: Tensor, keep: Tensor) -> Tensor:
        """Cross-entropy of the panoptic logits of one image (the mean over its supervised pixels).

        Args:
            sem_logits: ``(K, h, w)``; sem_seg: ``(h, w)``; boxes: ``(N, 4)`` ground truth in ``(h, w)`` pixels;
            labels: ``(N,)``; masks: ``(N, h, w)`` bool; mask_logits: ``(n, M, M)`` of the kept instances;
            keep: ``(n,)`` indices of the kept instances (:meth:`sample_kept`).
        """
        z = self.panoptic_logits(sem_logits, boxes[keep], labels[keep], mask_logits, unknown=True)
        target = self.targets(sem_seg, masks, keep)
        loss = F.cross_entropy(z[None], target[None], ignore_index=IGNORE_INDEX, reduction="sum")
        return loss / (target != IGNORE_INDEX).sum().clamp(min=1)

    def sample_kept(self, num: int, device: torch.device | None = None) -> Tensor:
        """Training: a random ``box_keep_fraction`` of ``num`` ground-truth instances (at least one), sorted."""
        if num == 0:
            return torch.zeros(0, dtype=torch.long, device=device)
        k = max(int(num * self.box_keep_fraction), 1)
        return torch.randperm(num, device=device)[:k].sort().values

    def extra_repr(self) -> str:
        return (f"stuff={len(self.stuff_ids)}, things={len(self.thing_ids)}, score_thresh={self.score_thresh}, "
                f"nms_thresh={self.nms_thresh}, overlap_thresh={self.overlap_thresh}, "
                f"box_keep_fraction={self.box_keep_fraction}")
