"""Published Hugging Face segmentation checkpoints as the project's segmenter.

Any semantic-segmentation checkpoint (SegFormer, UperNet, BEiT, DPT, ...: ``AutoModelForSemanticSegmentation``) or
mask-classification checkpoint (Mask2Former, MaskFormer: ``AutoModelForUniversalSegmentation``) stands where UPSNet
stands, by hub name (``nvidia/segformer-b0-finetuned-ade-512-512``) or local folder (``save_pretrained`` output)::

    >>> seg = hf_segmenter_from_pretrained("nvidia/segformer-b0-finetuned-ade-512-512", ade20k150())
    >>> seg(images)["sem_logits"].shape  # images (B, 3, H, W) in [0, 1]
    torch.Size([B, 151, H, W])

Preprocessing is the checkpoint's own image processor, re-expressed as differentiable tensor ops so a batch stays on
its device (:class:`ImagePreprocessor`): the processor's resize (fixed ``height x width``, or ``shortest_edge`` /
``longest_edge`` keeping the aspect ratio, rounded up to ``size_divisor``; its resample filter, antialiased like
torchvision), its ``rescale_factor`` and its ``image_mean`` / ``image_std`` (in whatever units the processor uses:
``[0, 1]`` inputs are first scaled to the processor's 0..255 pixel values). Batches are same-sized, so the
processor's pad-to-largest never pads. Processor features that would crop or pad (``do_center_crop``,
``keep_aspect_ratio``, ``ensure_multiple_of``) are refused with a clear error rather than approximated.

Postprocessing gives per-class logits at input size: semantic models' ``logits`` are upsampled bilinearly (as in
``post_process_semantic_segmentation``); mask-classification models combine ``softmax(class_queries)[..., :-1]``
with ``sigmoid(mask_queries)`` (mask logits first upsampled to input size) into per-class scores
``s (B, C, H, W) >= 0`` exactly as their ``post_process_semantic_segmentation`` does, and return ``log(s)``, so that
argmax is the checkpoint's own prediction and softmax is ``s`` normalised per pixel.

Labels are aligned by name (:mod:`twostream.models.label_alignment`): an ADE20K-150 checkpoint (``0 = wall``) maps
channel ``i`` to project label ``i + 1`` and never predicts ``other``; a checkpoint with another label set keeps its
own table. ``trainable: true`` fine-tunes the whole model: with targets, ``"losses"`` holds ``loss_sem``, the
pixel-averaged cross-entropy of ``sem_logits`` with ``other``, labels no checkpoint channel feeds and ignored pixels
unsupervised, which equals the checkpoint's own cross-entropy on its channels.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twostream.config import SegmenterConfig
from twostream.data.classes import IGNORE_INDEX, ClassTable, ade20k150
from twostream.models.label_alignment import ALIGN_MIN_FRACTION, LOW_LOGIT, LabelAlignment, align_labels
from twostream.models.segmenter_base import Segmenter, content_hash, json_hash

__all__ = [
    "MASK_CLASSIFICATION_TYPES",
    "HFSegmenter",
    "ImagePreprocessor",
    "build_hf_segmenter",
    "hf_segmenter_from_pretrained",
    "mask_classification_scores",
    "preprocessor_from_hf",
    "supported_model_types",
]

log = logging.getLogger(__name__)

MASK_CLASSIFICATION_TYPES = ("mask2former", "maskformer")  # class queries x mask queries, then the null class
# Where a model's fused decoder features are: the input of this submodule (its per-pixel classifier), (B, C, h, w).
_FEATURE_MODULES = {"segformer": "decode_head.classifier", "upernet": "decode_head.classifier"}
# PIL resample codes (what processors store) -> F.interpolate modes; Lanczos has no torch kernel: bicubic is the
# closest (transformers' own torchvision backend falls back the same way on GPU).
_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}
_INSTALL = "pip install 'twostream[hf]' (or: pip install transformers)"


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def _resize_keep_ratio(h: int, w: int, shortest: int, longest: int | None) -> tuple[int, int]:
    """The processors' ``shortest_edge`` / ``longest_edge`` rule (transformers ``get_size_with_aspect_ratio``)."""
    raw = None
    if longest is not None:
        lo, hi = float(min(h, w)), float(max(h, w))
        if hi / lo * shortest > longest:
            raw = longest * lo / hi
            shortest = round(raw)
    if (h <= w and h == shortest) or (w <= h and w == shortest):
        return h, w
    if w < h:
        return (int(raw * h / w) if raw is not None else int(shortest * h / w)), shortest
    return shortest, (int(raw * w / h) if raw is not None else int(shortest * w / h))


def mask_classification_scores(class_logits: Tensor, mask_logits: Tensor, size: tuple[int, int],
                               alignment: LabelAlignment | None = None) -> Tensor:
    """Mask2Former / MaskFormer semantic scores, as their ``post_process_semantic_segmentation``.

    Args:
        class_logits: ``(B, Q, C + 1)`` per-query class logits; the last class is "no object".
        mask_logits: ``(B, Q, h, w)`` per-query mask logits.
        size: ``(H, W)`` output size; mask logits are upsampled (bilinear) before the sigmoid.
        alignment: if given, class probabilities are first mapped onto ``alignment.table`` (scores are linear in
            them, so this equals mapping the scores; folded classes add up).
    Returns:
        ``(B, C, H, W)`` (or ``(B, K, H, W)``) scores ``sum_q p(c | q) * sigmoid(mask_q)``, in ``[0, Q]``.
    """
    probs = class_logits.softmax(dim=-1)[..., :-1]  # (B, Q, C): drop the null class
    if alignment is not None:
        probs = alignment.to_table_probs(probs)  # (B, Q, K)
    masks = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False).sigmoid()  # (B, Q, H, W)
    return torch.einsum("bqc,bqhw->bchw", probs, masks)


def _semantic_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Pixel-averaged cross-entropy, ``IGNORE_INDEX`` unsupervised; 0 (not NaN) when no pixel is supervised."""
    loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / (target != IGNORE_INDEX).sum().clamp(min=1)


def _size_get(size: Any, key: str) -> int | None:
    """A processor's ``size`` entry: a dict (transformers 4) or a ``SizeDict`` (transformers 5)."""
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def _resample_mode(resample: Any) -> str:
    if resample is None:
        return "bilinear"
    value = getattr(resample, "value", resample)  # PILImageResampling enum, int, or torchvision InterpolationMode
    if isinstance(value, str):
        return {"nearest-exact": "nearest", "lanczos": "bicubic", "box": "bilinear",
                "hamming": "bilinear"}.get(value, value)
    return _RESAMPLE.get(int(value), "bilinear")


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------


class ImagePreprocessor(nn.Module):
    """An image processor's resize + rescale + normalise as differentiable tensor ops.

    ``images (B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, h, w)`` model input ``((255 * x * rescale) - mean) / std``.

    Args:
        size: fixed ``(h, w)`` output, or ``None``.
        shortest_edge, longest_edge: resize keeping the aspect ratio (used when ``size`` is ``None``).
        size_divisor: round the resized sides up to a multiple of this (Mask2Former: 32); 0 = off.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` (antialiased when shrinking, as torchvision).
        rescale: the processor's ``rescale_factor`` when ``do_rescale``, else 1 (its pixel values are 0..255).
        mean, std: per-channel normalisation in the rescaled units; ``None`` = no normalisation.
        flip_channels: feed BGR (MobileViT processors' ``do_flip_channel_order``).
    """

    def __init__(self, *, size: tuple[int, int] | None = None, shortest_edge: int | None = None,
                 longest_edge: int | None = None, size_divisor: int = 0, interpolation: str = "bilinear",
                 rescale: float = 1 / 255, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 flip_channels: bool = False) -> None:
        super().__init__()
        if interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"ImagePreprocessor: interpolation '{interpolation}' is not one of bilinear, bicubic, "
                             "nearest")
        self.size, self.shortest_edge, self.longest_edge = size, shortest_edge, longest_edge
        self.size_divisor, self.interpolation, self.flip_channels = size_divisor, interpolation, flip_channels
        mean_t = torch.tensor(mean if mean is not None else (0.0, 0.0, 0.0), dtype=torch.float32)
        std_t = torch.tensor(std if std is not None else (1.0, 1.0, 1.0), dtype=torch.float32)
        # x in [0, 1] -> processor pixel value 255 x -> rescaled 255 x r -> (255 x r - mean) / std = x * a + b
        self.register_buffer("scale", (255.0 * rescale / std_t).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean_t / std_t).view(1, 3, 1, 1), persistent=False)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """``(h, w)`` the model sees for an ``(H, W)`` input."""
        if self.size is not None:
            oh, ow = self.size
        elif self.shortest_edge is not None:
            oh, ow = _resize_keep_ratio(h, w, self.shortest_edge, self.longest_edge)
        else:
            oh, ow = h, w
        if self.size_divisor:
            d = self.size_divisor
            oh, ow = math.ceil(oh / d) * d, math.ceil(ow / d) * d
        return int(oh), int(ow)

    def forward(self, images: Tensor) -> Tensor:
        size = self.output_size(*images.shape[-2:])
        x = images
        if size != tuple(images.shape[-2:]):
            kwargs = {} if self.interpolation == "nearest" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=size, mode=self.interpolation, **kwargs)
        if self.flip_channels:
            x = x.flip(1)
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def extra_repr(self) -> str:
        geometry = (f"size={self.size}" if self.size is not None else
                    f"shortest_edge={self.shortest_edge}, longest_edge={self.longest_edge}")
        return f"{geometry}, size_divisor={self.size_divisor}, interpolation={self.interpolation}"


# --------------------------------------------------------------------------------------------------------------------
# The segmenter
# --------------------------------------------------------------------------------------------------------------------


class HFSegmenter(Segmenter):
    """A Hugging Face segmentation model behind the :class:`Segmenter` interface.

    Args:
        model: a ``transformers`` semantic-segmentation model (returns ``logits (B, C, h, w)``) or a
            mask-classification model (returns ``class_queries_logits`` and ``masks_queries_logits``).
        preprocess: the checkpoint's image processor as tensor ops.
        alignment: how its ``C`` channels become labels of ``alignment.table`` (``self.class_table``).
        output: ``"semantic"`` or ``"mask"`` (mask classification), how ``model``'s outputs become logits.
        feature_module: dotted name of the submodule whose input is the fused decoder feature map (the
            ``"features"`` output), or ``None``; mask-classification models use their pixel decoder's output.
        trainable: fine-tune ``model``; frozen (default) keeps it in eval mode without gradients.
        name: the hub name or folder it came from (for messages).

    ``forward(images (B, 3, H, W) in [0, 1], targets=None) -> dict``: ``"sem_logits" (B, K, H, W)``,
    ``"features" (B, C_f, H/4, W/4)`` where the architecture has them, and ``"losses": {"loss_sem"}`` when
    ``targets = {"sem_seg": (B, H, W) int64 in self.class_table, 255 = ignore}`` is given and ``trainable``.
    """

    kind = "hf"
    spec_form = "hf:NAME"
    resizes_input = True  # the checkpoint's own processor resizes

    def __init__(self, model: nn.Module, *, preprocess: ImagePreprocessor, alignment: LabelAlignment,
                 output: Literal["semantic", "mask"] = "semantic", feature_module: str | None = None,
                 trainable: bool = False, name: str = "") -> None:
        super().__init__()
        if output not in ("semantic", "mask"):
            raise ValueError(f"HFSegmenter: output '{output}' is not one of semantic, mask")
        self.model, self.preprocess, self.alignment = model, preprocess, alignment
        self.class_table: ClassTable = alignment.table
        self.output, self.trainable, self.name = output, trainable, name
        self._features: list[Tensor] = []
        self._feature_dim: int | None = None
        if feature_module is not None:
            module = model.get_submodule(feature_module)
            module.register_forward_pre_hook(self._capture_features)
            # the per-pixel classifier is a 1x1 convolution: its input width is the features' width
            self._feature_dim = int(module.in_channels) if isinstance(module, nn.Conv2d) else None
        self.model.requires_grad_(trainable)
        if not trainable:
            self.model.eval()

    @property
    def feature_dim(self) -> int | None:
        """Channels of ``"features"`` where the architecture's classifier input is known (SegFormer, UperNet)."""
        return self._feature_dim

    def _capture_features(self, _module: nn.Module, args: tuple) -> None:
        self._features.append(args[0])  # the classifier's input: fused decoder features (B, C_f, h, w)

    def train(self, mode: bool = True) -> HFSegmenter:
        super().train(mode)
        if not self.trainable:
            self.model.eval()  # frozen: dropout and batch statistics stay as published
        return self

    def forward(self, images: Tensor, targets: dict | None = None) -> dict:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"HFSegmenter: expected images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            self._features.clear()
            outputs = self.model(pixel_values=self.preprocess(images))
            if self.output == "semantic":
                # map channels at the model's resolution, then upsample once: both are linear, so the order is
                # free, and the full-resolution tensor is written once
                table = self.alignment.to_table(outputs.logits)  # (B, K, h', w')
                sem_logits = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=False)
                features = self._features[-1] if self._features else None
            else:
                scores = mask_classification_scores(outputs.class_queries_logits, outputs.masks_queries_logits,
                                                    (h, w), alignment=self.alignment)  # (B, K, H, W)
                # log scores: argmax is the checkpoint's own prediction, softmax is s normalised per pixel
                unsourced = self.alignment.unsourced.to(scores.device)[None, :, None, None]
                sem_logits = scores.clamp_min(1e-6).log().masked_fill(unsourced, LOW_LOGIT)
                features = getattr(outputs, "pixel_decoder_last_hidden_state", None)
            self._features.clear()
            out: dict = {"sem_logits": sem_logits}
            if features is not None:
                out["features"] = F.interpolate(features, size=(max(1, h // 4), max(1, w // 4)), mode="bilinear",
                                                align_corners=False)
            if targets is not None and self.trainable:
                target = self.alignment.table_targets(targets["sem_seg"])
                out["losses"] = {"loss_sem": _semantic_loss(sem_logits, target)}
        return out

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, output={self.output}, classes={len(self.class_table)} "
                f"({self.class_table.name}), trainable={self.trainable}")

    # ---- construction and identity (the Segmenter contract) --------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: SegmenterConfig, class_table: ClassTable) -> HFSegmenter:
        return build_hf_segmenter(cfg, class_table)

    @classmethod
    def config_from_spec(cls, rest: str, base: SegmenterConfig) -> SegmenterConfig:
        """``hf:NAME``: a hub name or a folder saved with ``save_pretrained``."""
        return dataclasses.replace(base, kind=cls.kind, hf_model=rest)

    @classmethod
    def cache_identity(cls, cfg: SegmenterConfig) -> str:
        """``hf:<hub name>``; for a local folder, a hash of its weight and config files' contents (not its path)."""
        folder = Path(cfg.hf_model)
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
            return "hf:" + json_hash([(p.name, content_hash(p, "model file")) for p in files])
        return f"hf:{cfg.hf_model}"


# --------------------------------------------------------------------------------------------------------------------
# Building from a hub name or folder
# --------------------------------------------------------------------------------------------------------------------


def supported_model_types() -> tuple[str, ...]:
    """``transformers`` model types this adapter runs: every semantic-segmentation type, then mask classification."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES

    return (*MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES, *MASK_CLASSIFICATION_TYPES)


def preprocessor_from_hf(processor: Any) -> ImagePreprocessor:
    """An :class:`ImagePreprocessor` from a loaded ``transformers`` image processor's settings."""
    name = type(processor).__name__
    for flag in ("do_center_crop", "keep_aspect_ratio"):
        if getattr(processor, flag, False):
            raise ValueError(f"hf segmenter: {name} sets {flag}=True, which crops or pads the image; the segmenter "
                             "needs the map of the whole image (set it to false in preprocessor_config.json)")
    if (getattr(processor, "ensure_multiple_of", 1) or 1) > 1:
        raise ValueError(f"hf segmenter: {name} sets ensure_multiple_of={processor.ensure_multiple_of}, which this "
                         "adapter does not reproduce; set it to 1 in preprocessor_config.json")
    size = getattr(processor, "size", None) if getattr(processor, "do_resize", False) else None
    fixed = (_size_get(size, "height"), _size_get(size, "width"))
    shortest, longest = _size_get(size, "shortest_edge"), _size_get(size, "longest_edge")
    if size is not None and None in fixed and shortest is None:
        raise ValueError(f"hf segmenter: {name} size {size} has neither height/width nor shortest_edge")
    divisor = getattr(processor, "size_divisor", None) or getattr(processor, "size_divisibility", None) or 0
    do_norm = getattr(processor, "do_normalize", False)
    return ImagePreprocessor(
        size=fixed if None not in fixed else None,
        shortest_edge=shortest if None in fixed else None,
        longest_edge=longest if None in fixed else None,
        size_divisor=int(divisor) if size is not None else 0,
        interpolation=_resample_mode(getattr(processor, "resample", None)),
        rescale=float(processor.rescale_factor) if getattr(processor, "do_rescale", False) else 1.0,
        mean=tuple(float(v) for v in processor.image_mean) if do_norm else None,
        std=tuple(float(v) for v in processor.image_std) if do_norm else None,
        flip_channels=bool(getattr(processor, "do_flip_channel_order", False)),
    )


def _check_source(name: str) -> None:
    """Reject an empty name and local paths that are not model folders before asking the hub."""
    if not name:
        raise ValueError("hf segmenter: model.segmenter.hf_model is empty; set a hub name (e.g. "
                         "nvidia/segformer-b0-finetuned-ade-512-512) or a folder saved with save_pretrained")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"hf segmenter: '{name}' has no config.json; save the model and its image processor "
                             "there with save_pretrained")
        return
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
    if looks_local:
        raise ValueError(f"hf segmenter: folder '{name}' does not exist (a hub name looks like owner/model)")


def _load_config(name: str):
    from transformers import AutoConfig

    local = Path(name).expanduser().exists()
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        if local:
            raise ValueError(f"hf segmenter: cannot read the model config in '{name}': "
                             f"{str(e).splitlines()[0]}") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OSError(f"hf segmenter: cannot load '{name}' from the Hugging Face hub ({reason[:160]}); weights "
                      "download on first use and are cached (~/.cache/huggingface): connect once, or set "
                      "HF_HUB_OFFLINE=1 with the model cached, or give a local folder saved with save_pretrained"
                      ) from None


def hf_segmenter_from_pretrained(name: str, class_table: ClassTable | None = None, *, trainable: bool = False,
                                 min_fraction: float = ALIGN_MIN_FRACTION) -> HFSegmenter:
    """Load a segmentation checkpoint and its image processor by hub name or folder; align its labels.

    Args:
        name: hub name (``"openmmlab/upernet-swin-tiny"``) or folder holding ``config.json``, the weights and
            ``preprocessor_config.json``.
        class_table: the project's table (default ADE20K-150); the checkpoint's own table replaces it when fewer
            than ``min_fraction`` of its class names match (see :mod:`twostream.models.label_alignment`).
        trainable: fine-tune the model (``"losses"`` with targets); default frozen.

    Raises:
        ImportError: transformers is not installed (the message has the install command).
        OSError: a hub name that cannot be fetched (offline, unknown, gated).
        ValueError: not a segmentation checkpoint, a missing image processor, unsupported preprocessing.
    """
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ImportError(f"the hf segmenter needs transformers: {_INSTALL}") from None
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, AutoModelForUniversalSegmentation

    class_table = class_table if class_table is not None else ade20k150()
    _check_source(name)
    config = _load_config(name)
    model_type = getattr(config, "model_type", "?")
    archs = list(getattr(config, "architectures", None) or [])
    supported = supported_model_types()
    trained_for_segmentation = not archs or any("Segmentation" in a for a in archs)
    if model_type not in supported or not trained_for_segmentation:
        what = f"{model_type} model ({', '.join(archs)})" if archs else f"{model_type} model"
        raise ValueError(f"hf segmenter: '{name}' is a {what}, not a segmentation checkpoint; supported "
                         f"architectures: {', '.join(supported)} (a *ForSemanticSegmentation or "
                         "*ForUniversalSegmentation checkpoint)")
    try:
        processor = AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ValueError(f"hf segmenter: '{name}' has no usable image processor (preprocessor_config.json: "
                         f"{str(e).splitlines()[0][:120]}); save it beside the model with save_pretrained") from None
    output: Literal["semantic", "mask"] = "mask" if model_type in MASK_CLASSIFICATION_TYPES else "semantic"
    auto = AutoModelForUniversalSegmentation if output == "mask" else AutoModelForSemanticSegmentation
    model = auto.from_pretrained(name)
    id2label = {int(k): v for k, v in config.id2label.items()}
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"hf segmenter: '{name}' id2label keys are not 0..{len(id2label) - 1}")
    names = [id2label[i] for i in range(len(id2label))]
    alignment = align_labels(names, class_table, table_name=f"hf:{name}", min_fraction=min_fraction)
    preprocess = preprocessor_from_hf(processor)
    log.info("hf segmenter %s: %s, %d classes -> %s (%d labels), input %s", name, type(model).__name__, len(names),
             alignment.table.name, len(alignment.table), preprocess.extra_repr())
    return HFSegmenter(model, preprocess=preprocess, alignment=alignment, output=output,
                       feature_module=_FEATURE_MODULES.get(model_type), trainable=trainable, name=name)


def build_hf_segmenter(cfg: SegmenterConfig, class_table: ClassTable) -> HFSegmenter:
    """``model.segmenter`` with ``kind: hf`` -> :class:`HFSegmenter` (``hf_model``, ``trainable``)."""
    return hf_segmenter_from_pretrained(cfg.hf_model, class_table, trainable=cfg.trainable)
