"""timm backbones as multi-scale NCHW feature pyramids for dense prediction.

Every backbone takes RGB images in ``[0, 1]``, normalises them with the mean/std its weights were trained with (timm's
pretrained config, kept as buffers), and returns four NCHW maps at strides 4, 8, 16 and 32 (C2..C5)::

    >>> backbone = build_backbone("resnet50", pretrained=False)
    >>> [f.shape for f in backbone(torch.rand(2, 3, 128, 96))]
    [(2, 256, 32, 24), (2, 512, 16, 12), (2, 1024, 8, 6), (2, 2048, 4, 3)]
    >>> backbone.out_channels, backbone.strides
    ([256, 512, 1024, 2048], [4, 8, 16, 32])

Families (the name -> family table is :data:`BACKBONE_FAMILIES`):

- ``resnet*``: timm ``features_only`` stages 1..4, already NCHW.
- ``swin_*``: timm Swin returns NHWC maps (``output_fmt = 'NHWC'``); each gets a LayerNorm (as Swin detection and
  segmentation backbones do) and is converted to NCHW once, here.
- ``vit_*``: a plain ViT has one stride-16 map; a ViTDet-style simple pyramid (Li et al., ECCV 2022) makes strides
  4 and 8 with transposed convolutions and stride 32 with max-pooling.

Any input whose sides are divisible by 32 works: Swin and ViT are built with ``dynamic_img_size=True`` (the position
embedding is interpolated and attention masks are built for the actual size on each forward), and Swin always
partitions into its 7x7 windows and shifts (``always_partition=True``), padding as needed, so it behaves the same at
every resolution instead of shrinking its windows to whatever size it happened to be built at.

Weights: ``pretrained=True`` is timm's own loading (downloads on first use); ``pretrained_path`` loads a local file
holding the state dict of the timm model of the same name (``.pth``, ``.bin`` or ``.safetensors``), through timm so its
checkpoint conversion and position-embedding resampling apply.
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from twostream.models.timm_weights import local_weights_overlay, weights_mismatch

__all__ = [
    "BACKBONE_FAMILIES",
    "Backbone",
    "ResNetBackbone",
    "SimplePyramid",
    "SwinBackbone",
    "ViTBackbone",
    "backbone_family",
    "build_backbone",
]

PYRAMID_STRIDES = [4, 8, 16, 32]


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def create_timm_features(name: str, *, pretrained: bool = False, pretrained_path: str = "", **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, features_only=True, **kwargs)`` with the project's two ways of loading weights.

    Raises:
        ValueError: ``name`` is not a timm model, or ``pretrained_path`` does not hold weights of that model.
        FileNotFoundError: ``pretrained_path`` does not exist.
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.8)
        hint = f"; similar: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ValueError(f"backbone '{name}' is not a timm model{hint}")
    pretrained, overlay = local_weights_overlay(pretrained, pretrained_path, what="backbone",
                                                config_key="model.segmenter.pretrained_path")
    try:
        return timm.create_model(name, pretrained=pretrained, pretrained_cfg_overlay=overlay, features_only=True,
                                 **kwargs)
    except RuntimeError as e:
        error = weights_mismatch(e, pretrained_path, name, what="backbone", choice="backbone name")
        if error is None:
            raise
        raise error from e


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------


class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid: one stride-16 map -> strides 4, 8, 16, 32.

    Stride 4: two 2x2 stride-2 transposed convolutions (``dim -> dim/2 -> dim/4``, LayerNorm + GELU between);
    stride 8: one (``dim -> dim/2``); stride 16: the map itself; stride 32: 2x2 max-pooling. The FPN that follows
    brings every level to a common width.

    Shapes:
        input ``(B, dim, H/16, W/16)`` -> ``[(B, dim/4, H/4, W/4), (B, dim/2, H/8, W/8), (B, dim, H/16, W/16),
        (B, dim, H/32, W/32)]``
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"SimplePyramid: the ViT width {dim} must be divisible by 4")
        self.out_channels = [dim // 4, dim // 2, dim, dim]
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)
        self.down2 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.up4(x), self.up2(x), x, self.down2(x)]


# --------------------------------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------------------------------


class Backbone(nn.Module):
    """Base class: ``(B, 3, H, W)`` RGB in [0, 1] -> ``[C2, C3, C4, C5]``, ``Ci`` of shape
    ``(B, out_channels[i], H / strides[i], W / strides[i])``; H and W divisible by 32.

    Attributes:
        out_channels: channels of each level; strides: ``[4, 8, 16, 32]``; mean, std: the RGB normalisation of
            the weights (timm's pretrained config), also registered as ``(1, 3, 1, 1)`` buffers
            ``pixel_mean``/``pixel_std``.
    """

    out_channels: list[int]
    strides: list[int]

    def __init__(self, *, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.strides = list(PYRAMID_STRIDES)
        # Not persistent: they follow from the backbone name, so checkpoints stay loadable if timm's cfg changes.
        self.register_buffer("pixel_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> normalised with the weights' mean/std."""
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def forward(self, images: Tensor) -> list[Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__}: expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        return self.forward_pyramid(self.normalize(images))

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, strides={self.strides}"


def _mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


class ResNetBackbone(Backbone):
    """timm ResNet (any ``resnet*``): stages 1..4 (C2..C5) at strides 4..32, NCHW.

    Args:
        name: timm model name, e.g. ``resnet50``.
        pretrained: timm's ImageNet weights. pretrained_path: or a local weights file.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``channels``, ``stem_width`` for tiny test models).
    """

    def __init__(self, name: str, *, pretrained: bool = False, pretrained_path: str = "", **timm_kwargs: Any) -> None:
        body = create_timm_features(name, pretrained=pretrained, pretrained_path=pretrained_path,
                                    out_indices=(1, 2, 3, 4), **timm_kwargs)
        mean, std = _mean_std(body)
        super().__init__(mean=mean, std=std)
        if body.feature_info.reduction() != PYRAMID_STRIDES:
            raise ValueError(f"backbone '{name}': stages 1..4 have strides {body.feature_info.reduction()}, "
                             f"expected {PYRAMID_STRIDES}; use a plain ResNet (output_stride=32)")
        self.body = body
        self.out_channels = list(body.feature_info.channels())

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        return list(self.body(x))


class SwinBackbone(Backbone):
    """timm Swin Transformer (``swin_*``): stages 0..3 at strides 4..32, LayerNorm per level, NHWC -> NCHW.

    Args:
        name: timm model name, e.g. ``swin_tiny_patch4_window7_224``.
        pretrained, pretrained_path: as :class:`ResNetBackbone`.
        img_size: the size the model is built for (default: timm's, 224); any size divisible by 32 runs.
        **timm_kwargs: e.g. ``embed_dim``, ``depths``, ``num_heads`` for tiny test models, ``drop_path_rate``.
    """

    def __init__(self, name: str, *, pretrained: bool = False, pretrained_path: str = "",
                 img_size: int | tuple[int, int] | None = None, **timm_kwargs: Any) -> None:
        if img_size is not None:
            timm_kwargs["img_size"] = img_size
        body = create_timm_features(name, pretrained=pretrained, pretrained_path=pretrained_path,
                                    out_indices=(0, 1, 2, 3), dynamic_img_size=True, always_partition=True,
                                    **timm_kwargs)
        mean, std = _mean_std(body)
        super().__init__(mean=mean, std=std)
        self.body = body
        self.out_channels = list(body.feature_info.channels())
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in self.out_channels)

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        # timm Swin stages are NHWC: (B, H/s, W/s, C) -> LayerNorm over C -> (B, C, H/s, W/s)
        return [norm(f).permute(0, 3, 1, 2).contiguous() for norm, f in zip(self.norms, self.body(x))]


class ViTBackbone(Backbone):
    """timm Vision Transformer (``vit_*``): the last block's stride-16 map through a :class:`SimplePyramid`.

    Args:
        name: timm model name, e.g. ``vit_small_patch16_224`` (patch size 16).
        pretrained, pretrained_path: as :class:`ResNetBackbone`.
        img_size: the size the position embedding is built for (default: timm's); it is interpolated at run time.
        **timm_kwargs: e.g. ``depth``, ``embed_dim``, ``num_heads``, ``drop_path_rate``.
    """

    def __init__(self, name: str, *, pretrained: bool = False, pretrained_path: str = "",
                 img_size: int | tuple[int, int] | None = None, **timm_kwargs: Any) -> None:
        if img_size is not None:
            timm_kwargs["img_size"] = img_size
        # out_indices=(-1,): the last block, as NCHW (B, C, H/16, W/16); the final norm and head are pruned
        body = create_timm_features(name, pretrained=pretrained, pretrained_path=pretrained_path,
                                    out_indices=(-1,), dynamic_img_size=True, **timm_kwargs)
        mean, std = _mean_std(body)
        super().__init__(mean=mean, std=std)
        if body.feature_info.reduction() != [16]:
            raise ValueError(f"backbone '{name}': patch stride {body.feature_info.reduction()[0]}, the simple pyramid "
                             "needs patch size 16 (e.g. vit_small_patch16_224)")
        self.body = body
        self.pyramid = SimplePyramid(body.feature_info.channels()[-1])
        self.out_channels = list(self.pyramid.out_channels)

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        (c4,) = self.body(x)  # (B, C, H/16, W/16)
        return self.pyramid(c4)


# --------------------------------------------------------------------------------------------------------------------
# Name -> family table and builder
# --------------------------------------------------------------------------------------------------------------------

# timm name prefix -> backbone class. Add a family here (one class + one entry).
BACKBONE_FAMILIES: dict[str, type[Backbone]] = {
    "resnet": ResNetBackbone,
    "swin_": SwinBackbone,
    "vit_": ViTBackbone,
}


def backbone_family(name: str) -> str:
    """The :data:`BACKBONE_FAMILIES` key of a timm name (``resnet50`` -> ``resnet``); ValueError if none fits."""
    for prefix in BACKBONE_FAMILIES:
        if name.startswith(prefix):
            return prefix
    known = ", ".join(f"{p}*" for p in BACKBONE_FAMILIES)
    raise ValueError(f"backbone '{name}' is not in a supported family; known: {known} "
                     "(e.g. resnet50, swin_tiny_patch4_window7_224, vit_small_patch16_224)")


def build_backbone(name: str, *, pretrained: bool = False, pretrained_path: str = "", **kwargs: Any) -> Backbone:
    """Build the pyramid backbone for timm model ``name``; ``kwargs`` go to the family class (``img_size``) and on
    to ``timm.create_model`` (architecture overrides such as ``embed_dim``, ``depths``, ``channels``)."""
    cls = BACKBONE_FAMILIES[backbone_family(name)]
    return cls(name, pretrained=pretrained, pretrained_path=pretrained_path, **kwargs)
