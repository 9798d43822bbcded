"""Where in the image: Grad-CAM (pytorch-grad-cam) on the image stream, with the graph stream held fixed.

The target layer is the image encoder's last feature stage, found from timm's ``feature_info`` (``layer4`` of a
ResNet, ``layers.3`` of a Swin, ``blocks.11`` of a ViT-S/16), and for the shared backbone the adapter's token
LayerNorm over the segmenter's C5 map. Token maps are reshaped to ``(B, C, h, w)`` for pytorch-grad-cam (its
``reshape_transform``):

- ViT (``NLC``): the prefix (class / register) tokens are dropped and the ``h * w`` patch tokens laid on their grid.
  The target is the last block's ``norm1``: with class-token pooling only the class token's row of the last block's
  output reaches the head, so gradients at the patch tokens appear only before the last attention (the choice of
  pytorch-grad-cam's ViT tutorial).
- Swin (``NHWC``): ``(B, h, w, C) -> (B, C, h, w)``.
- CNNs (``NCHW``): as they are.

The map is Grad-CAM's (ReLU of the gradient-weighted channel sum), resized to the model's input by pytorch-grad-cam
and min-max normalised per image to ``[0, 1]``; the predictor then crops the content box and resizes it to the
photo's own size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from twostream.explain.streams import StreamEmbeddings, classify, encode_image

__all__ = ["ImageStreamModule", "cam_target", "image_cam"]


class ImageStreamModule(nn.Module):
    """``forward(images (B, 3, H, W)) -> logits (B, num_scenes)``: ``model`` with its graph stream held fixed
    (``graph``: the batch's ``graph_pooled``, ``node_emb``, ``node_batch``; empty for an image-only model)."""

    def __init__(self, model: nn.Module, graph: StreamEmbeddings | None = None, c5: Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.graph = graph or StreamEmbeddings()
        self.c5 = c5  # a shared backbone's C5 of the images, when the caller has it (the backbone then runs once)
        self.grid: tuple[int, int] = (1, 1)  # (h, w) of the target layer's token map, set by every forward

    def forward(self, images: Tensor) -> Tensor:
        enc = self.model.image_encoder
        if not self.model.shared_backbone and enc.layout == "NLC":
            h, w = self.model.encoder_input(images).shape[-2:]  # the image encoder's own input size
            ph, pw = enc.model.patch_embed.patch_size
            self.grid = (h // ph, w // pw)
        if self.model.shared_backbone:
            # the frozen backbone runs without gradients (on the segmenter's input); its C5 map becomes the leaf the
            # CAM's gradients flow to
            c5 = self.c5 if self.c5 is not None else self.model.backbone_features(images)[-1]  # (B, C, h, w)
            self.grid = tuple(c5.shape[-2:])
            tokens = enc.forward_features(c5.detach().requires_grad_())  # (B, h*w, C)
            pooled = enc.forward_head(tokens)
        else:
            pooled, tokens = encode_image(self.model, images)
        emb = StreamEmbeddings(image_pooled=pooled, image_tokens=tokens, graph_pooled=self.graph.graph_pooled,
                               node_emb=self.graph.node_emb, node_batch=self.graph.node_batch)
        return classify(self.model, emb)


def cam_target(module: ImageStreamModule) -> tuple[nn.Module, Callable[[Tensor], Tensor] | None, str]:
    """``(target layer, reshape_transform, its name)`` for Grad-CAM on the module's image encoder."""
    from twostream.models.image_encoder import FeatureMapEncoder

    enc = module.model.image_encoder

    def tokens_to_map(prefix: int) -> Callable[[Tensor], Tensor]:
        def reshape(t: Tensor) -> Tensor:
            h, w = module.grid
            b, n, c = t.shape
            if n - prefix != h * w:
                raise ValueError(f"Grad-CAM: {n - prefix} tokens do not fill a {h}x{w} grid")
            return t[:, prefix:].reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, h*w, C) -> (B, C, h, w)
        return reshape

    if isinstance(enc, FeatureMapEncoder):
        return enc.norm, tokens_to_map(0), "image_encoder.norm (shared backbone C5 tokens)"
    info = getattr(enc.model, "feature_info", None)
    if not info:
        raise ValueError(f"Grad-CAM: timm model '{enc.name}' has no feature_info to find its last stage in")
    name = info[-1]["module"]
    layer = enc.model.get_submodule(name)
    if enc.layout == "NLC":
        if hasattr(layer, "norm1"):
            layer, name = layer.norm1, f"{name}.norm1"
        return layer, tokens_to_map(enc.num_prefix_tokens), name
    if enc.layout == "NHWC":
        return layer, lambda t: t.permute(0, 3, 1, 2), name  # (B, h, w, C) -> (B, C, h, w)
    return layer, None, name


def image_cam(model: nn.Module, images: Tensor, graph: StreamEmbeddings | None, targets: Tensor,
              backbone_feats: list[Tensor] | None = None) -> tuple[np.ndarray, str]:
    """Grad-CAM of each image for its scene ``targets (B,)`` -> ``((B, H, W) float32 in [0, 1], target layer)``.
    ``backbone_feats``: a shared backbone's features of ``images``, when the caller has them."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = ImageStreamModule(model, graph, c5=backbone_feats[-1] if backbone_feats is not None else None)
    layer, reshape, name = cam_target(module)
    # Inputs carry the gradient (the model's parameters are frozen while explaining), so the target layer's
    # activations require grad and pytorch-grad-cam's hooks fire.
    cam = GradCAM(model=module, target_layers=[layer], reshape_transform=reshape)
    cam.compute_input_gradient = True
    try:  # not `with`: GradCAM's __exit__ swallows IndexErrors
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets.tolist()])
    finally:
        cam.activations_and_grads.release()
    return np.asarray(maps, dtype=np.float32), name


def resize_cam(cam: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """A CAM of the model's input ``(h, w)`` -> the photo: crop the content ``box (top, left, height, width)``
    and resize bilinearly to ``size (H, W)``; values stay in ``[0, 1]``."""
    import torch.nn.functional as F

    top, left, ch, cw = box
    crop = torch.from_numpy(np.ascontiguousarray(cam[top:top + ch, left:left + cw]))[None, None]
    out = F.interpolate(crop, size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return out.clamp(0, 1).numpy().astype(np.float32)
