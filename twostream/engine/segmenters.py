"""Segmenters ready to predict, from a ``model.segmenter`` config or a ``--segmenter`` spec.

What differs between kinds is what their class declares (:class:`~twostream.models.segmenter_base.Segmenter`):
a kind whose weights come from a twostream checkpoint (``weights_from_checkpoint``, UPSNet) is loaded from it with
its run's own config; any other kind is built by its class (its builder loads the published weights it names), frozen.
No kind name appears here.
"""

from __future__ import annotations

import dataclasses

import torch

from twostream.config import Config, DataConfig, GraphConfig, SegmenterConfig, config_from_dict
from twostream.data.classes import ade20k150
from twostream.engine.checkpoint import load_segmenter, load_trained, trained_input_size
from twostream.models.segmenter import SEGMENTERS, parse_segmenter_spec, segmenter_class
from twostream.models.segmenter_base import Segmenter
from twostream.models.segmenter_input import SegmenterInput, segmenter_input

__all__ = ["ready_segmenter", "resolved_input_size", "segmenter_from_spec", "segmenter_geometry"]


def ready_segmenter(cfg: SegmenterConfig, device: str | torch.device = "cpu") -> Segmenter:
    """The segmenter ``cfg`` names, in eval mode on ``device``: from its trained checkpoint (``cfg.checkpoint``) when
    its class declares ``weights_from_checkpoint``, else built by its class, frozen (``trainable=False``).

    Raises:
        ValueError: ``kind: none``, an unknown kind, or a checkpoint-trained kind without ``cfg.checkpoint``.
    """
    if cfg.kind == "none":
        raise ValueError("model.segmenter.kind is 'none': there is no segmenter to run")
    cls = segmenter_class(cfg.kind)
    if cls.weights_from_checkpoint:
        if not cfg.checkpoint:
            raise ValueError(f"segmenter kind '{cfg.kind}' runs from a trained checkpoint: set "
                             f"model.segmenter.checkpoint (or --segmenter {cls.spec_form})")
        return load_segmenter(cfg.checkpoint, device)  # (load_trained resolves a run folder or an export)
    return cls.from_config(dataclasses.replace(cfg, trainable=False), ade20k150()).to(device).eval()


def segmenter_from_spec(spec: str, graph: GraphConfig | None = None) -> tuple[Segmenter, Config, bool]:
    """A ``--segmenter`` spec -> ``(segmenter, config for a predictor, native_size)``.

    A checkpoint-trained kind brings its run's data settings (input size, ``keep_ratio``), the size it was trained
    at as ``model.segmenter.input_size`` and, unless ``graph`` is given, its graph settings; other kinds get the
    default data settings, ``graph`` (or the defaults), and ``native_size`` when their class resizes images itself
    (``resizes_input``). The config's ``model.segmenter`` is the spec's (:func:`segmenter_geometry` reads it).
    """
    seg_cfg = parse_segmenter_spec(spec)
    if seg_cfg.kind == "none":
        forms = ", ".join(c.spec_form for c in SEGMENTERS.values())
        raise ValueError(f"--segmenter none gives no graphs; give {forms}")
    cls = segmenter_class(seg_cfg.kind)
    if cls.weights_from_checkpoint:
        ckpt = load_trained(seg_cfg.checkpoint)  # read once: the weights and the run's config
        source, raw = ckpt["path"], ckpt["config"]
        segmenter = load_segmenter(ckpt)
        run = config_from_dict(raw, source=f"{source} (config)")
        # it segments at the size it was trained at (its run's input_size, else its data.image_size)
        seg_cfg = dataclasses.replace(seg_cfg, checkpoint=str(source), input_size=trained_input_size(raw))
        cfg = dataclasses.replace(Config(), data=run.data, graph=graph or run.graph,
                                  model=dataclasses.replace(Config().model, segmenter=seg_cfg))
        return segmenter, cfg, False
    segmenter = ready_segmenter(seg_cfg)
    cfg = dataclasses.replace(Config(), data=DataConfig(), graph=graph or GraphConfig(),
                              model=dataclasses.replace(Config().model, segmenter=seg_cfg))
    return segmenter, cfg, cls.resizes_input


def resolved_input_size(seg: SegmenterConfig) -> SegmenterConfig:
    """``seg`` with ``input_size: null`` resolved from its trained checkpoint, when its kind has one
    (:func:`~twostream.engine.checkpoint.trained_input_size`); otherwise as it is."""
    if seg.input_size is not None or seg.kind == "none" or not seg.checkpoint or \
            not segmenter_class(seg.kind).weights_from_checkpoint:
        return seg
    trained = load_trained(seg.checkpoint, weights=False)["config"]
    return dataclasses.replace(seg, input_size=trained_input_size(trained))


def segmenter_geometry(cfg: Config, segmenter: Segmenter) -> SegmenterInput:
    """Where ``segmenter`` (built from ``cfg.model.segmenter``) segments: ``model.segmenter.input_size`` (``null``:
    the size its checkpoint was trained at) with ``keep_ratio`` / ``max_size``, padded to its class's stride
    (:func:`~twostream.models.segmenter_input.segmenter_input`)."""
    return segmenter_input(resolved_input_size(cfg.model.segmenter), cfg.data, type(segmenter))

