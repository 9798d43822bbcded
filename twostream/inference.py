"""Predictor: images in; scene top-k, semantic map and scene graph out.

Built from what training left behind, so inference uses exactly the run's preprocessing (``data.image_size``,
``keep_ratio``, ``normalize``: the validation transform of :mod:`twostream.data.transforms`), scene order and class
table::

    >>> predictor = Predictor.from_checkpoint("runs/quickstart")         # best.pth, else last.pth
    >>> [pred] = predictor.predict([load_image("kitchen.jpg")])          # or predict(["kitchen.jpg"])
    >>> pred.scenes[:2]
    [('kitchen', 0.81), ('dining_room', 0.07)]
    >>> pred.sem_map.shape, pred.graph.num_nodes                         # at the photo's own size
    ((480, 640), 9)

Sources (resolved by :func:`~twostream.engine.checkpoint.resolve_checkpoint`, read by
:func:`~twostream.engine.checkpoint.load_trained`): a run folder (``best.pth``, else ``last.pth``), a classifier
checkpoint file, or a model-only export (:func:`~twostream.engine.checkpoint.export_safetensors`: a folder with
``model.safetensors``, ``config.yaml``, ``vocabulary.json`` and ``class_table.json``, or the ``.safetensors`` file
inside it). A segmenter alone gives semantic maps and scene graphs without scenes (:meth:`Predictor.from_segmenter`):
``upsnet:<run folder, checkpoint or export>``,
``hf:<hub name or folder>``, ``detectron2:<config>[@<weights>]``. Both together (``from_checkpoint(...,
segmenter=spec)``) let the given segmenter supply the classifier's graphs, e.g. for a model trained on graphs from
annotations (``model.segmenter.kind: none``).

Where the graph comes from follows training: a model trained with ``graph.source: online`` builds it inside its forward
pass; one trained on cached ``pred`` (or ``gt``) graphs gets graphs the predictor builds from the segmenter's argmax
with the run's builder settings, padding (``keep_ratio``) void as in the cache. An image-only model
(``model.gnn.enabled: false``) predicts scenes only: ``sem_map`` and ``graph`` are ``None``.

At which size. The image encoder sees each photo at ``data.image_size``; the segmenter segments it at its own input
size (``model.segmenter.input_size``: by default the size it was trained at; docs/resolution.md), resized from the
photo itself, exactly as graph stores are built, and the graph is built from its map there
(``Prediction.segmenter_size``, also in the JSON). A model that builds its graphs online gets each photo at the
larger of the two sizes, as in training, and shrinks a copy for its image encoder.

``predict(..., explain=True)`` also says why (:mod:`twostream.explain`): each prediction gets an ``explanation``
(node and edge importance, exact occlusion, a CAM at the photo's size, the streams' contributions) for the predicted
scene or ``explain_scene``. Graph nodes from the segmenter carry its mean confidence under them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twostream.config import Config, GraphConfig, config_from_dict
from twostream.data.classes import IGNORE_INDEX, ClassTable
from twostream.data.transforms import apply_with_box, resize_labels
from twostream.engine.checkpoint import (
    CheckpointError,
    inference_config,
    load_model_state,
    load_trained,
    resolve_checkpoint,
)
from twostream.engine.distributed import DEVICES, resolve_device
from twostream.engine.segmenters import segmenter_from_spec, segmenter_geometry
from twostream.graph.scene_graph import SceneGraph
from twostream.models.segmenter_input import SegmenterInput, model_input_size, segment

if TYPE_CHECKING:
    from twostream.explain.explanation import SceneExplanation

log = logging.getLogger(__name__)

# resolve_checkpoint and resolve_device live in twostream.engine (checkpoint, distributed); imported here for callers of
# earlier versions.
__all__ = ["DEVICES", "PRECISIONS", "Prediction", "Predictor", "resolve_checkpoint", "resolve_device"]

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Segmenters that resize internally (hf, detectron2) get images at their own size, the longer side capped at this
# many pixels: beyond it the map and graph only cost time (they run their own processor's resize anyway).
MAX_SIDE = 1024


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        what = f"{image.dtype} of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"Predictor: expected an (H, W, 3) uint8 RGB image, got {what}; read files with "
                         "twostream.data.io.load_image (or pass their paths)")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"Predictor: empty image of shape {image.shape}")
    return image


def _check_external(model: nn.Module, segmenter: nn.Module, trained_on: ClassTable | None) -> None:
    """A segmenter may supply a classifier's graphs when it labels pixels in the table the classifier learned."""
    table = segmenter.class_table
    if trained_on is not None and (trained_on.name != table.name or len(trained_on) != len(table)):
        raise ValueError(f"the segmenter labels pixels with the {table.name} table ({len(table)} classes) but the "
                         f"classifier was trained on {trained_on.name} ({len(trained_on)} classes); give a "
                         "segmenter of the classifier's label set")
    if model.pool_features:
        raise ValueError("this classifier pools its own segmenter's features into the graph nodes "
                         "(graph.pool_features), so another segmenter cannot supply its graphs")


def _scale_box(box: tuple[int, int, int, int], src: tuple[int, int], dst: tuple[int, int]) -> tuple[int, int, int, int]:
    """A content ``box (top, left, height, width)`` in an ``src (H, W)`` canvas -> the same region of a ``dst``
    canvas (the segmenter's map of it), rounded outwards."""
    if tuple(src) == tuple(dst):
        return box
    (sh, sw), (dh, dw) = src, dst
    top, left, h, w = box
    t, lft = top * dh // sh, left * dw // sw
    return t, lft, -(-(top + h) * dh // sh) - t, -(-(left + w) * dw // sw) - lft


@dataclass
class _Input:
    """One image prepared: the model's ``tensor (3, h, w)``, its content ``box (top, left, height, width)`` in
    that canvas (the whole canvas unless ``keep_ratio`` padded it), the original ``size (H, W)``, and, where the
    predictor runs a segmenter itself, the segmenter's ``seg_tensor`` (resized from the photo to its input size) with
    its own ``seg_box``."""

    tensor: Tensor
    box: tuple[int, int, int, int]
    size: tuple[int, int]
    seg_tensor: Tensor | None = None
    seg_box: tuple[int, int, int, int] | None = None


# --------------------------------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """What the predictor says about one image.

    Attributes:
        scenes: top-k ``(scene name, probability)``, most probable first; empty for a segmenter-only predictor.
        sem_map: ``(H, W)`` int64 labels of ``class_table`` at the original image size (the model's map resized by
            centre-aligned nearest neighbour), or ``None`` for an image-only model.
        graph: the scene graph, or ``None`` for an image-only model. Built from the segmenter's map at its input
            size (``segmenter_size``; ``boundary`` in those pixels; areas, centroids and boxes normalised, so they
            hold for the original image too); the graph the classifier saw, except with ``keep_ratio`` padding, where
            it is rebuilt on the image content alone.
        class_table: the label set of ``sem_map`` and ``graph`` (``None`` with them).
        image_size: ``(H, W)`` of the original image.
        explanation: why the model scored its scene so (``predict(..., explain=True)``), with the CAM at
            ``image_size``; ``None`` unless asked for.
        segmenter_size: ``(h, w)`` of the segmenter's map (its input size for this image, stride padding excluded),
            which the graph was built from; ``None`` without a graph.
    """

    scenes: list[tuple[str, float]]
    sem_map: np.ndarray | None
    graph: SceneGraph | None
    class_table: ClassTable | None
    image_size: tuple[int, int]
    explanation: SceneExplanation | None = None
    segmenter_size: tuple[int, int] | None = None

    def to_json(self) -> dict:
        """The prediction format ``tools/infer.py`` writes and :mod:`twostream.viz.sources` reads::

            {"image_size": [H, W],                                 # the original image
             "scenes": [{"scene": "kitchen", "prob": 0.81}, ...],  # top-k, best first ([] without a classifier)
             "segmenter_size": [h, w],                             # the segmenter's map the graph was built from
             "graph": {...},                                       # SceneGraph.to_json(), or null (image-only)
             "explanation": {...}}                                 # SceneExplanation.to_json(), when explained

        ``tools/infer.py`` adds ``"image"`` (the input path) and ``"sem_seg"`` (the palette PNG of ``sem_map``,
        relative to the JSON file).
        """
        out = {
            "image_size": [int(s) for s in self.image_size],
            "scenes": [{"scene": name, "prob": float(p)} for name, p in self.scenes],
            "segmenter_size": [int(s) for s in self.segmenter_size] if self.segmenter_size is not None else None,
            "graph": self.graph.to_json() if self.graph is not None else None,
        }
        if self.explanation is not None:
            out["explanation"] = self.explanation.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict, sem_map: np.ndarray | None = None) -> Prediction:
        """Read :meth:`to_json` back (``sem_map`` is not in the JSON: pass it, or it stays ``None``)."""
        graph = SceneGraph.from_json(d["graph"]) if d.get("graph") else None
        explanation = None
        if d.get("explanation"):
            from twostream.explain.explanation import SceneExplanation

            explanation = SceneExplanation.from_json(d["explanation"], graph=graph)
        size = d.get("segmenter_size")
        return cls(scenes=[(s["scene"], float(s["prob"])) for s in d.get("scenes", [])], sem_map=sem_map,
                   graph=graph, class_table=graph.class_table if graph is not None else None,
                   image_size=tuple(int(s) for s in d["image_size"]), explanation=explanation,
                   segmenter_size=tuple(int(v) for v in size) if size else None)

    def top_objects(self, k: int | None = None) -> list[tuple[str, float]]:
        """``(class name, area fraction)`` of the graph's nodes, largest first (``k`` of them, or all)."""
        if self.graph is None:
            return []
        order = torch.argsort(self.graph.area, descending=True, stable=True)[:k].tolist()
        table = self.graph.class_table
        return [(table.short_name(int(self.graph.labels[i])), float(self.graph.area[i])) for i in order]

    def top_adjacencies(self, k: int | None = None) -> list[tuple[str, str, float]]:
        """``(name, name, shared boundary in pixels)`` of touching node pairs, longest boundary first."""
        if self.graph is None or self.graph.num_edges == 0:
            return []
        pairs, boundary = self.graph.undirected_edges()  # (2, E/2), (E/2,)
        order = torch.argsort(boundary, descending=True, stable=True)[:k].tolist()
        table, labels = self.graph.class_table, self.graph.labels
        return [(table.short_name(int(labels[pairs[0, i]])), table.short_name(int(labels[pairs[1, i]])),
                 float(boundary[i])) for i in order]


# --------------------------------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------------------------------


class Predictor:
    """Runs a trained two-stream classifier, a segmenter, or both, on images of any size.

    Args:
        model: a ``TwoStreamClassifier`` (``None``: segmenter-only).
        segmenter: a ``Segmenter`` that supplies the semantic maps and graphs itself (``None``: the model's own).
        cfg: the run's config: ``data`` (preprocessing) and ``graph`` (builder settings) are read.
        scenes: scene names in the model's class order (empty without a model).
        native_size: feed images at their own size (longer side capped at :data:`MAX_SIDE`) instead of
            ``cfg.data.image_size``; for segmenters that resize internally (hf, detectron2).
        segmenter_input: where ``segmenter`` segments (:class:`~twostream.models.segmenter_input.SegmenterInput`);
            default: the model's own segmenter's, else as given (``from_segmenter`` / ``from_checkpoint`` pass the
            segmenter's own: the size it was trained at).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 needs a GPU).
        stream_means: the checkpoint's training-set stream means (``"stream_means"``), for explanations' stream
            contributions; ``None``: zero baseline (said in the explanation's method).
        explain_method: attribution method of explanations (:data:`twostream.explain.graph_attribution.METHODS`).
    """

    def __init__(self, *, model: nn.Module | None = None, segmenter: nn.Module | None = None, cfg: Config,
                 scenes: Sequence[str] = (), class_table: ClassTable | None = None, native_size: bool = False,
                 device: str | torch.device = "cpu", precision: str = "fp32", stream_means: dict | None = None,
                 explain_method: str = "integrated_gradients", segmenter_input: SegmenterInput | None = None) -> None:
        from twostream.data.transforms import build_transforms, segmenter_transforms
        from twostream.graph.builder import SceneGraphBuilder

        if model is None and segmenter is None:
            raise ValueError("Predictor: give a model, a segmenter or both")
        if precision not in PRECISIONS:
            raise ValueError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("precision fp16 needs a GPU; use bf16 or fp32 on CPU")
        self.amp_dtype = PRECISIONS[precision]
        self.precision = precision
        self.cfg, self.scenes, self.native_size = cfg, list(scenes), native_size
        if model is not None and len(self.scenes) != model.num_scenes:
            raise ValueError(f"Predictor: {len(self.scenes)} scene names for a model of {model.num_scenes} scenes")

        # The segmenter the predictor runs itself; None when the model builds its graphs online or has no graph stream.
        self.graph_stream = model is None or model.graph_encoder is not None
        own = segmenter
        if model is not None and model.graph_encoder is not None:
            trained_on = model.segmenter.class_table if model.segmenter is not None else class_table
            if segmenter is not None:
                _check_external(model, segmenter, trained_on)
                model.online_graphs = False  # the given segmenter's graphs replace the model's own
            elif not model.online_graphs:
                if model.segmenter is None:
                    raise ValueError("this classifier was trained on graphs from annotations (model.segmenter.kind "
                                     "none) and cannot build graphs from images; give a segmenter "
                                     "(--segmenter upsnet:CHECKPOINT, hf:NAME or detectron2:CONFIG)")
                own = model.segmenter
        self.model = model.to(self.device).eval() if model is not None else None
        self.segmenter = own.to(self.device).eval() if own is not None else None
        table = None
        if self.graph_stream:
            table = own.class_table if own is not None else model.segmenter.class_table
        self.class_table: ClassTable | None = table
        self.builder = SceneGraphBuilder.from_config(cfg.graph, table) if table is not None else None
        # Where the predictor's own segmenter segments: the model's setting for its own segmenter, else the given one
        geometry = segmenter_input
        if geometry is None and self.segmenter is not None:
            same = model is not None and own is model.segmenter
            geometry = model.segmenter_input if same else SegmenterInput(stride=self.segmenter.stride)
        self.segmenter_input = geometry
        # The validation transform of training: resize (or fit and pad), to float, normalise if the run did. A model
        # that segments online reads images at the larger of the two streams' sizes, as in training.
        data = cfg.data
        if self.model is not None and self.segmenter is None and self.model.segmenter is not None:
            size = model_input_size(data.image_size, self.model.segmenter_input)
            data = dataclasses.replace(data, image_size=size)
        self._transform = None if native_size else build_transforms(data, train=False)
        # The segmenter's own input, resized from the photo (as graph stores are built); None: the model's input
        self._seg_transform = None
        if geometry is not None and geometry.size is not None and not native_size:
            self._seg_transform = segmenter_transforms(cfg.data, geometry.size, keep_ratio=geometry.keep_ratio,
                                                       long_side=geometry.long_side if geometry.keep_ratio else 0)
            if self.model is None:  # a segmenter alone: its input is the only one
                self._transform, self._seg_transform = self._seg_transform, None
        self.stream_means, self.explain_method = stream_means, explain_method
        self._explainer = None  # built on the first predict(..., explain=True)

    def __repr__(self) -> str:
        parts = []
        if self.model is not None:
            parts.append(f"classifier of {len(self.scenes)} scenes")
        if self.segmenter is not None:
            parts.append(f"segmenter {type(self.segmenter).__name__}")
        size = "native" if self.native_size else "x".join(map(str, self.cfg.data.image_size))
        geometry = self.segmenter_input if self.segmenter is not None else (
            self.model.segmenter_input if self.model is not None and self.model.segmenter is not None else None)
        seg = f", segmenter input {geometry}" if geometry is not None and self.graph_stream else ""
        return (f"Predictor({', '.join(parts)}, input {size}{seg}, device={self.device}, "
                f"precision={self.precision}, graphs={'on' if self.graph_stream else 'off'})")

    # ------------------------------------------------------------------------------------------------ construction

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, segmenter: str | None = None, device: str | torch.device = "cpu",
                        precision: str = "fp32", explain_method: str = "integrated_gradients") -> Predictor:
        """From a run folder (``best.pth``, else ``last.pth``), a classifier checkpoint, or a model-only export (its
        folder or its ``model.safetensors``). ``segmenter``: a spec (:meth:`from_segmenter`) whose graphs replace
        the model's own.

        Raises:
            CheckpointError: one line: missing, truncated, foreign, a segmentation-stage checkpoint, or weights that
                do not fit the saved config.
        """
        from twostream.models.two_stream import build_model

        ckpt = load_trained(path)
        source = ckpt["path"]
        if ckpt.get("stage") != "classifier":
            raise CheckpointError(f"{source}: a {ckpt.get('stage')} checkpoint, not a scene classifier; for "
                                  f"scene graphs from the segmenter alone use --segmenter upsnet:{path}")
        cfg = config_from_dict(ckpt["config"], source=f"{source} (config)")
        state, scenes = ckpt["model"], list(ckpt.get("vocabulary") or [])
        if not scenes:
            raise CheckpointError(f"{source}: checkpoint records no scene vocabulary; it was not written by "
                                  "tools/train.py's classifier stage")
        class_table = ClassTable.from_dict(ckpt["class_table"])
        stream_means = ckpt.get("stream_means")  # an export without stream_means.safetensors: a zero baseline
        cfg = inference_config(cfg)
        model = build_model(cfg, num_scenes=len(scenes), class_table=class_table)
        load_model_state(model, state, source)
        log.info("loaded %s: %d scenes, class table %s", source, len(scenes), class_table.name)
        seg = geometry = None
        if segmenter is not None:
            seg, seg_cfg, _ = segmenter_from_spec(segmenter, cfg.graph)
            geometry = segmenter_geometry(seg_cfg, seg)  # it segments at its own size
        return cls(model=model, segmenter=seg, cfg=cfg, scenes=scenes, class_table=class_table, device=device,
                   precision=precision, stream_means=stream_means, explain_method=explain_method,
                   segmenter_input=geometry)

    @classmethod
    def from_segmenter(cls, spec: str, *, graph: GraphConfig | None = None, device: str | torch.device = "cpu",
                       precision: str = "fp32") -> Predictor:
        """Scene graphs from a segmenter alone (no scenes): ``upsnet:<checkpoint>`` (a segmentation-stage or
        classifier checkpoint; its run's input size and graph settings), ``hf:<hub name or folder>`` or
        ``detectron2:<config>[@<weights>]`` (images at their own size, these resize internally; graph settings
        from ``graph``, default :class:`~twostream.config.GraphConfig`)."""
        segmenter, cfg, native = segmenter_from_spec(spec, graph)
        geometry = SegmenterInput(stride=segmenter.stride) if native else segmenter_geometry(cfg, segmenter)
        return cls(segmenter=segmenter, cfg=cfg, native_size=native, device=device, precision=precision,
                   segmenter_input=geometry)

    # ------------------------------------------------------------------------------------------------ prediction

    def _prepare(self, image: np.ndarray) -> _Input:
        """``(H, W, 3)`` uint8 -> the model's input (and the segmenter's), and where the image lies in them."""
        h0, w0 = image.shape[:2]
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W) uint8
        if self._transform is None:  # native size, capped
            x = chw.float().div_(255)
            scale = MAX_SIDE / max(h0, w0)
            if scale < 1:
                size = (max(1, round(h0 * scale)), max(1, round(w0 * scale)))
                x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
            return _Input(x, (0, 0, *x.shape[-2:]), (h0, w0))
        x, box = apply_with_box(self._transform, chw)
        inp = _Input(x, box, (h0, w0))
        if self._seg_transform is not None:  # the segmenter's input, resized from the photo itself
            inp.seg_tensor, inp.seg_box = apply_with_box(self._seg_transform, chw)
        return inp

    def predict(self, images: Sequence[np.ndarray | str | Path], topk: int = 5, batch_size: int = 8,
                explain: bool = False, explain_scene: str | None = None) -> list[Prediction]:
        """Predict for ``(H, W, 3)`` uint8 RGB images of any sizes (or image paths, read with
        :func:`~twostream.data.io.load_image`), ``batch_size`` at a time; one :class:`Prediction` per image.

        ``explain``: also explain each prediction (``Prediction.explanation``), for its top scene or for
        ``explain_scene`` (a scene of the vocabulary; any other name is a ``ValueError`` listing the scenes).
        """
        from twostream.data.io import load_image

        if topk < 1 or batch_size < 1:
            raise ValueError(f"Predictor.predict: topk and batch_size must be at least 1, got {topk}, {batch_size}")
        explain, scene_index = self.explain_request(explain, explain_scene)
        out: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = [load_image(im) if isinstance(im, str | Path) else _check_image(im)
                     for im in images[start:start + batch_size]]
            out.extend(self._predict_batch(chunk, topk, explain, scene_index))
        return out

    def explain_request(self, explain: bool, explain_scene: str | None = None) -> tuple[bool, int | None]:
        """``(explain, scene index)`` for :meth:`predict`'s ``explain`` / ``explain_scene`` (a scene asked for means
        explain; ``None``: each image's top scene), checked before any image is read.

        Raises:
            ValueError: explanations asked of a segmenter-only predictor, or a scene not in the vocabulary (the
                message lists them).
        """
        if not explain and explain_scene is None:
            return False, None
        if self.model is None:
            raise ValueError("explanations need a scene classifier; this predictor has a segmenter only (give "
                             "--checkpoint)")
        if explain_scene is None:
            return True, None
        from twostream.explain import resolve_scene

        return True, resolve_scene(explain_scene, self.scenes)

    @property
    def explainer(self):
        """The :class:`~twostream.explain.SceneExplainer` of the model (built once, on first use)."""
        if self._explainer is None:
            from twostream.explain import SceneExplainer

            self._explainer = SceneExplainer(self.model, self.scenes, class_table=self.class_table,
                                             method=self.explain_method, stream_means=self.stream_means)
        return self._explainer

    def _predict_batch(self, images: Sequence[np.ndarray], topk: int, explain: bool = False,
                       scene_index: int | None = None) -> list[Prediction]:
        inputs = [self._prepare(im) for im in images]
        # Same-sized inputs run together: all of them with fixed sizes, equal shapes with native sizes or keep_ratio.
        groups: dict[tuple, list[int]] = {}
        for i, inp in enumerate(inputs):
            seg_shape = tuple(inp.seg_tensor.shape) if inp.seg_tensor is not None else None
            groups.setdefault((tuple(inp.tensor.shape), seg_shape), []).append(i)
        results: list[Prediction | None] = [None] * len(inputs)
        for idx in groups.values():
            for i, pred in zip(idx, self._run([inputs[i] for i in idx], topk, explain, scene_index)):
                results[i] = pred
        return results

    def _run(self, inputs: list[_Input], topk: int, explain: bool = False,
             scene_index: int | None = None) -> list[Prediction]:
        from twostream.graph.builder import labels_and_confidence

        x = torch.stack([inp.tensor for inp in inputs]).to(self.device)  # (B, 3, h, w)
        logits = labels = graphs = confidence = None
        own_input = inputs[0].seg_tensor is not None
        boxes = [inp.seg_box if own_input else inp.box for inp in inputs]  # content boxes in the segmenter's input
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                                    enabled=self.amp_dtype is not None):
            if self.segmenter is not None:  # graphs built here, the way the graph store builds them
                xs = torch.stack([inp.seg_tensor for inp in inputs]).to(self.device) if own_input else x
                sem_logits = segment(self.segmenter, xs, self.segmenter_input)  # (B, K, h, w) at its size
                labels, confidence = labels_and_confidence(sem_logits)  # (B, h, w): argmax, max softmax probability
                boxes = [_scale_box(b, xs.shape[-2:], labels.shape[-2:]) for b in boxes]
                void = labels
                if any(b[2:] != tuple(labels.shape[-2:]) for b in boxes):
                    pad = torch.stack([self._pad_mask(b, labels.shape[-2:]) for b in boxes]).to(labels.device)
                    void = labels.masked_fill(pad, IGNORE_INDEX)
                graphs = self.builder.build_batch(void, confidence=confidence)
                if self.model is not None:
                    logits = self.model(x, graphs if self.model.graph_encoder is not None else None)["logits"]
            else:
                out = self.model(x)
                logits = out["logits"]
                if "sem_logits" in out:  # built inside, at the segmenter's size
                    (labels, confidence), graphs = labels_and_confidence(out["sem_logits"]), out["graphs"]
                    boxes = [_scale_box(b, x.shape[-2:], labels.shape[-2:]) for b in boxes]
        probs = logits.float().softmax(dim=1).cpu() if logits is not None else None  # (B, S)
        explanations = None
        if explain:  # outside inference mode: the attributions need gradients
            model_graphs = graphs if self.model.graph_encoder is not None else None
            explanations = self.explainer.explain(x.clone(), model_graphs, scene=scene_index)

        predictions = []
        for i, inp in enumerate(inputs):
            scenes: list[tuple[str, float]] = []
            if probs is not None:
                p, j = probs[i].topk(min(topk, probs.shape[1]))
                scenes = [(self.scenes[c], float(q)) for q, c in zip(p.tolist(), j.tolist())]
            sem_map = graph = None
            if labels is not None:
                top, left, ch, cw = boxes[i]
                content = labels[i, top:top + ch, left:left + cw]  # (ch, cw)
                padded = (ch, cw) != tuple(labels.shape[-2:])
                graph = (self.builder(content, confidence=confidence[i, top:top + ch, left:left + cw])
                         if padded else graphs[i]).to("cpu")
                sem_map = resize_labels(content, inp.size).cpu().numpy()
            explanation = explanations[i] if explanations is not None else None
            if explanation is not None and explanation.cam is not None:
                from twostream.explain.cam import resize_cam

                explanation.cam = resize_cam(explanation.cam, inp.box, inp.size)  # at the photo's own size
            predictions.append(Prediction(scenes=scenes, sem_map=sem_map, graph=graph,
                                          class_table=self.class_table if graph is not None else None,
                                          image_size=inp.size, explanation=explanation,
                                          segmenter_size=tuple(labels.shape[-2:]) if labels is not None else None))
        return predictions

    @staticmethod
    def _pad_mask(box: tuple[int, int, int, int], size: tuple[int, int]) -> Tensor:
        """``size (h, w)`` bool, True outside the content ``box``."""
        pad = torch.ones(tuple(size), dtype=torch.bool)
        top, left, ch, cw = box
        pad[top:top + ch, left:left + cw] = False
        return pad
