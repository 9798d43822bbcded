"""The segmenter table and what is done with it: build a segmenter, read a ``--segmenter`` spec, name a cache identity.

The contract every entry follows is :class:`~twostream.models.segmenter_base.Segmenter` (its own module, imported by
the adapters). A new segmenter kind is one module with one ``Segmenter`` subclass plus one entry in
:data:`SEGMENTERS` (and its name in ``SegmenterConfig.kind``, which a test keeps equal to this table). Optional
dependencies (transformers, detectron2) are imported by the classes' ``from_config`` only, so importing the table
needs neither.
"""

from __future__ import annotations

import dataclasses

from twostream.config import SegmenterConfig
from twostream.data.classes import ClassTable
from twostream.models.d2_segmenter import Detectron2Segmenter
from twostream.models.hf_segmenter import HFSegmenter
from twostream.models.segmenter_base import Segmenter, lacks_capability, predict_labels
from twostream.models.upsnet import UPSNet

__all__ = [
    "SEGMENTERS",
    "Segmenter",
    "build_segmenter",
    "parse_segmenter_spec",
    "predict_labels",
    "require_capability",
    "segmenter_class",
    "segmenter_identity",
]

# kind -> class. ``model.segmenter.kind: none`` (no segmenter) is not a kind of segmenter, so it has no entry.
SEGMENTERS: dict[str, type[Segmenter]] = {
    "upsnet": UPSNet,
    "hf": HFSegmenter,
    "detectron2": Detectron2Segmenter,
}


def segmenter_class(kind: str) -> type[Segmenter]:
    """The class of segmenter ``kind``; one line listing the known kinds otherwise."""
    if kind not in SEGMENTERS:
        raise ValueError(f"unknown segmenter kind '{kind}'; known: {', '.join(SEGMENTERS)}")
    return SEGMENTERS[kind]


def require_capability(kind: str, capability: str, needed_by: str) -> type[Segmenter]:
    """The class of ``kind`` when it declares the class-level ``capability`` (``shares_backbone``); else one
    ``ValueError`` line naming the capability, the setting that needs it (``needed_by``) and the kinds that have it.
    (``feature_dim`` may depend on the loaded weights: ask the built segmenter.)"""
    cls = segmenter_class(kind)
    if not getattr(cls, capability):
        able = [k for k, c in SEGMENTERS.items() if getattr(c, capability)]
        raise ValueError(lacks_capability(cls, capability, needed_by) + f"; kinds that do: {', '.join(able) or '-'}")
    return cls


def build_segmenter(cfg: SegmenterConfig, class_table: ClassTable) -> Segmenter:
    """Build the segmenter ``cfg.kind`` names. Does not load a trained checkpoint (``cfg.checkpoint``): the engine does.

    ``class_table`` is the project's table (ADE20K-150); an adapter whose checkpoint has another label set replaces it
    with its own, so read ``segmenter.class_table`` afterwards.
    """
    cls = segmenter_class(cfg.kind)
    segmenter = cls.from_config(cfg, class_table)
    assert isinstance(segmenter, Segmenter), f"{cfg.kind} builder returned {type(segmenter).__name__}"
    return segmenter


def spec_forms() -> str:
    """``"upsnet:CHECKPOINT, hf:NAME, ... or none"``: the ``--segmenter`` forms, for help texts and messages."""
    return ", ".join(cls.spec_form for cls in SEGMENTERS.values()) + " or none"


def parse_segmenter_spec(spec: str, base: SegmenterConfig | None = None) -> SegmenterConfig:
    """A ``--segmenter`` command-line spec -> :class:`SegmenterConfig` (other fields from ``base`` or defaults).

    ``KIND:REST`` goes to ``SEGMENTERS[KIND].config_from_spec(REST, base)``: ``upsnet:CHECKPOINT`` (a segmentation-stage
    checkpoint), ``hf:NAME`` (hub name or folder), ``detectron2:CONFIG[@WEIGHTS]`` (model-zoo name or .yaml file;
    weights path or URL, ``none`` = random init); and ``none``.

        >>> parse_segmenter_spec("detectron2:COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml@model.pkl").d2_weights
        'model.pkl'
    """
    base = base if base is not None else SegmenterConfig()
    kind, sep, rest = spec.strip().partition(":")
    kind, rest = kind.strip().lower(), rest.strip()
    if kind == "none" and not rest:
        return dataclasses.replace(base, kind="none")
    if not sep or not rest or kind not in SEGMENTERS:
        raise ValueError(f"--segmenter '{spec}': expected {spec_forms()}")
    return SEGMENTERS[kind].config_from_spec(rest, base)


def segmenter_identity(cfg: SegmenterConfig) -> str:
    """What graphs built from ``cfg``'s segmenter's predictions depend on (its class's ``cache_identity``): the content
    hash of a trained UPSNet checkpoint; the hub name (or the content of a local folder's weight files) of a Hugging
    Face model; the config, weights and overrides of a detectron2 model. Builds nothing."""
    if cfg.kind == "none":
        raise ValueError("graphs from predictions need a segmenter (a trained UPSNet checkpoint, or "
                         f"model.segmenter.kind {' / '.join(k for k in SEGMENTERS if k != 'upsnet')}); "
                         "model.segmenter.kind is 'none'")
    return segmenter_class(cfg.kind).cache_identity(cfg)
