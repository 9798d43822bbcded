"""Inference throughput of the classifier configs: end to end as one model forward, and stage by stage.

Stages, each timed on its own inputs (the outputs of the stage before, computed once):

- ``segmenter``: the segmenter's forward on the images and the argmax of its logits -> ``(B, H, W)`` label maps (with
  ``shared_backbone``: ``forward_features`` then ``forward_from_features``, so the shared backbone is counted here);
- ``builder``: ``SceneGraphBuilder.build_batch`` on the label maps, ``SceneGraph.to_pyg`` and ``Batch.from_data_list``
  -> the graph batch on the device (what ``TwoStreamClassifier`` does between segmenter and GNN);
- ``gnn``: the graph encoder on that batch;
- ``image_encoder``: ``forward_features`` + ``forward_head`` on the images (with ``shared_backbone``: the adapter on
  the segmenter's C5 map);
- ``fusion_head``: fusion of the two streams' features and the classification head.

:func:`stage_calls` mirrors ``TwoStreamClassifier._forward_features`` with the model's public parts; the benchmark's
test checks that chaining the stages gives the model's own logits, so the two cannot drift apart.

End-to-end times are taken round-robin (one call of each model per round), so a change in machine load during the
run hits every model alike and the two-stream / image-only ratios compare like with like.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from twostream.benchmark.measure import MemoryProbe, Timing, sync, time_calls
from twostream.config import Config, config_to_dict, load_config

log = logging.getLogger(__name__)

__all__ = ["CI_OVERRIDES", "DEFAULT_MODELS", "MODELS_BY_NAME", "STAGES", "InferenceRow", "ModelSpec", "bench_inference",
           "build_spec_model", "compile_dense", "input_size", "spec_config", "stage_calls"]

STAGES = ("segmenter", "builder", "gnn", "image_encoder", "fusion_head")
IMAGE_ONLY = ("model.gnn.enabled=false", "model.fusion.type=none")

# CI sizes: the configs' structure with toy widths and timm's test models (tests/test_two_stream.py uses these too).
CI_OVERRIDES = (
    "model.segmenter.backbone=resnet10t",
    "model.segmenter.fpn_channels=16",
    "model.segmenter.head_channels=8",
    "model.segmenter.deformable=false",
    "model.gnn.hidden_dim=16",
    "model.gnn.heads=2",
    "model.gnn.num_layers=2",
    "model.gnn.class_embed_dim=8",
    "model.fusion.dim=16",
    "model.fusion.rank=8",
)
# timm name prefix -> the test model that stands in for it at CI size (there is no test Swin; test_vit is the closest)
CI_ENCODERS = {"swin_": "test_vit", "vit_": "test_vit", "resnet": "test_resnet"}


# --------------------------------------------------------------------------------------------------------------------
# Specs and results
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One row of the inference table.

    Args:
        name: the row's label.
        config: YAML stem under the config folder (``swin_gat`` -> ``configs/swin_gat.yaml``).
        overrides: extra ``key=value`` overrides (e.g. the image-only variant of a two-stream config).
        baseline: ``name`` of the image-only row this row's latency is divided by (same image encoder and size).
        segmenter_scale: run the segmenter at this multiple of the image size (``model.segmenter.input_size``,
            rounded to a multiple of 32; images are read at that size and shrunk for the image encoder); ``None``:
            the config's own.
    """

    name: str
    config: str
    overrides: tuple[str, ...] = ()
    baseline: str | None = None
    segmenter_scale: float | None = None


DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("image_only_swin", "image_only_swin"),
    ModelSpec("swin_gat", "swin_gat", baseline="image_only_swin"),
    # the ADE20K setting: the segmenter at its 512 px training size, the image encoder at 224 (docs/resolution.md)
    ModelSpec("swin_gat:seg_hires", "swin_gat", baseline="image_only_swin", segmenter_scale=512 / 224),
    ModelSpec("shared_swin_gat", "shared_swin_gat", baseline="image_only_swin"),
    ModelSpec("vit_gcn:image_only", "vit_gcn", IMAGE_ONLY),  # the ratio's baseline: vit_gcn's image stream alone
    ModelSpec("vit_gcn", "vit_gcn", baseline="vit_gcn:image_only"),
    ModelSpec("resnet_sage:image_only", "resnet_sage", IMAGE_ONLY),
    ModelSpec("resnet_sage", "resnet_sage", baseline="resnet_sage:image_only"),
)
MODELS_BY_NAME = {spec.name: spec for spec in DEFAULT_MODELS}


@dataclass
class InferenceRow:
    """Measurements of one model at one batch size (times in seconds per batch)."""

    name: str
    config: str
    batch: int
    image_size: tuple[int, int]
    params: int
    e2e: Timing
    stages: dict[str, Timing] = field(default_factory=dict)  # only the stages the model has
    reused: set[str] = field(default_factory=set)  # stages whose timing is shared with an identical module
    backbone: Timing | None = None  # shared backbone alone (part of the segmenter stage)
    peak_mib: float | None = None
    segmenter: str = ""  # what the segmenter is (for the report's notes)
    segmenter_input: str = ""  # where it segments (model.segmenter.input_size), e.g. "512x512"
    nodes: float | None = None  # mean nodes per graph built from the segmenter's maps
    edges: float | None = None  # mean directed edges per graph
    baseline: str | None = None

    @property
    def two_stream(self) -> bool:
        return "gnn" in self.stages and "image_encoder" in self.stages

    @property
    def stage_sum(self) -> float:
        return sum(t.median for t in self.stages.values())


# --------------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------------


def spec_config(spec: ModelSpec, config_dir: Path, *, size: int | None = None, ci: bool = False,
                extra: Sequence[str] = ()) -> Config:
    """The spec's config without downloads (``pretrained: false``), at ``size`` px when given, CI-sized if ``ci``."""
    path = Path(config_dir) / f"{spec.config}.yaml"
    overrides = ["model.image_encoder.pretrained=false", "model.segmenter.pretrained=false", *spec.overrides]
    if size is not None:
        overrides.append(f"data.image_size=[{size}, {size}]")
    if ci:
        overrides += CI_OVERRIDES
        name = load_config(path, overrides).model.image_encoder.name
        overrides += [f"model.image_encoder.name={tiny}" for prefix, tiny in CI_ENCODERS.items()
                      if name.startswith(prefix)]
    if spec.segmenter_scale is not None:
        h, w = load_config(path, overrides).data.image_size
        seg = [max(32, 32 * round(s * spec.segmenter_scale / 32)) for s in (h, w)]
        overrides.append(f"model.segmenter.input_size=[{seg[0]}, {seg[1]}]")
    return load_config(path, [*overrides, *extra])


def input_size(cfg: Config) -> tuple[int, int]:
    """The size a benchmarked model takes its images at: the larger of its two streams' (its segmenter runs on
    them: :func:`~twostream.models.two_stream.classifier_input_size`)."""
    from twostream.models.two_stream import classifier_input_size

    return classifier_input_size(cfg, segmenter_runs=True)


def build_spec_model(cfg: Config, seed: int = 0) -> nn.Module:
    """``build_model`` for ``cfg`` (10 scenes, ADE20K-150 graphs) from a fixed seed, in eval mode.

    The seed is set before every build, so models whose segmenters share a config get identical segmenter weights
    (``build_model`` builds the segmenter first), which lets one segmenter measurement serve all of them.
    """
    from twostream.data.classes import ade20k150
    from twostream.models.two_stream import build_model

    torch.manual_seed(seed)
    return build_model(cfg, num_scenes=10, class_table=ade20k150()).eval()


def compile_dense(model: nn.Module) -> None:
    """``torch.compile`` the dense modules in place: the segmenter's backbone, FPN and semantic head, and the image
    encoder's timm model. The graph side (builder, GNN, fusion) stays eager: node counts change every batch.

    Every compiled module shares one code object (``Module._call_impl``), whose compiled variants dynamo caps at 8 by
    default; several models in one process need more, or the later ones silently run eager.
    """
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 128))
    seg = getattr(model, "segmenter", None)
    if seg is not None:
        for part in ("backbone", "fpn", "semantic_head"):
            if getattr(seg, part, None) is not None:
                getattr(seg, part).compile()
    enc = getattr(model, "image_encoder", None)
    if enc is None:
        return
    if hasattr(enc, "model"):  # ImageEncoder calls model.forward_features, which module.compile() would not cover
        enc.model.forward_features = torch.compile(enc.model.forward_features)
    else:
        enc.compile()


def _param_signature(module: nn.Module) -> float:
    """A cheap fingerprint of a module's weights (two modules with equal weights have equal signatures)."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(module.parameters())))


# --------------------------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _SegmenterResult:
    timing: Timing
    maps: Tensor  # (B, H, W) int64
    confidence: Tensor  # (B, H, W) float32
    features: Tensor | None  # (B, C, H/4, W/4)


def stage_calls(model: nn.Module, images: Tensor, *, segmenter_cache: dict | None = None,
                timer: Callable[[Callable[[], Any]], Timing] | None = None) -> tuple[dict[str, Callable[[], Any]],
                                                                                      dict[str, Any]]:
    """Per-stage callables of ``model`` on ``images`` ``(B, 3, H, W)``, each bound to its own inputs.

    Every stage runs once here, in order, to produce the next stage's inputs. Returns ``(calls, outputs)``:
    ``calls[stage]()`` re-runs one stage (keys: the stages of :data:`STAGES` the model has, plus ``backbone`` with a
    shared backbone); ``outputs`` holds ``"logits"`` (the head's output, equal to ``model(images)["logits"]``),
    ``"graphs"`` (the graph ``Batch``) and, when ``segmenter_cache`` served the segmenter stage, ``"segmenter_timing"``.

    ``segmenter_cache`` (with ``timer``) lets models with identical segmenters share one segmenter measurement:
    the stage is timed once (by ``timer``) and its label maps reused.
    """
    from torch_geometric.data import Batch

    from twostream.graph.builder import labels_and_confidence
    from twostream.models.segmenter_input import crop_outputs, segmenter_canvas

    calls: dict[str, Callable[[], Any]] = {}
    outputs: dict[str, Any] = {}
    seg = model.segmenter
    backbone_feats: list[Tensor] | None = None
    graph_pooled = node_emb = graphs = None

    if model.shared_backbone:
        calls["backbone"] = lambda: model.backbone_features(images)  # [C2..C5] at the segmenter's size
        backbone_feats = calls["backbone"]()

    if model.graph_encoder is not None:
        if seg is None or model.builder is None:
            raise ValueError("benchmark: a graph stream without a segmenter reads graphs from a cache; benchmark "
                             "configs with model.segmenter.kind=upsnet")

        geometry = model.segmenter_input  # at the segmenter's size: resized, padded to its stride, cropped back

        def segmenter_stage() -> tuple[Tensor, Tensor, Tensor | None]:
            x, content = segmenter_canvas(images, geometry)
            out = (seg.forward_from_features(seg.forward_features(x), x.shape[-2:]) if model.shared_backbone
                   else seg(x))
            out = crop_outputs(out, content)
            # labels and confidence as the model computes them outside training: (B, h, w) each
            return *labels_and_confidence(out["sem_logits"]), out.get("features")  # features (B, C, h/4, w/4)

        calls["segmenter"] = segmenter_stage
        key = None
        if segmenter_cache is not None and timer is not None:
            key = (json.dumps(_segmenter_cfg(model), sort_keys=True), tuple(images.shape), str(geometry),
                   str(images.device), _param_signature(seg))
        if key is not None and key in segmenter_cache:
            cached: _SegmenterResult = segmenter_cache[key]
            maps, confidence, features = cached.maps, cached.confidence, cached.features
            outputs["segmenter_timing"], outputs["segmenter_reused"] = cached.timing, True
        else:
            maps, confidence, features = segmenter_stage()
            if key is not None:
                timing = timer(segmenter_stage)
                segmenter_cache[key] = _SegmenterResult(timing, maps, confidence, features)
                outputs["segmenter_timing"], outputs["segmenter_reused"] = timing, False
        features = features if model.pool_features else None

        def builder_stage():
            graph_list = model.builder.build_batch(maps, features=features, confidence=confidence)
            return Batch.from_data_list([g.to_pyg() for g in graph_list]).to(images.device)

        calls["builder"] = builder_stage
        graphs = builder_stage()
        calls["gnn"] = lambda: model.graph_encoder(graphs)  # (B, Cg), (N, Cg)
        graph_pooled, node_emb = calls["gnn"]()
        outputs["graphs"] = graphs
    elif model.shared_backbone:
        calls["segmenter"] = calls["backbone"]  # an image-only model on the segmenter's backbone

    tokens = image_pooled = None
    if model.image_encoder is not None:
        # the model's own image stream: from C5, or from the images resized to the image encoder's size
        calls["image_encoder"] = lambda: model.encode_image(images, backbone_feats)  # (B, Ci), (B, T, Ci)
        image_pooled, tokens = calls["image_encoder"]()

    node_batch = graphs.batch if graphs is not None else None

    def fusion_head_stage() -> Tensor:
        return model.forward_head(model.fuse(image_pooled, tokens, graph_pooled, node_emb, node_batch))  # (B, S)

    calls["fusion_head"] = fusion_head_stage
    outputs["logits"] = fusion_head_stage()
    return calls, outputs


def _segmenter_cfg(model: nn.Module) -> dict:
    """What decides the segmenter's cost: its class, width settings and parameter shapes."""
    seg = model.segmenter
    return {"class": type(seg).__name__, "shapes": [list(p.shape) for p in seg.parameters()],
            "deformable": [type(m).__name__ for m in seg.modules()].count("DeformConv2d")}


# --------------------------------------------------------------------------------------------------------------------
# The measurement
# --------------------------------------------------------------------------------------------------------------------


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _describe_segmenter(cfg: Config, model: nn.Module) -> str:
    seg = getattr(model, "segmenter", None)
    if seg is None:
        return ""
    s = cfg.model.segmenter
    if s.kind != "upsnet":
        return f"{type(seg).__name__} ({s.kind})"
    blocks = len(seg.semantic_head.subnet)
    conv = "deformable" if s.deformable else "plain"
    return (f"UPSNet on {s.backbone}: FPN of {s.fpn_channels} channels, a semantic head of {blocks} {conv} 3x3 conv "
            f"blocks ({s.head_channels} channels) run on each of P2-P5, {len(seg.class_table)}-class logits at "
            "stride 4 upsampled to full size, argmax")


def bench_inference(specs: Sequence[ModelSpec], config_dir: Path, device: torch.device, *,
                    batch_sizes: Sequence[int] = (1, 8), size: int | None = None, ci: bool = False,
                    warmup: int = 1, iters: int = 5, min_iters: int = 3, budget_s: float = 15.0,
                    bf16: bool = False, compile: bool = False, seed: int = 0,
                    overrides: Sequence[str] = ()) -> tuple[list[InferenceRow], str]:
    """Measure every spec at every batch size; returns the rows (batch-major, specs in order) and the memory method.

    Each model is built once (``pretrained: false``, then ``overrides`` for every model), moved to ``device``, put in
    eval mode; everything runs under ``torch.inference_mode`` (and bf16 autocast with ``bf16``).
    """
    probe = MemoryProbe(device)
    built: list[tuple[ModelSpec, Config, nn.Module]] = []
    for spec in specs:
        cfg = spec_config(spec, config_dir, size=size, ci=ci, extra=overrides)
        log.info("building %s (%s)", spec.name, spec.config)
        model = build_spec_model(cfg, seed).to(device)
        if compile:
            compile_dense(model)
        built.append((spec, cfg, model))

    def timed(fn: Callable[[], Any]) -> Timing:
        return time_calls(fn, device, warmup=warmup, iters=iters, min_iters=min_iters, budget_s=budget_s)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    rows: list[InferenceRow] = []
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode(), autocast:
        for batch in batch_sizes:
            sizes = {input_size(cfg) for _, cfg, _ in built}
            images = {s: torch.rand(batch, 3, *s, generator=generator).to(device) for s in sizes}
            batch_rows = _round_robin(built, images, batch, device, probe, warmup=warmup, iters=iters,
                                      min_iters=min_iters, budget_s=budget_s)
            segmenter_cache: dict = {}
            encoder_cache: dict[str, Timing] = {}
            for (spec, cfg, model), row in zip(built, batch_rows):
                log.info("stages of %s at batch %d", spec.name, batch)
                _time_stages(model, cfg, images[input_size(cfg)], row, timed, segmenter_cache,
                             encoder_cache)
            rows += batch_rows
    return rows, probe.method


def _round_robin(built: list[tuple[ModelSpec, Config, nn.Module]], images: dict[tuple, Tensor], batch: int,
                 device: torch.device, probe: MemoryProbe, *, warmup: int, iters: int, min_iters: int,
                 budget_s: float) -> list[InferenceRow]:
    """End-to-end timing: warm-up (the last warm-up call measures memory), then rounds of one call per model."""
    rows = []
    for spec, cfg, model in built:
        x = images[input_size(cfg)]
        log.info("warming up %s at batch %d", spec.name, batch)
        for _ in range(max(warmup, 1) - 1):
            model(x)
        probe.start()
        model(x)
        peak = probe.stop()
        rows.append(InferenceRow(name=spec.name, config=spec.config, batch=batch,
                                 image_size=tuple(cfg.data.image_size), params=_count_params(model), e2e=Timing(),
                                 peak_mib=peak, baseline=spec.baseline, segmenter=_describe_segmenter(cfg, model),
                                 segmenter_input=str(model.segmenter_input) if model.segmenter is not None else ""))
    spent = 0.0
    for r in range(iters):
        for (_, cfg, model), row in zip(built, rows):
            x = images[input_size(cfg)]
            sync(device)
            t0 = time.perf_counter()
            model(x)
            sync(device)
            row.e2e.add(time.perf_counter() - t0)
            spent += row.e2e.times[-1]
        log.info("batch %d: end-to-end round %d done (%.0f s)", batch, r + 1, spent)
        if r + 1 >= min(min_iters, iters) and spent > budget_s * len(built):
            break
    return rows


def _time_stages(model: nn.Module, cfg: Config, images: Tensor, row: InferenceRow,
                 timed: Callable[[Callable[[], Any]], Timing], segmenter_cache: dict,
                 encoder_cache: dict[str, Timing]) -> None:
    calls, outputs = stage_calls(model, images, segmenter_cache=segmenter_cache, timer=timed)
    for stage in STAGES:
        if stage not in calls:
            continue
        if stage == "segmenter" and "segmenter_timing" in outputs:
            row.stages[stage] = outputs["segmenter_timing"]
            if outputs["segmenter_reused"]:
                row.reused.add(stage)
            continue
        if stage == "image_encoder" and not model.shared_backbone:
            key = json.dumps([config_to_dict(cfg.model.image_encoder), list(images.shape)], sort_keys=True)
            if key in encoder_cache:
                row.stages[stage] = encoder_cache[key]
                row.reused.add(stage)
                continue
            row.stages[stage] = encoder_cache[key] = timed(calls[stage])
            continue
        row.stages[stage] = timed(calls[stage])
    if "backbone" in calls:
        row.backbone = timed(calls["backbone"])
    graphs = outputs.get("graphs")
    if graphs is not None:
        row.nodes = graphs.num_nodes / graphs.num_graphs
        row.edges = graphs.num_edges / graphs.num_graphs
