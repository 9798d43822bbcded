"""Typed experiment configuration.

Every experiment is one :class:`Config`: plain dataclasses whose defaults are documented beside each field. A YAML
file only overrides values; it may name one ``_base_`` file (relative to itself) whose values it extends, and the base
may not have a base of its own (one level of inheritance keeps every value findable in two files at most).
Command-line overrides use dotted keys (``train.epochs=3 model.gnn.type=sage``) with YAML values.

Unknown keys, wrong types and bad choices raise :class:`ConfigError` before anything runs, with one line naming the
key, the file it came from and what is allowed::

    >>> cfg = load_config("configs/swin_gat.yaml", ["train.epochs=3"])
    >>> cfg.train.epochs
    3
    >>> load_config("configs/swin_gat.yaml", ["model.gnn.type=gin"])
    Traceback (most recent call last):
    ConfigError: --opts: model.gnn.type: 'gin' is not allowed; choose one of: gcn, sage, gat, gatv2

A bare name resolves to the config the package ships, from any directory (as detectron2's model-zoo names do):
``load_config("swin_gat.yaml")``, ``load_config("seg/quickstart")`` or ``load_config("configs/swin_gat.yaml")``
outside a checkout all read ``twostream/configs/`` (package data; in a checkout it is the repository's ``configs/``).
A path that exists is always read as it is, so a local file of the same name wins.

The resolved config is written beside every run's outputs by :func:`save_config` and loads back to an equal object.
Resolved means: a classifier that needs no segmenter (an image-only model) has ``model.segmenter.kind: none`` and
no ``model.segmenter.checkpoint``, whatever its base said, so nothing reads a segmenter checkpoint for it; and (done by
the engine, which reads the checkpoint) a trained segmenter's architecture comes from its checkpoint
(:func:`twostream.engine.checkpoint.resolve_segmenter_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from twostream.atomic import atomic_write_text

__all__ = [
    "SEGMENTER_ARCHITECTURE",
    "ADE20KFullConfig",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FusionConfig",
    "GNNConfig",
    "GraphConfig",
    "ImageEncoderConfig",
    "ModelConfig",
    "OutputConfig",
    "SceneVocabConfig",
    "SegmenterConfig",
    "TrainConfig",
    "config_differences",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "resolve_config_path",
    "save_config",
    "section_hash",
    "segmenter_needed",
    "shipped_configs",
]

# The configs that ship with the package (package data). In a checkout, twostream/configs is a symlink to the
# repository's configs/, so the two are one set of files.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or not allowed. The message is one line."""


# --------------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class SceneVocabConfig:
    """Which scene categories are classes. ADE20K has ~1,000 long-tailed scene names; pick a head of them."""

    mode: Literal["top_n", "min_count", "list", "all"] = "top_n"
    top_n: int = 10  # mode top_n: the N most frequent scenes of the training split
    min_count: int = 100  # mode min_count: scenes with at least this many training images
    names: list[str] = field(default_factory=list)  # mode list: exactly these scenes, in this order
    unlisted: Literal["drop", "other"] = "drop"  # images of other scenes: dropped, or mapped to a class 'other'


@dataclass
class AugmentConfig:
    """Training-time joint image + mask augmentation (validation only resizes)."""

    hflip: float = 0.5  # probability of a horizontal flip
    scale: tuple[float, float] = (0.5, 1.0)  # RandomResizedCrop area range; (1.0, 1.0) disables cropping
    ratio: tuple[float, float] = (0.75, 1.3333)  # RandomResizedCrop aspect-ratio range
    color_jitter: float = 0.2  # brightness/contrast/saturation strength; 0 disables


@dataclass
class ADE20KFullConfig:
    """data.format ade20k_full: how the full ADE20K release (3,688 classes, a scene path per image) is read."""

    labels: Literal["full", "ade150"] = "full"  # the 3,688-class table from the JSONs, or mapped to ADE20K-150
    scene_level: int = -1  # which element of the scene path (["outdoor", "urban", "street"]) is the scene; -1 = leaf
    label_map: str = ""  # labels ade150: a mapFromADE.txt-style file ("<150 id> <full index>") instead of names


@dataclass
class DataConfig:
    """Where the dataset lives, how it is laid out and how items are prepared."""

    root: str = "datasets/ADEChallengeData2016"  # folder holding images/, annotations/, sceneCategories.txt
    # The reader of data.root: ade20k (ADEChallengeData2016), ade20k_full (the 2021 release: per-image JSON and
    # RGB-coded _seg.png), places365 (Places365-Standard file lists; no label maps, so graphs come from a segmenter),
    # folder (root/<split>/<scene>/*.jpg, your own photographs; no label maps). docs/scale.md describes each.
    format: Literal["ade20k", "ade20k_full", "places365", "folder"] = "ade20k"
    full: ADE20KFullConfig = field(default_factory=ADE20KFullConfig)
    train_split: str = "training"
    val_split: str = "validation"
    # (H, W) the image encoder sees (and the segmentation stage trains at: divisible by 32 for UPSNet); the
    # segmenter of a classifier segments at model.segmenter.input_size
    image_size: tuple[int, int] = (224, 224)
    # Fit inside image_size keeping the aspect ratio and pad (mask padding = 255, unsupervised) instead of
    # stretching: object shapes and the scene graph's geometry stay undistorted.
    keep_ratio: bool = False
    scenes: SceneVocabConfig = field(default_factory=SceneVocabConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Normalisation happens in one place: the model. The image encoder, the segmenter backbones and the published
    # segmenters take images in [0, 1] and normalise with their own mean/std (metadata that travels with their
    # weights), so data.normalize must stay false: true would normalise a second time and is refused. The three keys
    # remain so that configs and checkpoints of earlier versions load (and are served as they were trained).
    normalize: bool = False
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # only with data.normalize (earlier versions)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # only with data.normalize (earlier versions)
    skip_bad: bool = True  # skip (and log, and count) unreadable or inconsistent items instead of failing
    # Items also carry per-instance masks from annotations_instance/<split>/*.png (R = class id, G = instance index),
    # for UPSNet's instance and panoptic heads. Explicit, not inferred from the folder, so what a run trains on
    # never changes because a folder appeared.
    instances: bool = False
    max_items: int = 0  # use only the first N items of each split (0 = all); for smoke runs
    # The annotations' label set: "" = <root>/class_table.csv when the dataset has one (tools/prepare_dataset.py
    # writes it), else ADE20K-150; "ade20k150"; or a path to a CSV of id,name[,stuff,r,g,b] (ids 0..K-1).
    class_table: str = ""
    num_workers: int = 2


@dataclass
class GraphConfig:
    """How a semantic map becomes a scene graph, and where the graphs of a dataset come from."""

    granularity: Literal["class", "region"] = "class"  # one node per present class, or per connected region
    connectivity: Literal[4, 8] = 4  # pixel neighbourhood for 'touching' and for connected regions
    tolerance: int = 0  # nodes also touch when their pixels are within this many pixels (0 = strict adjacency)
    min_area: int = 16  # region granularity: regions with fewer pixels are dropped
    ignore_label0: bool = True  # label 0 ('other', unlabelled) makes no node
    # gt: graphs from annotations (an oracle upper bound); pred: graphs cached from a trained segmenter's predictions
    # (tools/build_graphs.py); online: the segmenter runs inside the model every step (needed for shared_backbone).
    source: Literal["gt", "pred", "online"] = "pred"
    # The graph store's folder; "" = <data.root>/graphs/<split>-<source>-<settings hash>. "{split}" in it is replaced
    # by the split's name (graphs/{split}), so one value serves training and validation.
    cache_dir: str = ""
    pool_features: bool = False  # online only: node features pooled from the segmenter's feature map


@dataclass
class SegmenterConfig:
    """The segmentation stream: UPSNet, or a published model through an adapter.

    In the classifier stage a trained UPSNet is named by ``checkpoint`` alone: its architecture (the keys of
    :data:`SEGMENTER_ARCHITECTURE`) is read from the checkpoint; a key also set here must agree with it. So is the
    size it segments at (``input_size: null``: the size it was trained at; docs/resolution.md).
    """

    # none: no segmenter (graphs from annotations only, or an image-only model: load_config resolves such a model's
    # kind to none, so its resolved config shows that no segmenter is used)
    kind: Literal["upsnet", "hf", "detectron2", "none"] = "upsnet"
    backbone: str = "resnet50"  # timm name: resnet*, swin_*, vit_* (upsnet)
    pretrained: bool = False  # timm's own ImageNet weights for the backbone (downloads on first use)
    pretrained_path: str = ""  # or a local backbone weights file
    drop_path_rate: float = 0.0  # backbone stochastic depth (upsnet); mmseg uses 0.3 for Swin-T, 0.1 for ViT-S
    fpn_channels: int = 256
    head_channels: int = 128  # UPSNet semantic head width per pyramid level
    deformable: bool = True  # deformable (modulated) convolutions in the semantic head, as in UPSNet
    instance_head: bool = False  # Mask R-CNN instance head (needs instance annotations)
    panoptic_head: bool = False  # UPSNet's parameter-free panoptic head (needs the instance head)
    box_head_dim: int = 1024  # instance head: width of the box head's two-layer MLP (Mask R-CNN: 1024)
    mask_head_dim: int = 256  # instance head: width of the mask head's four 3x3 convs (Mask R-CNN: 256)
    roi_batch_size: int = 512  # instance head: RoIs sampled per training image for the box and mask heads
    # trained segmenter (segmentation stage): a run folder, a checkpoint file or an export folder; in the classifier
    # stage it also decides the architecture keys above
    checkpoint: str = ""
    trainable: bool = False  # train the segmenter inside the classifier stage (default: frozen)
    hf_model: str = ""  # kind hf: hub name or local folder, e.g. nvidia/segformer-b0-finetuned-ade-512-512
    d2_config: str = ""  # kind detectron2: model-zoo name or config file
    d2_weights: str = ""  # kind detectron2: weights path or URL
    # kind detectron2: its own config overrides as KEY, VALUE pairs, e.g. [MODEL.PANOPTIC_FPN.COMBINE.
    # INSTANCES_CONFIDENCE_THRESH, 0.6, INPUT.MIN_SIZE_TEST, 512]
    d2_opts: list[str | int | float | bool] = field(default_factory=list)
    # The size the segmenter segments at, apart from data.image_size (the image encoder's): graph stores of its
    # predictions, online graphs, the predictor and tools/eval.py all run it there (docs/resolution.md). null: the
    # size its checkpoint was trained at (that run's model.segmenter.input_size, else its data.image_size; a
    # checkpoint that records neither falls back to data.image_size); kinds that resize images themselves (hf,
    # detectron2) get them at data.image_size and resize with their own processor, as before. [H, W]: that size,
    # rounded up to the segmenter's stride (UPSNet: 32) and padded; with keep_ratio, min(H, W) is the short side.
    input_size: tuple[int, int] | None = None
    # mmsegmentation's whole-image inference: scale each image so its short side is min(input_size) and its long
    # side at most max_size, pad up to the stride (the padding is cropped off the output) instead of resizing to
    # input_size exactly. Applies to each image's own shape where images are read one by one (graph stores,
    # the predictor) and to the batch's shape inside the model.
    keep_ratio: bool = False
    max_size: int = 0  # keep_ratio: the long side's cap in pixels; 0 = 4 x the short side (mmseg ADE20K: 2048)


@dataclass
class ImageEncoderConfig:
    """The image stream: a timm classifier used as a feature extractor."""

    enabled: bool = True
    name: str = "swin_tiny_patch4_window7_224"  # any timm model name
    pretrained: bool = False
    pretrained_path: str = ""
    drop_path_rate: float = 0.1


@dataclass
class GNNConfig:
    """The graph stream's encoder (torch-geometric)."""

    enabled: bool = True
    type: Literal["gcn", "sage", "gat", "gatv2"] = "gat"
    hidden_dim: int = 256
    num_layers: int = 3
    heads: int = 4  # attention heads (gat, gatv2)
    dropout: float = 0.1
    residual: bool = True
    norm: Literal["none", "batch", "layer", "graph"] = "layer"
    readout: Literal["mean", "max", "sum", "attention"] = "attention"
    use_edge_attr: bool = True  # where the layer supports edge attributes (gat, gatv2)
    class_embed_dim: int = 64  # learned embedding of the node's class id
    # Edge ablation (docs/relations.md). full: the scene graph's "touches" edges; none: no message passes between
    # nodes (a bag of objects: each layer sees each node alone); shuffled: every graph rewired at random keeping each
    # node's degree, anew each epoch (fixed at evaluation), edge offsets recomputed, boundary lengths kept.
    edges: Literal["full", "none", "shuffled"] = "full"
    # What a node starts from. class_geometry: class embedding + area, centroid, bbox. class: the class embedding
    # only, and no edge attributes either (they hold centroid offsets): presence + adjacency, no geometry anywhere.
    node_input: Literal["class_geometry", "class"] = "class_geometry"


@dataclass
class FusionConfig:
    """How the two streams' features become scene logits."""

    type: Literal["concat", "sum", "gated", "cross_attention", "bilinear", "none"] = "concat"
    dim: int = 512  # fused feature width
    dropout: float = 0.1
    heads: int = 4  # cross_attention heads
    rank: int = 64  # bilinear: rank of the low-rank factorisation


@dataclass
class ModelConfig:
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    gnn: GNNConfig = field(default_factory=GNNConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    shared_backbone: bool = False  # the segmenter's backbone also serves the image stream: one forward pass


@dataclass
class TrainConfig:
    stage: Literal["classifier", "segmentation"] = "classifier"
    epochs: int = 30
    batch_size: int = 16  # per process; the global batch is batch_size * world_size * accumulate
    lr: float = 1e-4
    weight_decay: float = 0.05
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_steps: int = 500  # linear warmup, in optimizer steps
    min_lr_ratio: float = 0.01  # final lr as a fraction of lr (cosine, poly)
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    accumulate: int = 1  # gradient accumulation steps per optimizer step
    # Mixed precision. auto: bf16 on a GPU that has it, fp16 on older GPUs, fp32 on CPU. ('off' would read as false
    # in YAML, hence fp32.)
    amp: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False  # torch.compile the model
    channels_last: bool = False
    label_smoothing: float = 0.0
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps (0: only at epoch end)
    keep_last: int = 3  # step/epoch checkpoints kept besides best and last
    log_every: int = 20  # steps between TensorBoard scalars
    # classifier stage: at the end, each stream's mean embedding over this many training images is stored in best.pth
    # and last.pth ("stream_means"), the baseline of explanations' stream contributions; 0 = none (zero baseline)
    stream_means_images: int = 2048
    # SyncBatchNorm under DDP: BatchNorm statistics over the global batch, not each GPU's few images (UPSNet's ResNet
    # at 2 images per GPU). auto: in the segmentation stage; always: in every stage (a ResNet image encoder too);
    # never. One process: nothing to sync, BatchNorm stays.
    sync_bn: Literal["auto", "always", "never"] = "auto"


@dataclass
class EvalConfig:
    batch_size: int = 32
    every_epochs: int = 1
    topk: int = 5


@dataclass
class OutputConfig:
    dir: str = "runs/default"  # the run folder: resolved config, checkpoints, logs, vocabulary
    tensorboard: bool = True


@dataclass
class Config:
    """A whole experiment. ``load_config`` builds one from YAML; ``Config()`` holds every default."""

    data: DataConfig = field(default_factory=DataConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# The SegmenterConfig keys that shape a trained UPSNet's weights and outputs. A classifier reads them from the
# segmenter's checkpoint (training-only keys such as drop_path_rate or roi_batch_size are not among them).
SEGMENTER_ARCHITECTURE = ("backbone", "fpn_channels", "head_channels", "deformable", "instance_head",
                          "panoptic_head", "box_head_dim", "mask_head_dim")


def segmenter_needed(cfg: Config) -> bool:
    """Whether the run builds a segmenter: always in the segmentation stage; in the classifier stage for the graph
    stream (online graphs in training, graphs at inference where no cache exists) or a shared backbone."""
    m = cfg.model
    if cfg.train.stage == "segmentation":
        return True
    return m.shared_backbone or (m.gnn.enabled and m.segmenter.kind != "none")


# --------------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------------


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form (tuples for tuples)."""

    def fail(why: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: {why}")

    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                pass
        raise fail(f"{value!r} does not fit {tp}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and type(value) in {type(a) for a in allowed}:
            return value
        raise fail(f"{value!r} is not allowed; choose one of: {', '.join(str(a) for a in allowed)}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise fail(f"expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise fail(f"expected a list of {len(args)} values, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail(f"expected a list of {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}; got {value!r}")
        return _build(tp, value, key, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # PyYAML reads 1e-4 (no dot) as a string; accept scientific notation
        raise fail(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail(f"expected a string, got {value!r}")
    raise TypeError(f"config annotation {tp!r} at {key} is not supported")  # a bug in this file, not user input


def _unknown_key_error(cls: type, name: str, prefix: str, source: str) -> ConfigError:
    valid = [f.name for f in dataclasses.fields(cls)]
    where = prefix or "the top level"
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    full = f"{prefix}.{name}" if prefix else name
    return ConfigError(f"{source}: unknown key '{full}'{hint}; valid keys in {where}: {', '.join(valid)}")


def _build(cls: type, raw: dict, prefix: str, source: str, base: Any = None) -> Any:
    """Build dataclass ``cls`` from ``raw`` on top of ``base`` (an instance, or the defaults), validating each key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    obj = base if base is not None else cls()
    values = {}
    for name, value in raw.items():
        if not isinstance(name, str) or name not in names:
            raise _unknown_key_error(cls, str(name), prefix, source)
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                fields_ = ", ".join(f.name for f in dataclasses.fields(tp))
                raise ConfigError(f"{source}: {key}: expected a mapping with keys {fields_}; got {value!r}")
            values[name] = _build(tp, value, key, source, base=getattr(obj, name))
        else:
            values[name] = _coerce(value, tp, key, source)
    return dataclasses.replace(obj, **values)


def _check_consistency(cfg: Config, source: str) -> None:
    """Rules that span several keys. Raise one line naming the keys and the way out."""
    m = cfg.model
    image_on, graph_on = m.image_encoder.enabled, m.gnn.enabled
    if not image_on and not graph_on:
        raise ConfigError(f"{source}: model.image_encoder.enabled and model.gnn.enabled are both false; enable one")
    if m.fusion.type == "none" and image_on and graph_on:
        raise ConfigError(
            f"{source}: model.fusion.type is 'none' but both streams are enabled; switch one off "
            "(model.image_encoder.enabled=false or model.gnn.enabled=false) or pick a fusion method"
        )
    if m.fusion.type != "none" and not (image_on and graph_on):
        off = "model.image_encoder" if not image_on else "model.gnn"
        raise ConfigError(
            f"{source}: model.fusion.type is '{m.fusion.type}' but {off} is disabled; "
            "a single-stream model needs model.fusion.type=none"
        )
    # Whether a segmenter kind can share its backbone is its class's declaration (Segmenter.shares_backbone), checked
    # where the class is known: build_model.
    if m.shared_backbone and cfg.graph.source != "online":
        raise ConfigError(f"{source}: model.shared_backbone needs graph.source=online (the segmenter runs in "
                          f"the model), got '{cfg.graph.source}'")
    if graph_on and m.segmenter.kind == "none" and cfg.graph.source != "gt":
        raise ConfigError(f"{source}: model.segmenter.kind is 'none' so graphs can only come from annotations; "
                          f"set graph.source=gt (got '{cfg.graph.source}')")
    if cfg.data.format in ("places365", "folder"):
        if graph_on and cfg.graph.source == "gt":
            raise ConfigError(f"{source}: data.format={cfg.data.format} has no label maps, so there are no "
                              "ground-truth graphs; set graph.source=pred (graphs from a segmenter's store) or online")
        if cfg.train.stage == "segmentation":
            raise ConfigError(f"{source}: train.stage=segmentation needs label maps; data.format={cfg.data.format} "
                              "has none (use ade20k or ade20k_full)")
    if cfg.data.format == "ade20k_full" and cfg.data.full.labels == "full" and cfg.data.keep_ratio:
        raise ConfigError(f"{source}: data.keep_ratio pads label maps with 255, a class of the full ADE20K table "
                          "(data.full.labels=full); set data.keep_ratio=false or data.full.labels=ade150")
    if cfg.data.instances and cfg.data.format != "ade20k":
        raise ConfigError(f"{source}: data.instances reads annotations_instance/ of the ade20k format; "
                          f"data.format is '{cfg.data.format}'")
    if cfg.graph.pool_features and cfg.graph.source != "online":
        raise ConfigError(f"{source}: graph.pool_features needs graph.source=online, got '{cfg.graph.source}'")
    if cfg.train.stage == "classifier" and m.segmenter.trainable and graph_on and cfg.graph.source != "online":
        raise ConfigError(f"{source}: model.segmenter.trainable needs graph.source=online in the classifier stage "
                          f"(with '{cfg.graph.source}' graphs the segmenter never runs, so it cannot learn)")
    if (cfg.train.stage == "classifier" and m.segmenter.trainable and graph_on and m.segmenter.kind != "none"
            and not (cfg.graph.pool_features or m.shared_backbone)):
        # Graphs come from an argmax, which has no gradient: the segmenter could not learn, and its parameters would
        # never get gradients (DistributedDataParallel stops on those).
        raise ConfigError(f"{source}: model.segmenter.trainable needs a differentiable path to the segmenter: set "
                          "graph.pool_features=true or model.shared_backbone=true, or keep the segmenter frozen")
    if cfg.train.stage == "segmentation" and m.segmenter.kind not in ("upsnet", "hf"):
        raise ConfigError(f"{source}: train.stage=segmentation trains model.segmenter.kind upsnet or hf, "
                          f"got '{m.segmenter.kind}'")
    if cfg.train.stage == "segmentation" and m.segmenter.kind == "hf" and not m.segmenter.trainable:
        raise ConfigError(f"{source}: train.stage=segmentation with model.segmenter.kind=hf fine-tunes a published "
                          "checkpoint: set model.segmenter.trainable=true")
    if m.segmenter.panoptic_head and not m.segmenter.instance_head:
        raise ConfigError(f"{source}: model.segmenter.panoptic_head needs model.segmenter.instance_head=true")
    if cfg.train.stage == "segmentation" and m.segmenter.instance_head and not cfg.data.instances:
        raise ConfigError(f"{source}: model.segmenter.instance_head=true trains on instance masks: set "
                          "data.instances=true (needs annotations_instance/<split>/*.png, e.g. from "
                          "tools/make_synthetic.py --instances) or model.segmenter.instance_head=false")
    for key, value in (("train.epochs", cfg.train.epochs), ("train.batch_size", cfg.train.batch_size),
                       ("train.accumulate", cfg.train.accumulate), ("eval.batch_size", cfg.eval.batch_size),
                       ("model.gnn.num_layers", m.gnn.num_layers), ("model.gnn.hidden_dim", m.gnn.hidden_dim),
                       ("model.fusion.dim", m.fusion.dim)):
        if value < 1:
            raise ConfigError(f"{source}: {key}: must be at least 1, got {value}")
    if cfg.train.stream_means_images < 0:
        raise ConfigError(f"{source}: train.stream_means_images: must be at least 0, got "
                          f"{cfg.train.stream_means_images}")
    if cfg.train.lr <= 0:
        raise ConfigError(f"{source}: train.lr: must be positive, got {cfg.train.lr}")
    if any(s <= 0 for s in cfg.data.image_size):
        raise ConfigError(f"{source}: data.image_size: both sides must be positive, got {cfg.data.image_size}")
    if m.segmenter.kind == "upsnet" and cfg.train.stage == "segmentation" and any(s % 32 for s in cfg.data.image_size):
        # the segmentation stage trains at data.image_size; elsewhere the segmenter's input is padded to its stride
        raise ConfigError(f"{source}: data.image_size: {cfg.data.image_size} must be divisible by 32 for the "
                          "UPSNet segmenter (its pyramid goes to stride 32)")
    seg = m.segmenter
    if seg.input_size is not None and any(s <= 0 for s in seg.input_size):
        raise ConfigError(f"{source}: model.segmenter.input_size: both sides must be positive (or null: the size "
                          f"the segmenter was trained at), got {list(seg.input_size)}")
    if seg.max_size < 0:
        raise ConfigError(f"{source}: model.segmenter.max_size: must be at least 0 (0 = 4 x the short side), got "
                          f"{seg.max_size}")
    if seg.keep_ratio and seg.input_size is not None and 0 < seg.max_size < min(seg.input_size):
        raise ConfigError(f"{source}: model.segmenter.max_size ({seg.max_size}) is smaller than the short side "
                          f"min(model.segmenter.input_size) = {min(seg.input_size)}; raise it or set it to 0")
    if m.gnn.type in ("gat", "gatv2") and m.gnn.hidden_dim % m.gnn.heads:
        raise ConfigError(f"{source}: model.gnn.hidden_dim ({m.gnn.hidden_dim}) must be divisible by "
                          f"model.gnn.heads ({m.gnn.heads})")
    if m.fusion.type == "cross_attention" and m.fusion.dim % m.fusion.heads:
        raise ConfigError(f"{source}: model.fusion.dim ({m.fusion.dim}) must be divisible by "
                          f"model.fusion.heads ({m.fusion.heads})")
    if cfg.data.normalize:
        raise ConfigError(f"{source}: data.normalize: true would normalise the images a second time: the image "
                          "encoder and the segmenter normalise with their own mean/std; set data.normalize=false")


def _resolve(cfg: Config) -> Config:
    """Make the config say what the run will use: a classifier that needs no segmenter has ``kind: none``."""
    seg = cfg.model.segmenter
    if not segmenter_needed(cfg) and (seg.kind != "none" or seg.checkpoint):
        seg = dataclasses.replace(seg, kind="none", checkpoint="")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, segmenter=seg))
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# Loading, overriding, saving
# --------------------------------------------------------------------------------------------------------------------


def shipped_configs() -> list[str]:
    """Names of the shipped experiment configs, relative to :data:`CONFIG_DIR` (``swin_gat.yaml``,
    ``seg/quickstart.yaml``, ...); bases (``_base_.yaml``) are not experiments and are left out."""
    if not CONFIG_DIR.is_dir():
        return []
    return sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")
                  if not p.name.startswith("_"))


def resolve_config_path(name: str | Path) -> Path:
    """The YAML file ``name`` means: the path itself when it exists, else the shipped config of that name.

    ``swin_gat.yaml``, ``swin_gat``, ``seg/quickstart.yaml`` and ``configs/seg/quickstart.yaml`` (the spelling of a
    checkout, from anywhere) all find the shipped file; an absolute path is never looked up.

    Raises:
        ConfigError: neither exists; the message lists the shipped names (and the closest one).
    """
    path = Path(name)
    if path.is_file() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    if parts:
        rel = Path(*parts)
        for candidate in (rel, rel.with_name(rel.name + ".yaml")) if rel.suffix != ".yaml" else (rel,):
            if (CONFIG_DIR / candidate).is_file():
                return CONFIG_DIR / candidate
    shipped = shipped_configs()
    close = difflib.get_close_matches(Path(*parts).as_posix() if parts else str(name), shipped, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"{name}: config file not found here or among the shipped configs{hint}; shipped: "
                      f"{', '.join(shipped) or 'none (twostream/configs is missing from this installation)'}")


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    return raw


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--opts: '{item}' is not of the form key=value (e.g. train.epochs=3)")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key.split("."), value


def _nest(parts: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(parts):
        out = {part: out}
    return out


def config_from_dict(raw: dict, source: str = "<dict>", base: Config | None = None) -> Config:
    """Build and validate a :class:`Config` from a (possibly partial) nested dict."""
    cfg = _build(Config, raw, "", source, base=base)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (with at most one ``_base_``), apply ``key=value`` overrides, and validate everything.

    Args:
        path: YAML file, or the name of a shipped config (:func:`resolve_config_path`); ``None`` starts from the
            defaults.
        overrides: dotted ``key=value`` strings; values are parsed as YAML (``3``, ``true``, ``[128, 128]``).

    The result is resolved: a classifier that needs no segmenter gets ``model.segmenter.kind: none`` (see the module
    docstring).

    Raises:
        ConfigError: one line naming the key, the file (or ``--opts``) and what is allowed.
    """
    cfg = Config()
    source = "<defaults>"
    if path is not None:
        path = resolve_config_path(path)
        raw = _read_yaml(path)
        base_name = raw.pop("_base_", None)
        if base_name is not None:
            if not isinstance(base_name, str):
                raise ConfigError(f"{path}: _base_ must be a file name, got {base_name!r}")
            base_path = (path.parent / base_name).resolve()
            base_raw = _read_yaml(base_path)
            if "_base_" in base_raw:
                raise ConfigError(
                    f"{path}: its base {base_name} has a _base_ of its own; configs allow one level of inheritance: "
                    f"base {path.name} on {base_raw['_base_']} directly or copy the values it needs"
                )
            cfg = config_from_dict(base_raw, str(base_path), base=cfg)
        source = str(path)
        cfg = config_from_dict(raw, source, base=cfg)
    for item in overrides or []:
        parts, value = _parse_override(item)
        cfg = config_from_dict(_nest(parts, value), "--opts", base=cfg)
    if overrides:
        source = f"{source} + --opts"
    _check_consistency(cfg, source)
    return _resolve(cfg)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_to_dict(cfg: Any) -> dict:
    """A config (or one section) as plain nested dicts and lists, ready for YAML or JSON."""
    return _plain(cfg)


def config_differences(old: Config, new: Config, free: Iterable[str] = ()) -> list[str]:
    """The dotted keys (``train.lr``, ``model.gnn.hidden_dim``) whose values differ between two configs, in the
    config's order, leaving out the keys in ``free`` (dotted too): what a run folder's check compares."""
    skip = set(free)

    def walk(a: Any, b: Any, prefix: str) -> list[str]:
        if prefix in skip:
            return []
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in dict.fromkeys([*b, *a]) for d in walk(a.get(k), b.get(k), f"{prefix}.{k}" if prefix
                                                                      else k)]
        return [] if a == b else [prefix]

    return walk(config_to_dict(old), config_to_dict(new), "")


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the fully resolved config as YAML; :func:`load_config` reads it back to an equal object."""
    text = "# resolved twostream config: every value this run used\n"
    text += yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    return atomic_write_text(path, text)


def json_hash(obj: Any, length: int = 16) -> str:
    """A short SHA-256 of ``obj`` as canonical JSON (sorted keys): the keys of graph stores and segmenter identities."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


def section_hash(section: Any, length: int = 10) -> str:
    """A short stable hash of a config section (e.g. to key a cache on the settings that shaped it)."""
    return json_hash(config_to_dict(section), length)
