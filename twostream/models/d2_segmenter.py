"""detectron2 models (Panoptic FPN, semantic FPN, any model returning ``sem_seg`` / ``panoptic_seg``) as the segmenter.

Optional: detectron2 is not on PyPI, and nothing else in twostream imports it. Install it from its repository::

    pip install 'git+https://github.com/facebookresearch/detectron2.git'

A model is named by a detectron2 config (a model-zoo name such as
``COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml``, or a ``.yaml`` file) and weights (a path or URL; empty =
the model zoo's trained weights for a zoo name, else the config's ``MODEL.WEIGHTS``; ``"none"`` = random
initialisation, for tests). It runs frozen, in eval mode, as detectron2's ``DefaultPredictor`` would: RGB ``[0, 1]``
images become 0..255 pixels in ``INPUT.FORMAT`` order, resized so the short side is ``INPUT.MIN_SIZE_TEST`` (long side
at most ``INPUT.MAX_SIZE_TEST``; ``MIN_SIZE_TEST = 0`` keeps the input size); outputs come back at input size.

Class table: from the detectron2 metadata of ``DATASETS.TEST[0]``: thing classes then stuff classes (COCO panoptic:
80 things + 53 stuff; the semantic head's ``things`` channel has no class of its own), behind ``0 = other``, or the
project's ADE20K-150 table when the names align (:mod:`twostream.models.label_alignment`).

Semantic map: where the panoptic output has a segment, that segment's class (log-probability 0, others
:data:`~twostream.models.label_alignment.LOW_LOGIT`); elsewhere (void) the semantic head's log-softmax, its
``things`` channel going to ``other``. The panoptic segments are returned as ``"panoptic"`` for region graphs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twostream.config import SegmenterConfig
from twostream.data.classes import ClassTable, ade20k150
from twostream.models.label_alignment import ALIGN_MIN_FRACTION, LOW_LOGIT, LabelAlignment, align_labels
from twostream.models.segmenter_base import Segmenter, content_hash

__all__ = ["D2_INSTALL", "D2Labels", "Detectron2Segmenter", "build_detectron2_segmenter", "d2_labels_from_metadata",
           "detectron2_segmenter_from_config"]

log = logging.getLogger(__name__)

D2_INSTALL = "pip install 'git+https://github.com/facebookresearch/detectron2.git'"


# --------------------------------------------------------------------------------------------------------------------
# Helpers: labels from metadata
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class D2Labels:
    """How a detectron2 model's contiguous class ids become labels of ``table``.

    Attributes:
        table: the class table of the segmenter's outputs.
        sem_to_label: per ``sem_seg`` channel, its label (the ``things`` channel of Panoptic FPN -> 0, other).
        thing_to_label: per thing id of a panoptic segment (``isthing``), its label.
        stuff_to_label: per stuff id of a panoptic segment (not ``isthing``), its label.
        alignment: the name-matching decision (thing + stuff names against the project table).
    """

    table: ClassTable
    sem_to_label: tuple[int, ...]
    thing_to_label: tuple[int, ...]
    stuff_to_label: tuple[int, ...]
    alignment: LabelAlignment


def d2_labels_from_metadata(metadata: Any, project_table: ClassTable, *,
                            min_fraction: float = ALIGN_MIN_FRACTION) -> D2Labels:
    """Class table and id maps from detectron2 metadata (``thing_classes``, ``stuff_classes``).

    Two layouts exist: *separated* (Panoptic FPN, ``coco_2017_*_panoptic_separated``): ``stuff_classes[0]`` is
    ``"things"`` and segments count things and stuff separately; *unified* (semantic models, ``ade20k_sem_seg_*``,
    ``coco_2017_*_panoptic``): ``stuff_classes`` lists every class and all ids index it.
    """
    name = getattr(metadata, "name", "?")
    things = list(getattr(metadata, "thing_classes", None) or [])
    stuff = list(getattr(metadata, "stuff_classes", None) or [])
    if not stuff:
        raise ValueError(f"detectron2 segmenter: dataset '{name}' has no stuff_classes, so its models predict "
                         "instances only; use a model with a semantic or panoptic output (Panoptic FPN, semantic FPN)")
    if stuff[0] == "things":  # separated: things 0..T-1, then stuff channels 1..S-1
        names = things + stuff[1:]
        flags = [False] * len(things) + [True] * (len(stuff) - 1)
        sem_own = [-1] + [len(things) + c - 1 for c in range(1, len(stuff))]
        thing_own = list(range(len(things)))
        stuff_own = sem_own
    else:  # unified: every id indexes stuff_classes
        names, thing_set = stuff, set(things)
        flags = [n not in thing_set for n in stuff]
        sem_own = thing_own = stuff_own = list(range(len(stuff)))
    alignment = align_labels(names, project_table, table_name=f"d2:{name}", stuff=flags, min_fraction=min_fraction)
    background = alignment.table.background or 0

    def labels(own: Sequence[int]) -> tuple[int, ...]:
        return tuple(alignment.mapping[j] if j >= 0 and alignment.mapping[j] >= 0 else background for j in own)

    return D2Labels(table=alignment.table, sem_to_label=labels(sem_own), thing_to_label=labels(thing_own),
                    stuff_to_label=labels(stuff_own), alignment=alignment)


# --------------------------------------------------------------------------------------------------------------------
# The segmenter
# --------------------------------------------------------------------------------------------------------------------


class Detectron2Segmenter(Segmenter):
    """A built detectron2 model behind the :class:`Segmenter` interface (frozen, eval mode).

    Args:
        model: a detectron2 meta-architecture (``build_model(cfg)``) whose outputs carry ``sem_seg`` and/or
            ``panoptic_seg``.
        labels: id maps and class table (:func:`d2_labels_from_metadata`).
        input_format: ``"BGR"`` or ``"RGB"`` (``cfg.INPUT.FORMAT``).
        min_size, max_size: test-time resize (``cfg.INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``); 0 = keep size.
        name: the config it came from (for messages).

    ``forward(images (B, 3, H, W) in [0, 1], targets=None) -> dict``: ``"sem_logits" (B, K, H, W)`` and, for a
    panoptic model, ``"panoptic"``: per image ``(panoptic_map (H, W) int32, segments_info)`` with segment dicts
    ``id``, ``category_id`` (label in ``self.class_table``), ``isthing``, ``area`` (pixels), ``score`` (things).
    Targets are ignored: the detectron2 segmenter is not trained here.
    """

    kind = "detectron2"
    spec_form = "detectron2:CONFIG[@WEIGHTS]"
    resizes_input = True  # INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, as detectron2's DefaultPredictor

    def __init__(self, model: nn.Module, *, labels: D2Labels, input_format: str = "BGR", min_size: int = 800,
                 max_size: int = 1333, name: str = "") -> None:
        super().__init__()
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"Detectron2Segmenter: input format '{input_format}' is not BGR or RGB")
        self.model, self.labels, self.class_table = model, labels, labels.table
        self.alignment = labels.alignment
        self.input_format, self.min_size, self.max_size, self.name = input_format, min_size, max_size, name
        self.model.requires_grad_(False)
        self.model.eval()
        self.register_buffer("sem_to_label", torch.tensor(labels.sem_to_label, dtype=torch.long), persistent=False)

    def train(self, mode: bool = True) -> Detectron2Segmenter:
        super().train(mode)
        self.model.eval()  # detectron2 models in training mode expect ground-truth instances
        return self

    def model_size(self, h: int, w: int) -> tuple[int, int]:
        """``(h, w)`` the detectron2 model sees (its ``ResizeShortestEdge`` at test time)."""
        if self.min_size <= 0:
            return h, w
        scale = self.min_size / min(h, w)
        nh, nw = (self.min_size, scale * w) if h < w else (scale * h, self.min_size)
        if max(nh, nw) > self.max_size:
            s = self.max_size / max(nh, nw)
            nh, nw = nh * s, nw * s
        return int(nh + 0.5), int(nw + 0.5)

    def _semantic_log_probs(self, sem_seg: Tensor) -> Tensor:
        """``(B, S, H, W)`` semantic-head logits -> ``(B, K, H, W)`` log-probabilities over the table."""
        b, _, h, w = sem_seg.shape
        probs = sem_seg.float().softmax(dim=1)
        table_probs = probs.new_zeros((b, len(self.class_table), h, w))
        table_probs.index_add_(1, self.sem_to_label, probs)  # channels sharing a label (folded) add up
        return torch.where(table_probs > 0, table_probs.clamp_min(1e-30).log(), LOW_LOGIT)

    def _panoptic(self, panoptic_map: Tensor, segments: list[dict]) -> tuple[Tensor, Tensor, list[dict]]:
        """One image: ``(H, W)`` segment ids -> label map ``(H, W)`` (-1 = void) and the segments in table labels."""
        pmap = panoptic_map.to(torch.int64)
        lut = torch.full((int(pmap.max().item()) + 1 if pmap.numel() else 1,), -1, dtype=torch.long,
                         device=pmap.device)
        area = torch.bincount(pmap.flatten(), minlength=len(lut)).tolist()
        out = []
        for seg in segments:
            table = self.labels.thing_to_label if seg.get("isthing") else self.labels.stuff_to_label
            label = int(table[int(seg["category_id"])])
            sid = int(seg["id"])
            if sid < len(lut):
                lut[sid] = label
            info = {"id": sid, "category_id": label, "isthing": bool(seg.get("isthing")),
                    "area": int(seg.get("area", area[sid] if sid < len(area) else 0))}
            if "score" in seg:
                info["score"] = float(seg["score"])
            out.append(info)
        return panoptic_map.to(torch.int32), lut[pmap], out

    @torch.no_grad()
    def forward(self, images: Tensor, targets: dict | None = None) -> dict:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Detectron2Segmenter: expected images (B, 3, H, W) in [0, 1], got "
                             f"{tuple(images.shape)}")
        b, _, h, w = images.shape
        k = len(self.class_table)
        x = images.float() * 255.0
        if self.input_format == "BGR":
            x = x.flip(1)
        size = self.model_size(h, w)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        results = self.model([{"image": x[i], "height": h, "width": w} for i in range(b)])
        has_sem, has_pan = "sem_seg" in results[0], "panoptic_seg" in results[0]
        if not (has_sem or has_pan):
            raise ValueError(f"detectron2 segmenter {self.name}: the model returns {sorted(results[0])}, neither "
                             "sem_seg nor panoptic_seg; use a semantic or panoptic model (e.g. Panoptic FPN)")
        if has_sem:
            logits = self._semantic_log_probs(torch.stack([r["sem_seg"] for r in results]))  # (B, K, H, W)
        else:  # panoptic only: void pixels are 'other'
            logits = images.new_full((b, k, h, w), LOW_LOGIT)
            logits[:, self.class_table.background or 0] = 0.0
        out: dict = {}
        if has_pan:
            panoptic, seg_labels = [], []
            for r in results:
                pmap, labels, segments = self._panoptic(*r["panoptic_seg"])
                panoptic.append((pmap, segments))
                seg_labels.append(labels)
            seg_label = torch.stack(seg_labels)  # (B, H, W), -1 = void
            onehot = F.one_hot(seg_label.clamp(min=0), k).permute(0, 3, 1, 2).bool()  # (B, K, H, W)
            seg_logits = torch.where(onehot, 0.0, LOW_LOGIT).to(logits.dtype)
            logits = torch.where((seg_label >= 0)[:, None], seg_logits, logits)
            out["panoptic"] = panoptic
        out["sem_logits"] = logits
        return out

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, classes={len(self.class_table)} ({self.class_table.name}), "
                f"input={self.input_format}, min_size={self.min_size}, max_size={self.max_size}")

    # ---- construction and identity (the Segmenter contract) --------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: SegmenterConfig, class_table: ClassTable) -> Detectron2Segmenter:
        return build_detectron2_segmenter(cfg, class_table)

    @classmethod
    def config_from_spec(cls, rest: str, base: SegmenterConfig) -> SegmenterConfig:
        """``detectron2:CONFIG[@WEIGHTS]``: a model-zoo name or .yaml file; weights path or URL (``none`` = random)."""
        config, _, weights = rest.partition("@")  # zoo names and config paths carry no '@'; URLs may after it
        return dataclasses.replace(base, kind=cls.kind, d2_config=config.strip(), d2_weights=weights.strip())

    @classmethod
    def cache_identity(cls, cfg: SegmenterConfig) -> str:
        """``d2:<config>@<weights>`` (a weights file by its content hash) plus the config overrides."""
        weights = Path(cfg.d2_weights)
        ident = content_hash(weights) if cfg.d2_weights and weights.is_file() else cfg.d2_weights
        opts = "".join(f" {v}" for v in cfg.d2_opts)
        return f"d2:{cfg.d2_config}@{ident}{opts}"


# --------------------------------------------------------------------------------------------------------------------
# Building from a detectron2 config
# --------------------------------------------------------------------------------------------------------------------


def _import_detectron2() -> None:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        raise ImportError(f"the detectron2 segmenter needs detectron2, which is not on PyPI: {D2_INSTALL}") from None


def _resolve_config(config: str) -> tuple[Any, bool]:
    """A detectron2 ``CfgNode`` from a file or a model-zoo name; and whether it came from the zoo."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    if not config:
        raise ValueError("detectron2 segmenter: model.segmenter.d2_config is empty; set a model-zoo name (e.g. "
                         "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml) or a .yaml config file")
    path = Path(config).expanduser()
    zoo = not path.is_file()
    if zoo:
        try:
            path = Path(model_zoo.get_config_file(config))
        except RuntimeError:
            raise ValueError(f"detectron2 segmenter: '{config}' is neither a config file nor a detectron2 model-zoo "
                             "config (e.g. COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml)") from None
    if path.suffix != ".yaml":
        raise ValueError(f"detectron2 segmenter: '{config}' is a LazyConfig ({path.suffix}); use a .yaml config")
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    return cfg, zoo


def _load_weights(model: nn.Module, weights: str, config: str) -> None:
    from detectron2.checkpoint import DetectionCheckpointer

    try:
        DetectionCheckpointer(model).load(str(Path(weights).expanduser()) if "://" not in weights else weights)
    except (OSError, AssertionError) as e:  # AssertionError: fvcore's "Checkpoint ... not found!" after a download
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OSError(f"detectron2 segmenter: cannot load weights '{weights}' ({reason[:160]}); model-zoo weights "
                      "download on first use (cached in ~/.torch/iopath_cache): connect once, or give a local "
                      ".pkl/.pth file") from None


def detectron2_segmenter_from_config(config: str, weights: str = "", class_table: ClassTable | None = None, *,
                                     opts: Sequence[str] = (),
                                     min_fraction: float = ALIGN_MIN_FRACTION) -> Detectron2Segmenter:
    """Build a detectron2 model, load its weights and wrap it as a segmenter.

    Args:
        config: model-zoo name (``"COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"``) or ``.yaml`` file.
        weights: path or URL; ``""`` = the zoo's trained weights (zoo name) or ``MODEL.WEIGHTS`` (file);
            ``"none"`` = no weights (random initialisation; tests and smoke runs).
        class_table: the project's table (default ADE20K-150), kept when the model's class names align with it.
        opts: detectron2 config overrides, ``["KEY", "VALUE", ...]`` (e.g. ``["INPUT.MIN_SIZE_TEST", "512"]``).

    Raises:
        ImportError: detectron2 is not installed (the message has the install command).
        ValueError: an unknown config, a model without semantic/panoptic output, a missing weights file.
        OSError: weights that cannot be downloaded.
    """
    _import_detectron2()
    from detectron2 import model_zoo
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    class_table = class_table if class_table is not None else ade20k150()
    cfg, zoo = _resolve_config(config)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"  # built on the CPU; .to(device) moves the wrapper and the model together
    if not cfg.DATASETS.TEST:
        raise ValueError(f"detectron2 segmenter: '{config}' names no DATASETS.TEST, so its class names are unknown")
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    labels = d2_labels_from_metadata(metadata, class_table, min_fraction=min_fraction)
    if not weights:
        weights = model_zoo.get_checkpoint_url(config) if zoo else cfg.MODEL.WEIGHTS
        if "ImageNetPretrained" in weights:
            log.warning("detectron2 segmenter %s: MODEL.WEIGHTS %s is an ImageNet backbone, not a trained "
                        "segmenter; set model.segmenter.d2_weights", config, weights)
    if weights.lower() != "none" and "://" not in weights and not Path(weights).expanduser().is_file():
        raise ValueError(f"detectron2 segmenter: weights file '{weights}' not found (for '{config}')")
    model = build_model(cfg)
    if weights.lower() == "none":
        log.warning("detectron2 segmenter %s: no weights (random initialisation)", config)
    else:
        _load_weights(model, weights, config)
    log.info("detectron2 segmenter %s (%s): %d labels (%s), weights %s", config, cfg.MODEL.META_ARCHITECTURE,
             len(labels.table), labels.table.name, weights or "-")
    return Detectron2Segmenter(model, labels=labels, input_format=cfg.INPUT.FORMAT,
                               min_size=int(cfg.INPUT.MIN_SIZE_TEST), max_size=int(cfg.INPUT.MAX_SIZE_TEST),
                               name=config)


def build_detectron2_segmenter(cfg: SegmenterConfig, class_table: ClassTable) -> Detectron2Segmenter:
    """``model.segmenter`` with ``kind: detectron2`` -> :class:`Detectron2Segmenter` (``d2_config``, ``d2_weights``)."""
    if cfg.trainable:
        raise ValueError("detectron2 segmenter: model.segmenter.trainable=true is not supported (detectron2 models "
                         "run frozen here); fine-tune with kind hf or upsnet")
    if len(cfg.d2_opts) % 2:
        raise ValueError(f"model.segmenter.d2_opts: expected KEY, VALUE pairs (an even number of items), got "
                         f"{len(cfg.d2_opts)}: {cfg.d2_opts}")
    return detectron2_segmenter_from_config(cfg.d2_config, cfg.d2_weights, class_table,
                                            opts=[str(v) for v in cfg.d2_opts])
