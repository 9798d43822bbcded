"""UPSNet-style segmenter (Xiong et al., "UPSNet: A Unified Panoptic Segmentation Network", CVPR 2019).

::

    images (B, 3, H, W) in [0, 1]
      -> backbone (timm ResNet / Swin / ViT, normalises itself)     C2..C5  (B, Ci, H/s, W/s), s = 4, 8, 16, 32
      -> FPN (torchvision)                                           P2..P5  (B, fpn_channels, H/s, W/s)  [+ P6]
      -> semantic head (deformable convs shared across P2..P5)       logits  (B, K, H/4, W/4) -> bilinear to (H, W)
      -> instance head (Mask R-CNN, optional)                        boxes, classes, scores, mask logits
      -> panoptic head (parameter-free, optional)                    (H, W) int32 segment ids + segments_info

The semantic path alone is what the scene graph needs (ADEChallengeData2016 has no instance masks); the instance and
panoptic heads are switched on by passing them (``SegmenterConfig.instance_head`` / ``panoptic_head``) and are
trained with per-image instance targets.

The backbone can be shared with the image stream (the ``shares_backbone`` capability of the
:class:`~twostream.models.segmenter_base.Segmenter` contract): ``forward_features`` runs the backbone alone and
``forward_from_features`` the rest, so a two-stream model computes the pyramid once. Its trained weights are a
segmentation-stage checkpoint of this project (``weights_from_checkpoint``), which is also its cache identity.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from twostream.config import SegmenterConfig
from twostream.data.classes import IGNORE_INDEX, ClassTable
from twostream.models.backbones import Backbone, build_backbone
from twostream.models.panoptic import PanopticHead, stuff_and_thing_ids
from twostream.models.segmenter_base import Segmenter, content_hash
from twostream.models.upsnet_heads import InstanceHead, SemanticHead

__all__ = ["UPSNet", "build_upsnet", "semantic_loss"]


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def semantic_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Pixel-averaged cross-entropy, ``IGNORE_INDEX`` (255) unsupervised; 0 (not NaN) when nothing is supervised.

    Args:
        logits: ``(B, K, H, W)``. target: ``(B, H, W)`` int64 in ``0..K-1`` or 255.
    """
    loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / (target != IGNORE_INDEX).sum().clamp(min=1)


def _boxes_from_masks(masks: Tensor) -> Tensor:
    """``(M, H, W)`` bool -> ``(M, 4)`` float pixel-edge boxes ``(x1, y1, x2 + 1, y2 + 1)`` of each mask."""
    if len(masks) == 0:
        return torch.zeros((0, 4), device=masks.device)
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # (M, H), (M, W)
    h, w = masks.shape[-2:]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, h).amin(dim=1)
    y2 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    x1 = torch.where(cols, ar_w, w).amin(dim=1)
    x2 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    return torch.stack([x1, y1, x2, y2], dim=1).float()


# --------------------------------------------------------------------------------------------------------------------
# The segmenter
# --------------------------------------------------------------------------------------------------------------------


class UPSNet(Segmenter):
    """UPSNet: backbone + FPN + deformable semantic head [+ Mask R-CNN instance head [+ panoptic head]].

    Args:
        backbone: a :class:`~twostream.models.backbones.Backbone` (images in [0, 1] -> C2..C5).
        class_table: the label set of the semantic logits (K = ``len(class_table)``); its ``stuff`` flags decide
            which classes the instance head detects (the non-stuff ones except the background label).
        fpn_channels: FPN width. head_channels: semantic head width per level. head_layers: its conv blocks.
        deformable: deformable (modulated, DCNv2) convolutions in the semantic head, else plain 3x3 convolutions.
        instance_head: an :class:`InstanceHead` with ``num_classes = number of thing classes + 1``, or ``None``.
        panoptic_head: a :class:`PanopticHead` (needs the instance head), or ``None``.
        sem_loss_weight, panoptic_loss_weight: multipliers of those losses (the detection losses have weight 1;
            the authors' COCO recipe used 0.2 and 0.1 with the instance head; 1.0 suits semantic-only training).

    ``forward(images, targets=None) -> dict`` (the :class:`Segmenter` contract):
        images ``(B, 3, H, W)`` in [0, 1], H and W divisible by 32.
        targets: ``{"sem_seg": (B, H, W) int64 (255 ignored)}`` and, for the instance head in training,
            ``"instances"``: per image ``{"masks": (M, H, W) bool/uint8, "labels": (M,) int64 label ids of thing
            classes, "boxes": (M, 4) float xyxy pixels (optional; derived from the masks)}``.
    Returns:
        ``"sem_logits"`` ``(B, K, H, W)``; ``"features"`` ``(B, 4 * head_channels, H/4, W/4)``;
        with the instance head in eval mode ``"instances"``: per image ``{"boxes" (N, 4), "labels" (N,) label ids,
        "scores" (N,)}`` and, with the panoptic head, ``"panoptic"``: per image ``(panoptic_map (H, W) int32,
        segments_info)``; with ``targets``: ``"losses"``: ``loss_sem`` and, when training with the instance head,
        ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``, ``loss_mask`` (and
        ``loss_panoptic`` with the panoptic head). Each loss is already weighted; the total is their sum.
    """

    kind = "upsnet"
    spec_form = "upsnet:CHECKPOINT"
    shares_backbone = True
    stride = 32  # its pyramid's coarsest level (C5 / P5)
    weights_from_checkpoint = True

    def __init__(self, *, backbone: Backbone, class_table: ClassTable, fpn_channels: int = 256,
                 head_channels: int = 128, head_layers: int = 3, deformable: bool = True,
                 instance_head: InstanceHead | None = None, panoptic_head: PanopticHead | None = None,
                 sem_loss_weight: float = 1.0, panoptic_loss_weight: float = 0.1) -> None:
        super().__init__()
        self.class_table = class_table
        stuff_ids, thing_ids = stuff_and_thing_ids(class_table)
        if instance_head is not None and instance_head.num_classes != len(thing_ids) + 1:
            raise ValueError(f"UPSNet: the instance head has {instance_head.num_classes} classes but the class table "
                             f"{class_table.name} has {len(thing_ids)} thing classes (+1 background)")
        if panoptic_head is not None:
            if instance_head is None:
                raise ValueError("UPSNet: the panoptic head needs the instance head (model.segmenter.instance_head)")
            if panoptic_head.stuff_ids != stuff_ids or panoptic_head.thing_ids != thing_ids:
                raise ValueError(f"UPSNet: the panoptic head's stuff/thing split does not match class table "
                                 f"{class_table.name}; build it from stuff_and_thing_ids(class_table)")
        self.backbone = backbone
        self.fpn = FeaturePyramidNetwork(
            backbone.out_channels, fpn_channels, extra_blocks=LastLevelMaxPool() if instance_head is not None else None
        )
        self.semantic_head = SemanticHead(fpn_channels, len(class_table), channels=head_channels,
                                          num_layers=head_layers, deformable=deformable)
        self.instance_head = instance_head
        self.panoptic_head = panoptic_head
        self.sem_loss_weight, self.panoptic_loss_weight = sem_loss_weight, panoptic_loss_weight
        # label id <-> instance-head class (1..T; 0 = background, -1 = not a thing class)
        to_det = torch.full((len(class_table),), -1, dtype=torch.long)
        to_det[torch.tensor(thing_ids, dtype=torch.long)] = torch.arange(1, len(thing_ids) + 1)
        self.register_buffer("label_to_det", to_det, persistent=False)
        self.register_buffer("det_to_label", torch.tensor([-1, *thing_ids], dtype=torch.long), persistent=False)

    @property
    def feature_dim(self) -> int:
        """Channels of ``"features"`` (the fused semantic-head map)."""
        return self.semantic_head.out_channels

    @property
    def backbone_dim(self) -> int:
        """Channels of C5, the map the image stream reads with a shared backbone."""
        return int(self.backbone.out_channels[-1])

    # ---- the two halves --------------------------------------------------------------------------------------------

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """The backbone alone: ``(B, 3, H, W)`` in [0, 1] -> ``[C2, C3, C4, C5]`` NCHW (``backbone.out_channels``)."""
        h, w = images.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"UPSNet: image size ({h}, {w}) must be divisible by 32 (the pyramid goes to stride 32); "
                             "resize or pad the images (data.image_size)")
        return self.backbone(images)

    def _pyramid(self, feats: list[Tensor]) -> OrderedDict[str, Tensor]:
        out = self.fpn(OrderedDict((f"c{i + 2}", f) for i, f in enumerate(feats)))
        names = ["p2", "p3", "p4", "p5", "p6"]
        return OrderedDict((names[i], v) for i, v in enumerate(out.values()))  # P2..P5 (+ P6 = "pool")

    def _semantic(self, pyramid: OrderedDict[str, Tensor], image_size: tuple[int, int]) -> tuple[Tensor, ...]:
        logits4, fused = self.semantic_head([pyramid[k] for k in ("p2", "p3", "p4", "p5")])
        if not torch.is_grad_enabled():
            # Inference: channels-last logits make the upsampling and the class argmax (over C) contiguous, 2x
            # faster on CPU with identical values. Training keeps NCHW, where cross-entropy's backward is faster.
            logits4 = logits4.contiguous(memory_format=torch.channels_last)
        logits = F.interpolate(logits4, size=tuple(image_size), mode="bilinear", align_corners=False)
        return logits, logits4, fused

    def forward_from_features(self, feats: list[Tensor], image_size: tuple[int, int],
                              targets: dict | None = None) -> dict:
        """Everything after the backbone; ``feats`` from :meth:`forward_features`, ``image_size`` = ``(H, W)``."""
        image_size = (int(image_size[0]), int(image_size[1]))
        pyramid = self._pyramid(feats)
        sem_logits, logits4, fused = self._semantic(pyramid, image_size)
        out: dict = {"sem_logits": sem_logits, "features": fused}
        losses: dict[str, Tensor] = {}
        if targets is not None:
            sem_seg = targets["sem_seg"]
            if sem_seg.shape != (sem_logits.shape[0], *image_size):
                raise ValueError(f"UPSNet: targets['sem_seg'] has shape {tuple(sem_seg.shape)}, expected "
                                 f"{(sem_logits.shape[0], *image_size)} (B, H, W)")
            losses["loss_sem"] = self.sem_loss_weight * semantic_loss(sem_logits, sem_seg)
        if self.instance_head is not None:
            if self.training and targets is not None:
                losses.update(self._instance_losses(pyramid, image_size, targets, logits4))
            elif not self.training:
                out.update(self._instance_inference(pyramid, image_size, sem_logits))
            # training without targets (e.g. a frozen segmenter in train mode): the semantic outputs only
        if targets is not None:
            out["losses"] = losses
        return out

    def forward(self, images: Tensor, targets: dict | None = None) -> dict:
        return self.forward_from_features(self.forward_features(images), images.shape[-2:], targets)

    def segment(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, K, H, W)`` class logits; the semantic path only (no detection)."""
        pyramid = self._pyramid(self.forward_features(images))
        return self._semantic(pyramid, images.shape[-2:])[0]

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, H, W)`` int64 labels; the semantic path only (no detection)."""
        return self.segment(images).argmax(dim=1)

    # ---- construction and identity (the Segmenter contract) --------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: SegmenterConfig, class_table: ClassTable) -> UPSNet:
        return build_upsnet(cfg, class_table)

    @classmethod
    def config_from_spec(cls, rest: str, base: SegmenterConfig) -> SegmenterConfig:
        """``upsnet:CHECKPOINT``: a segmentation-stage (or classifier) checkpoint of this project."""
        return dataclasses.replace(base, kind=cls.kind, checkpoint=rest)

    @classmethod
    def cache_identity(cls, cfg: SegmenterConfig) -> str:
        """The content hash of the trained checkpoint (``cfg.checkpoint``): retrained weights at the same path get
        another identity."""
        if not cfg.checkpoint:
            raise ValueError("graph cache: graphs from predictions need the segmenter checkpoint "
                             "(model.segmenter.checkpoint=... or --checkpoint), or set graph.cache_dir")
        return content_hash(cfg.checkpoint)

    # ---- instance and panoptic heads -------------------------------------------------------------------------------

    def _instance_targets(self, targets: dict, image_size: tuple[int, int], batch: int) -> list[dict[str, Tensor]]:
        if "instances" not in targets:
            raise ValueError("UPSNet: the instance head needs targets['instances'] (per image masks and labels) in "
                             "training; provide them or set model.segmenter.instance_head=false")
        items = targets["instances"]
        if len(items) != batch:
            raise ValueError(f"UPSNet: targets['instances'] has {len(items)} entries for a batch of {batch}")
        converted = []
        for i, item in enumerate(items):
            masks = item["masks"].to(self.label_to_det.device).bool()
            if masks.ndim != 3 or tuple(masks.shape[-2:]) != image_size:
                raise ValueError(f"UPSNet: instances[{i}]['masks'] has shape {tuple(masks.shape)}, expected "
                                 f"(M, {image_size[0]}, {image_size[1]})")
            labels = item["labels"].to(self.label_to_det.device).long()
            det = self.label_to_det[labels.clamp(0, len(self.label_to_det) - 1)]
            bad = (det < 0) | (labels >= len(self.label_to_det)) | (labels < 0)
            if bad.any():
                label = int(labels[bad][0])
                name = self.class_table.short_name(label) if 0 <= label < len(self.class_table) else "out of range"
                raise ValueError(f"UPSNet: instances[{i}] has label {label} ({name}), not a thing class of "
                                 f"{self.class_table.name}; instances must be countable (non-stuff) classes")
            boxes = item.get("boxes")
            boxes = _boxes_from_masks(masks) if boxes is None else boxes.to(masks.device).float()
            nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # empty masks (e.g. cropped away)
            converted.append({"boxes": boxes[nonempty], "labels": det[nonempty],
                              "masks": masks[nonempty].to(torch.uint8), "class_ids": labels[nonempty]})
        return converted

    def _instance_losses(self, pyramid: OrderedDict[str, Tensor], image_size: tuple[int, int], targets: dict,
                         logits4: Tensor) -> dict[str, Tensor]:
        assert self.instance_head is not None
        inst = self._instance_targets(targets, image_size, logits4.shape[0])
        _, losses = self.instance_head(pyramid, image_size, [{k: t[k] for k in ("boxes", "labels", "masks")}
                                                             for t in inst])
        if self.panoptic_head is not None:
            losses["loss_panoptic"] = self.panoptic_loss_weight * self._panoptic_loss(
                pyramid, image_size, targets["sem_seg"], inst, logits4)
        return losses

    def _panoptic_loss(self, pyramid: OrderedDict[str, Tensor], image_size: tuple[int, int], sem_seg: Tensor,
                       inst: list[dict[str, Tensor]], logits4: Tensor) -> Tensor:
        """The panoptic head's loss on ground-truth boxes at stride 4 (as the authors), averaged over the batch."""
        assert self.panoptic_head is not None and self.instance_head is not None
        head = self.panoptic_head
        keeps = [head.sample_kept(len(t["boxes"]), device=logits4.device) for t in inst]
        mask_logits = self.instance_head.mask_logits(
            pyramid, [t["boxes"][k] for t, k in zip(inst, keeps)], [t["labels"][k] for t, k in zip(inst, keeps)],
            image_size)
        size4 = tuple(logits4.shape[-2:])
        scale = size4[0] / image_size[0]
        sem4 = F.interpolate(sem_seg[:, None].float(), size=size4, mode="nearest")[:, 0].long()  # (B, H/4, W/4)
        total = logits4.new_zeros(())
        for b, (t, keep) in enumerate(zip(inst, keeps)):
            masks4 = F.interpolate(t["masks"][None].float(), size=size4, mode="nearest")[0].bool()  # (M, H/4, W/4)
            total = total + head.loss(logits4[b].float(), sem4[b], t["boxes"] * scale, t["class_ids"], masks4,
                                      mask_logits[b].float(), keep)
        return total / len(inst)

    @torch.no_grad()
    def _instance_inference(self, pyramid: OrderedDict[str, Tensor], image_size: tuple[int, int],
                            sem_logits: Tensor) -> dict:
        assert self.instance_head is not None
        detections, _ = self.instance_head(pyramid, image_size)
        instances = [{"boxes": d["boxes"], "labels": self.det_to_label[d["labels"]], "scores": d["scores"]}
                     for d in detections]
        out: dict = {"instances": instances}
        if self.panoptic_head is not None:
            mask_logits = self.instance_head.mask_logits(pyramid, [d["boxes"] for d in detections],
                                                         [d["labels"] for d in detections], image_size)
            out["panoptic"] = [
                self.panoptic_head(sem_logits[b].float(), inst["boxes"], inst["labels"], inst["scores"],
                                   mask_logits[b].float())
                for b, inst in enumerate(instances)
            ]
        return out


# --------------------------------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------------------------------


def build_upsnet(cfg: SegmenterConfig, class_table: ClassTable) -> UPSNet:
    """Map a :class:`SegmenterConfig` to :class:`UPSNet` (loads backbone weights when asked; not ``cfg.checkpoint``,
    which the engine loads)."""
    backbone = build_backbone(cfg.backbone, pretrained=cfg.pretrained, pretrained_path=cfg.pretrained_path,
                              drop_path_rate=cfg.drop_path_rate)
    stuff_ids, thing_ids = stuff_and_thing_ids(class_table)
    instance_head = (InstanceHead(cfg.fpn_channels, len(thing_ids) + 1, box_head_dim=cfg.box_head_dim,
                                  mask_head_dim=cfg.mask_head_dim, box_batch_size=cfg.roi_batch_size)
                     if cfg.instance_head else None)
    panoptic_head = (PanopticHead(stuff_ids=stuff_ids, thing_ids=thing_ids, background=class_table.background)
                     if cfg.panoptic_head else None)
    return UPSNet(backbone=backbone, class_table=class_table, fpn_channels=cfg.fpn_channels,
                  head_channels=cfg.head_channels, deformable=cfg.deformable, instance_head=instance_head,
                  panoptic_head=panoptic_head)
