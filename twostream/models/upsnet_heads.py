"""UPSNet's semantic head (deformable convolutions over the FPN levels) and its Mask R-CNN instance head.

Both read the FPN's ``p2..p5`` maps (``(B, C, H/s, W/s)``, ``s = 4, 8, 16, 32``; the instance head's RPN also
reads ``p6``, a stride-2 max-pool of ``p5``). The instance head is assembled from torchvision's detection building
blocks (anchor generator, RPN, multi-scale RoIAlign, box and mask heads and predictors), so its losses and
post-processing are torchvision's.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import DeformConv2d, MultiScaleRoIAlign

__all__ = ["ConvNormAct", "InstanceHead", "SemanticHead"]


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with up to ``max_groups`` groups of at least 4 channels: 32 groups for UPSNet's 128 channels; at toy
    widths (16 channels -> 4 groups) a group never shrinks to one channel, which would make it an instance norm."""
    return nn.GroupNorm(math.gcd(max_groups, max(channels // 4, 1)), channels)


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------


class ConvNormAct(nn.Module):
    """3x3 convolution -> GroupNorm -> ReLU; the convolution is a modulated deformable one (DCNv2) or a plain one.

    Deformable: a plain 3x3 convolution predicts, per output pixel, 2 offsets (dy, dx) for each of the 9 kernel taps
    and 9 modulation logits; it is zero-initialised, so training starts from a regular grid with every tap weighted
    ``sigmoid(0) = 0.5``. GroupNorm rather than BatchNorm because segmentation batches are small per device.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, deformable: bool = True, dilation: int = 1) -> None:
        super().__init__()
        self.deformable = deformable
        kw = dict(kernel_size=3, padding=dilation, dilation=dilation)
        if deformable:
            self.offset = nn.Conv2d(in_channels, 3 * 9, **kw)  # 18 offsets + 9 modulation logits
            self.conv = DeformConv2d(in_channels, out_channels, bias=False, **kw)
        else:
            self.register_module("offset", None)
            self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kw)
        self.norm = group_norm(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.offset is not None:
            nn.init.zeros_(self.offset.weight)
            nn.init.zeros_(self.offset.bias)
        self.norm.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if self.offset is not None:
            o = self.offset(x)  # (B, 27, H, W)
            x = self.conv(x, o[:, :18], o[:, 18:].sigmoid())  # offsets (B, 18, H, W), mask (B, 9, H, W)
        else:
            x = self.conv(x)
        return self.act(self.norm(x))


class SemanticHead(nn.Module):
    """UPSNet's semantic head: one sub-network of ``num_layers`` 3x3 (deformable) conv blocks, shared across the
    pyramid levels, each level's output upsampled (bilinear) to the stride-4 grid, the four concatenated and a 1x1
    convolution classifying every pixel.

    The authors' sub-network keeps the FPN width until its second-to-last layer; here the first layer already
    reduces to ``channels`` (128 in the paper), which cuts the cost at stride 4 by about half at equal depth.

    Args:
        in_channels: FPN width. num_classes: K. channels: width per level (fused features: ``4 * channels``).
        num_layers: conv blocks in the shared sub-network (the authors' default 3). deformable: DCNv2 or plain convs.

    Shapes:
        ``[p2 (B, C, H/4, W/4), p3, p4, p5]`` -> ``logits (B, K, H/4, W/4)``, ``features (B, 4 * channels, H/4, W/4)``.
    """

    def __init__(self, in_channels: int, num_classes: int, *, channels: int = 128, num_layers: int = 3,
                 deformable: bool = True, num_levels: int = 4) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"SemanticHead: num_layers must be at least 1, got {num_layers}")
        self.num_levels = num_levels
        self.subnet = nn.Sequential(*(
            ConvNormAct(in_channels if i == 0 else channels, channels, deformable=deformable)
            for i in range(num_layers)
        ))
        self.classifier = nn.Conv2d(num_levels * channels, num_classes, kernel_size=1)
        self.out_channels = num_levels * channels
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for block in self.subnet:
            block.reset_parameters()
        nn.init.normal_(self.classifier.weight, std=0.01)  # as the authors: near-uniform class scores at the start
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        if len(feats) != self.num_levels:
            raise ValueError(f"SemanticHead: expected {self.num_levels} pyramid levels, got {len(feats)}")
        size = feats[0].shape[-2:]
        outs = [self.subnet(f) for f in feats]  # the same weights on every level
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        fused = torch.cat(outs, dim=1)  # (B, 4 * channels, H/4, W/4)
        return self.classifier(fused), fused


class InstanceHead(nn.Module):
    """Mask R-CNN over FPN levels from torchvision's components: RPN on ``p2..p6``, box and mask heads on
    ``p2..p5`` through multi-scale RoIAlign.

    Args:
        in_channels: FPN width. num_classes: thing classes + 1 (index 0 = background, torchvision's convention).
        anchor_sizes: one anchor size per level p2..p6 (pixels); aspect_ratios: per anchor position.
        rpn_pre_nms_top_n, rpn_post_nms_top_n: proposals kept per image, ``(training, testing)``.
        rpn_batch_size, box_batch_size: sampled anchors / RoIs per image for the losses.
        box_head_dim: width of the two-layer MLP box head. mask_head_dim, mask_head_layers: the mask FCN.
        score_thresh, nms_thresh, detections_per_img: box post-processing at inference.

    ``forward(features, image_size, targets)``: features ``{"p2".."p6": (B, C, h, w)}``; targets (training) a list of
    ``{"boxes": (M, 4) float xyxy pixels, "labels": (M,) int64 in 1..num_classes-1, "masks": (M, H, W) uint8}``.
    Returns ``(detections, losses)``: detections (inference) per image ``{"boxes" (N, 4), "labels" (N,), "scores"
    (N,)}``; losses (training) ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``,
    ``loss_mask``.
    """

    levels = ("p2", "p3", "p4", "p5")

    def __init__(self, in_channels: int, num_classes: int, *,
                 anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
                 aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
                 rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000),
                 rpn_post_nms_top_n: tuple[int, int] = (2000, 1000),
                 rpn_batch_size: int = 256, box_batch_size: int = 512,
                 box_head_dim: int = 1024, mask_head_dim: int = 256, mask_head_layers: int = 4,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"InstanceHead: num_classes counts the background, so it must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        anchors = AnchorGenerator(sizes=tuple((s,) for s in anchor_sizes),
                                  aspect_ratios=(tuple(aspect_ratios),) * len(anchor_sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(in_channels, len(aspect_ratios)),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=rpn_batch_size, positive_fraction=0.5,
            pre_nms_top_n=dict(training=rpn_pre_nms_top_n[0], testing=rpn_pre_nms_top_n[1]),
            post_nms_top_n=dict(training=rpn_post_nms_top_n[0], testing=rpn_post_nms_top_n[1]),
            nms_thresh=0.7,
        )
        self.roi_heads = RoIHeads(
            box_roi_pool=MultiScaleRoIAlign(list(self.levels), output_size=7, sampling_ratio=2),
            box_head=TwoMLPHead(in_channels * 7 * 7, box_head_dim),
            box_predictor=FastRCNNPredictor(box_head_dim, num_classes),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=box_batch_size, positive_fraction=0.25,
            bbox_reg_weights=None, score_thresh=score_thresh, nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            mask_roi_pool=MultiScaleRoIAlign(list(self.levels), output_size=14, sampling_ratio=2),
            mask_head=MaskRCNNHeads(in_channels, [mask_head_dim] * mask_head_layers, 1),
            mask_predictor=MaskRCNNPredictor(mask_head_dim, mask_head_dim, num_classes),
        )

    def forward(self, features: OrderedDict[str, Tensor], image_size: tuple[int, int],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        first = next(iter(features.values()))
        batch = first.shape[0]
        # The RPN's anchor generator reads only the padded batch size and dtype from ImageList.tensors; an empty
        # (B, 0, H, W) tensor says that without holding the images (the backbone may be shared and ran already).
        images = ImageList(first.new_empty((batch, 0, *image_size)), [tuple(image_size)] * batch)
        proposals, rpn_losses = self.rpn(images, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, images.image_sizes, targets)
        detections = [{k: d[k] for k in ("boxes", "labels", "scores")} for d in detections]
        return detections, {**rpn_losses, **roi_losses}

    def mask_logits(self, features: OrderedDict[str, Tensor], boxes: list[Tensor], labels: list[Tensor],
                    image_size: tuple[int, int]) -> list[Tensor]:
        """Mask logits of given boxes for their classes: per image ``(N_i, 28, 28)`` (boxes in image pixels, labels
        in ``1..num_classes-1``). Used by the panoptic head on detections and, in training, on ground-truth boxes."""
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            first = next(iter(features.values()))
            return [first.new_zeros((0, 28, 28)) for _ in boxes]
        heads = self.roi_heads
        x = heads.mask_roi_pool(features, boxes, [tuple(image_size)] * len(boxes))  # (sum N, C, 14, 14)
        logits = heads.mask_predictor(heads.mask_head(x))  # (sum N, num_classes, 28, 28)
        labels_all = torch.cat(labels)
        picked = logits[torch.arange(len(labels_all), device=logits.device), labels_all]  # (sum N, 28, 28)
        return list(picked.split(counts))
