"""The image stream: a timm classifier used as a feature extractor, or the segmenter's own backbone when shared.

Both encoders keep timm's contract: ``forward_features(x) -> tokens (B, T, C)``, ``forward_head(tokens,
pre_logits=True) -> (B, C)`` and ``num_features``. Tokens are what cross-attention fusion attends from; the pooled
vector is what every other fusion uses::

    >>> enc = ImageEncoder("swin_tiny_patch4_window7_224", img_size=(128, 128))
    >>> tokens = enc.forward_features(torch.rand(2, 3, 128, 128))  # (2, 16, 768): a 4x4 map of stride 32
    >>> enc.forward_head(tokens).shape
    torch.Size([2, 768])

Layouts (converted once, here):

- ViT-style (``num_prefix_tokens``): timm returns ``(B, P + h*w, C)``; the tokens are kept as they are, prefix
  (class / register) tokens included, so ``forward_head`` pools exactly as the pretrained model does (class token or
  average, per its ``global_pool``) and cross-attention may use the class token as one more query.
- Swin (``output_fmt = 'NHWC'``): ``(B, h, w, C) -> (B, h*w, C)``.
- CNNs such as ResNet (NCHW): ``(B, C, h, w) -> (B, h*w, C)``.

For the two grid layouts ``forward_head`` views the ``T`` tokens as a ``1 x T`` grid in the model's own layout and
calls timm's head: every timm global pool (avg, max, avgmax, catavgmax) ignores where on the grid a token sits, so this
equals pooling the original ``h x w`` map.

Sizes: ViT and Swin are built with ``img_size`` (timm resamples the position embedding of pretrained weights and sizes
Swin's windows and masks for it); families that do not take the argument (CNNs) work at any size anyway.
"""

from __future__ import annotations

import logging
from typing import Any

import timm
import torch
from torch import Tensor, nn

from twostream.config import ImageEncoderConfig
from twostream.models.timm_weights import local_weights_overlay, weights_mismatch

__all__ = ["FeatureMapEncoder", "ImageEncoder", "build_image_encoder", "create_timm_classifier"]


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


class _MissingKeyLog(logging.Handler):
    """Collects timm's "Missing keys (...)" report: timm loads a headless model non-strictly and only logs it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.missing: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Missing keys ("):
            self.missing += [k.strip() for k in message[len("Missing keys ("):].split(")", 1)[0].split(",")]


def create_timm_classifier(name: str, *, pretrained: bool = False, pretrained_path: str = "",
                           img_size: tuple[int, int] | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, num_classes=0, ...)``: a headless classifier, with the project's two ways of loading
    weights (timm's download, or a local file through timm so its checkpoint conversion and position-embedding
    resampling apply) and ``img_size`` passed where the family takes it.

    Raises:
        ValueError: ``name`` is not a timm model, or ``pretrained_path`` does not hold weights of that model.
        FileNotFoundError: ``pretrained_path`` does not exist.
    """
    if not timm.is_model(name):
        close = timm.list_models(f"{name.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"image encoder '{name}' is not a timm model{hint}")
    pretrained, overlay = local_weights_overlay(pretrained, pretrained_path, what="image encoder",
                                                config_key="model.image_encoder.pretrained_path")
    args = dict(pretrained=pretrained, pretrained_cfg_overlay=overlay, num_classes=0, **kwargs)
    # timm loads into a headless model with strict=False (the classifier is dropped) and only logs what was missing;
    # listen for that report, so that a file of another model fails here instead of training from random weights.
    timm_log, missing = logging.getLogger("timm.models._builder"), _MissingKeyLog()
    level = timm_log.level
    timm_log.setLevel(min(level or logging.INFO, logging.INFO))
    timm_log.addHandler(missing)
    try:
        try:
            model = timm.create_model(name, **args, **({"img_size": tuple(img_size)} if img_size else {}))
        except TypeError as e:
            if img_size is None or "img_size" not in str(e):
                raise
            model = timm.create_model(name, **args)  # CNNs take no img_size and need none
    except RuntimeError as e:
        error = weights_mismatch(e, pretrained_path, name, what="image encoder", choice="name")
        if error is None:
            raise
        raise error from e
    finally:
        timm_log.removeHandler(missing)
        timm_log.setLevel(level)
    if pretrained and missing.missing:
        source = pretrained_path or "timm's pretrained weights"
        raise ValueError(f"image encoder weights in {source} do not fit timm model '{name}' ({len(missing.missing)} "
                         f"tensors missing, e.g. '{missing.missing[0]}'); save them from "
                         f"timm.create_model('{name}').state_dict() or pick the matching name")
    return model


def _layout(model: nn.Module) -> str:
    """``"NLC"`` (token sequence), ``"NHWC"`` (Swin) or ``"NCHW"`` (CNNs): what ``model.forward_features`` returns."""
    if getattr(model, "output_fmt", "NCHW") == "NHWC":
        return "NHWC"
    if hasattr(model, "num_prefix_tokens"):
        return "NLC"
    return "NCHW"


# --------------------------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------------------------


class ImageEncoder(nn.Module):
    """A timm classifier without its classifier: images in ``[0, 1]`` -> tokens and a pooled embedding.

    Args:
        name: any timm model name (``swin_tiny_patch4_window7_224``, ``vit_small_patch16_224``, ``resnet50``, ...).
        pretrained: timm's own weights (downloads on first use).
        pretrained_path: or a local weights file of the same timm model.
        img_size: ``(H, W)`` the model will see; passed to families that take it (ViT, Swin).
        drop_path_rate: stochastic depth rate.

    Shapes:
        - **input:** ``(B, 3, H, W)`` float RGB in ``[0, 1]``; normalised inside with the weights' own mean/std
          (``pretrained_cfg``), kept as buffers ``pixel_mean``/``pixel_std`` ``(1, 3, 1, 1)``.
        - **forward_features:** ``(B, T, token_dim)``; **forward_head / forward:** ``(B, num_features)``.
    """

    def __init__(self, name: str, *, pretrained: bool = False, pretrained_path: str = "",
                 img_size: tuple[int, int] | None = None, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.model = create_timm_classifier(name, pretrained=pretrained, pretrained_path=pretrained_path,
                                            img_size=img_size, drop_path_rate=drop_path_rate)
        self.layout = _layout(self.model)
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        # Not persistent: they follow from the model name, so checkpoints stay loadable if timm's cfg changes.
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.token_dim = int(self.model.num_features)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))

    @property
    def num_features(self) -> int:
        """Width of the pooled embedding (timm's ``head_hidden_size``, the pre-logits width)."""
        return int(getattr(self.model, "head_hidden_size", self.model.num_features))

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> normalised with the weights' mean/std."""
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def forward_features(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> tokens ``(B, T, token_dim)`` (see the module docstring for ``T``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"ImageEncoder({self.name}): expected images of shape (B, 3, H, W), "
                             f"got {tuple(images.shape)}")
        feats = self.model.forward_features(self.normalize(images))
        expected_ndim = 3 if self.layout == "NLC" else 4
        if feats.ndim != expected_ndim:
            raise ValueError(f"ImageEncoder({self.name}): timm returned features of shape {tuple(feats.shape)}, "
                             f"not the {self.layout} layout its attributes suggest; use a ViT, Swin or CNN model")
        if self.layout == "NHWC":
            return feats.flatten(1, 2)  # (B, h, w, C) -> (B, h*w, C)
        if self.layout == "NCHW":
            return feats.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, C, h*w) -> (B, h*w, C)
        return feats  # (B, P + h*w, C)

    def forward_head(self, tokens: Tensor, pre_logits: bool = True) -> Tensor:
        """``(B, T, token_dim)`` -> ``(B, num_features)`` through timm's own pooling (and norm, for ViTs).

        ``pre_logits`` is accepted for timm's signature; the classifier is removed, so both values give features.
        """
        b, t, c = tokens.shape
        if self.layout == "NHWC":
            feats = tokens.view(b, 1, t, c)  # (B, T, C) -> (B, 1, T, C): a 1 x T grid, NHWC
        elif self.layout == "NCHW":
            feats = tokens.transpose(1, 2).reshape(b, c, 1, t)  # (B, T, C) -> (B, C, 1, T): a 1 x T grid, NCHW
        else:
            feats = tokens
        return self.model.forward_head(feats, pre_logits=True)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> pooled ``(B, num_features)``."""
        return self.forward_head(self.forward_features(images))

    def extra_repr(self) -> str:
        return f"name={self.name}, layout={self.layout}, num_features={self.num_features}"


class FeatureMapEncoder(nn.Module):
    r"""The image stream of a shared backbone: the segmenter's C5 map -> tokens and a pooled embedding.

    With ``model.shared_backbone`` the segmenter's backbone runs once per batch and its stride-32 map (C5) is the
    image stream's input instead of a second timm model's. A token-wise LayerNorm and projection adapt it (the backbone
    itself is trained for segmentation, and frozen unless the segmenter is trainable):

    .. math::
        \mathbf{t}_p = \mathbf{W}\,\mathrm{LN}(\mathbf{c}_p) + \mathbf{b}, \qquad
        \mathbf{v} = \frac{1}{hw} \sum_p \mathbf{t}_p

    Args:
        in_channels: channels of C5 (``segmenter.backbone.out_channels[-1]``).
        dim: token / embedding width; ``None`` keeps ``in_channels``.

    Shapes:
        - **forward_features:** ``(B, in_channels, h, w)`` -> ``(B, h*w, dim)``.
        - **forward_head:** ``(B, T, dim)`` -> ``(B, dim)``.
    """

    def __init__(self, in_channels: int, dim: int | None = None) -> None:
        super().__init__()
        self.in_channels, self.dim = in_channels, dim or in_channels
        self.norm = nn.LayerNorm(in_channels)
        self.proj = nn.Linear(in_channels, self.dim)
        self.token_dim = self.dim

    @property
    def num_features(self) -> int:
        return self.dim

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.proj.reset_parameters()

    def forward_features(self, c5: Tensor) -> Tensor:
        """``(B, C, h, w)`` NCHW -> ``(B, h*w, dim)``."""
        tokens = c5.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, C, h*w) -> (B, h*w, C)
        return self.proj(self.norm(tokens))

    def forward_head(self, tokens: Tensor, pre_logits: bool = True) -> Tensor:
        """``(B, T, dim)`` -> mean over tokens ``(B, dim)``."""
        return tokens.mean(dim=1)

    def forward(self, c5: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(c5))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, dim={self.dim}"


# --------------------------------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------------------------------


def build_image_encoder(cfg: ImageEncoderConfig, img_size: tuple[int, int] | None = None) -> ImageEncoder:
    """The timm :class:`ImageEncoder` ``cfg`` names, sized for images of ``img_size`` ``(H, W)``."""
    return ImageEncoder(cfg.name, pretrained=cfg.pretrained, pretrained_path=cfg.pretrained_path,
                        img_size=img_size, drop_path_rate=cfg.drop_path_rate)
