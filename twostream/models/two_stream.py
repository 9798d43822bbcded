"""The two-stream scene classifier: segmenter -> scene graph -> GNN, plus a timm image encoder, fused, then a head.

::

    image ──► Segmenter ──► argmax ──► SceneGraphBuilder ──► GraphEncoder ──► g, nodes ─┐
      │            (or graphs from the cache / annotations)                            ├─► Fusion ─► head ─► logits
      └──────► ImageEncoder (timm; or the segmenter's own C5 when shared) ──► v, tokens ┘

Every ablation is a setting of this one class: image-only (``model.gnn.enabled: false``, ``model.fusion.type: none``),
graph-only (``model.image_encoder.enabled: false``, ``model.fusion.type: none``), any GNN x any fusion, one shared
backbone pass (``model.shared_backbone: true``). ``build_model(cfg, num_scenes, class_table)`` maps a config to it and
logs a parameter table; like ``build_segmenter`` it loads no trained weights (the engine loads the segmenter's
checkpoint into ``model.segmenter``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from twostream.config import Config, segmenter_needed
from twostream.data.classes import ClassTable
from twostream.models.fusion import build_fusion
from twostream.models.gnn import GraphEncoder, build_graph_encoder
from twostream.models.image_encoder import FeatureMapEncoder, ImageEncoder, build_image_encoder
from twostream.models.segmenter import build_segmenter, require_capability, segmenter_class
from twostream.models.segmenter_base import Segmenter, lacks_capability
from twostream.models.segmenter_input import (
    SegmenterInput,
    crop_outputs,
    model_input_size,
    resize_images,
    segmenter_canvas,
    segmenter_input,
)

if TYPE_CHECKING:
    from twostream.graph.builder import SceneGraphBuilder

log = logging.getLogger(__name__)

__all__ = ["TwoStreamClassifier", "build_model", "classifier_input_size", "format_parameter_table"]


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def _count(module: nn.Module | None) -> tuple[int, int]:
    """``(total, trainable)`` parameters of ``module`` (``(0, 0)`` for ``None``)."""
    if module is None:
        return 0, 0
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def format_parameter_table(counts: dict[str, tuple[int, int]]) -> str:
    """``{part: (total, trainable)}`` -> an aligned text table with a total row."""
    rows = [(name, total, trainable) for name, (total, trainable) in counts.items()]
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'part':<{width}}  {'parameters':>12}  {'trainable':>12}"]
    lines += [f"{name:<{width}}  {total:>12,}  {trainable:>12,}" for name, total, trainable in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


class TwoStreamClassifier(nn.Module):
    """Scene logits from an image and its scene graph.

    Args:
        num_scenes: classes of the head (the scene vocabulary).
        segmenter: the segmentation stream, or ``None`` when nothing needs it (image-only; graphs only from
            annotations). Frozen (``requires_grad=False``, kept in eval mode by :meth:`train`) unless
            ``segmenter_trainable``.
        builder: the ``SceneGraphBuilder`` that turns the segmenter's label maps into graphs (with the segmenter).
        graph_encoder: the graph stream, or ``None`` (image-only).
        image_encoder: the image stream (:class:`ImageEncoder`, or :class:`FeatureMapEncoder` with
            ``shared_backbone``), or ``None`` (graph-only).
        fusion: a module of :data:`~twostream.models.fusion.FUSIONS` when both streams are on, else ``None``: the one
            stream's pooled features go to the head.
        segmenter_trainable: train the segmenter with the classifier (gradients reach it through pooled node
            features and, with ``shared_backbone``, the image stream).
        shared_backbone: the image stream reads the segmenter backbone's C5 map: one backbone pass per batch.
        online_graphs: always build graphs from the segmenter, even when ``forward`` is given graphs
            (``graph.source: online``).
        pool_features: give each node the segmenter ``"features"`` pooled under its mask.
        head_dropout: dropout before the final linear layer.
        image_size: ``(H, W)`` the image encoder takes (``data.image_size``); images of another size are resized
            (bilinear, antialiased) for it. ``None``: as given.
        segmenter_input: where the segmenter segments (:class:`~twostream.models.segmenter_input.SegmenterInput`,
            ``model.segmenter.input_size``): images are resized (and padded to its stride) for it, and graphs are
            built from its map at that size. ``None``: as given. With ``shared_backbone`` the one backbone pass runs
            at the segmenter's size, and the image stream reads that pass's C5 map (``image_size`` is not used).

    ``forward(images, graphs=None) -> dict``:
        images: ``(B, 3, H, W)`` float RGB in ``[0, 1]``, of any size (the engine reads them at
            :func:`classifier_input_size`: the larger of the two streams' sizes when the segmenter runs here).
        graphs: a torch_geometric ``Batch`` of ``B`` graphs (``SceneGraph.to_pyg()``; a list of ``SceneGraph`` is
            also accepted), or ``None`` to build them from the segmenter's prediction.
    Returns:
        ``"logits"`` ``(B, num_scenes)``; when graphs were built inside, also ``"graphs"`` (``list[SceneGraph]``, at
        the segmenter's size) and ``"sem_logits"`` ``(B, K, h, w)`` at the segmenter's size
        (``segmenter_input.resized(H, W)``).
    """

    def __init__(self, *, num_scenes: int, segmenter: Segmenter | None = None,
                 builder: SceneGraphBuilder | None = None,
                 graph_encoder: GraphEncoder | None = None,
                 image_encoder: ImageEncoder | FeatureMapEncoder | None = None, fusion: nn.Module | None = None,
                 segmenter_trainable: bool = False, shared_backbone: bool = False, online_graphs: bool = False,
                 pool_features: bool = False, head_dropout: float = 0.1, image_size: tuple[int, int] | None = None,
                 segmenter_input: SegmenterInput | None = None) -> None:
        super().__init__()
        if image_encoder is None and graph_encoder is None:
            raise ValueError("TwoStreamClassifier: image_encoder and graph_encoder are both None; give one or both")
        if (image_encoder is not None and graph_encoder is not None) != (fusion is not None):
            raise ValueError("TwoStreamClassifier: give a fusion module exactly when both image_encoder and "
                             "graph_encoder are given")
        if shared_backbone and (segmenter is None or not segmenter.shares_backbone):
            raise ValueError(lacks_capability(segmenter, "shares_backbone", "TwoStreamClassifier(shared_backbone=True)")
                             if segmenter is not None else
                             "TwoStreamClassifier: shared_backbone=True needs a segmenter")
        if shared_backbone and image_encoder is not None and not isinstance(image_encoder, FeatureMapEncoder):
            raise ValueError("TwoStreamClassifier: with shared_backbone the image stream is a FeatureMapEncoder over "
                             "the segmenter's backbone map, not a separate timm model")
        if (online_graphs or pool_features) and graph_encoder is not None and (segmenter is None or builder is None):
            raise ValueError("TwoStreamClassifier: online_graphs / pool_features need a segmenter and a builder")
        self.num_scenes = num_scenes
        self.segmenter = segmenter
        self.builder = builder  # not a module: no parameters, no state
        self.graph_encoder = graph_encoder
        self.image_encoder = image_encoder
        self.fusion = fusion
        self.segmenter_trainable = segmenter_trainable
        self.shared_backbone, self.online_graphs, self.pool_features = shared_backbone, online_graphs, pool_features
        self.image_size = tuple(int(v) for v in image_size) if image_size is not None else None
        if segmenter_input is None and segmenter is not None:
            segmenter_input = SegmenterInput(stride=segmenter.stride)  # as given, padded to its stride
        self.segmenter_input = segmenter_input
        if segmenter is not None and not segmenter_trainable:
            segmenter.requires_grad_(False)
            segmenter.eval()

        single = image_encoder if image_encoder is not None else graph_encoder
        width = fusion.num_features if fusion is not None else single.num_features
        self._num_features = int(width)
        self.head_norm = nn.LayerNorm(width)
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(width, num_scenes)

    # ---- the timm encoder contract ---------------------------------------------------------------------------------

    @property
    def num_features(self) -> int:
        """Width of :meth:`forward_features` (what the head classifies)."""
        return self._num_features

    def forward_features(self, images: Tensor, graphs=None) -> Tensor:
        """``(B, 3, H, W)`` (+ graphs) -> fused features ``(B, num_features)``."""
        return self._forward_features(images, graphs)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``(B, num_features)`` -> logits ``(B, num_scenes)`` (or the normalised features if ``pre_logits``)."""
        x = self.head_drop(self.head_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, images: Tensor, graphs=None) -> dict:
        feats, extras = self._forward_features(images, graphs)
        return {"logits": self.forward_head(feats), **extras}

    # ---- parts -----------------------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Tell epoch-seeded settings which training epoch it is (``model.gnn.edges: shuffled`` rewires anew)."""
        if self.graph_encoder is not None:
            self.graph_encoder.set_epoch(epoch)

    def train(self, mode: bool = True) -> TwoStreamClassifier:
        super().train(mode)
        if self.segmenter is not None and not self.segmenter_trainable:
            self.segmenter.eval()  # a frozen segmenter keeps its BatchNorm statistics and dropout off
        return self

    def _segmenter_context(self):
        return contextlib.nullcontext() if self.segmenter_trainable else torch.no_grad()

    # ---- each stream's input ---------------------------------------------------------------------------------------

    def encoder_input(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> the image encoder's input: resized to ``image_size`` when it differs."""
        return images if self.image_size is None else resize_images(images, self.image_size)

    def backbone_features(self, images: Tensor) -> list[Tensor]:
        """The shared backbone's pass over the segmenter's canvas of ``images``: its maps, C5 last."""
        x, _ = segmenter_canvas(images, self.segmenter_input)
        with self._segmenter_context():
            return self.segmenter.forward_features(x)  # [C2..C5]

    def _build_graphs(self, images: Tensor, backbone_feats: list[Tensor] | None) -> tuple[object, dict]:
        """Segment ``images`` at the segmenter's size, build one graph per image there; -> (``Batch`` on the
        images' device, extras). ``backbone_feats``: :meth:`backbone_features` of ``images`` (shared backbone)."""
        from torch_geometric.data import Batch

        if self.segmenter is None or self.builder is None:
            raise ValueError("TwoStreamClassifier has no segmenter (model.segmenter.kind=none?), so graphs cannot be "
                             "built from images; pass graphs to forward (graph.source=gt or pred)")
        h, w = images.shape[-2:]
        content, canvas = self.segmenter_input.resized(h, w), self.segmenter_input.canvas(h, w)
        with self._segmenter_context():
            if backbone_feats is not None:
                seg = self.segmenter.forward_from_features(backbone_feats, canvas)
            else:
                seg = self.segmenter(segmenter_canvas(images, self.segmenter_input)[0])
        seg = crop_outputs(seg, content)  # the stride padding off: maps at the segmenter's size
        features = seg.get("features") if self.pool_features else None  # (B, C, H/4, W/4)
        if self.pool_features and features is None:
            raise ValueError(f"{type(self.segmenter).__name__} returns no 'features' to pool under the nodes; "
                             "set graph.pool_features=false")
        from twostream.graph.builder import labels_and_confidence

        # Outside training each node also carries the segmenter's mean confidence under it (explanations and outputs
        # show it; the GNN does not read it, so a training step skips the logsumexp over every class and pixel).
        if self.training:
            sem_maps, confidence = seg["sem_logits"].argmax(dim=1), None  # (B, h, w)
        else:
            sem_maps, confidence = labels_and_confidence(seg["sem_logits"])
        graph_list = self.builder.build_batch(sem_maps, features=features, confidence=confidence)
        batch = Batch.from_data_list([g.to_pyg() for g in graph_list]).to(images.device)
        return batch, {"graphs": graph_list, "sem_logits": seg["sem_logits"]}

    def _forward_features(self, images: Tensor | None, graphs) -> tuple[Tensor, dict]:
        if images is None:  # graph-only model on stored graphs: nothing needs pixels
            if self.image_encoder is not None or self.shared_backbone or graphs is None or self.online_graphs:
                raise ValueError("TwoStreamClassifier: images=None works only for a graph-only model given graphs")
            count = len(graphs) if isinstance(graphs, list | tuple) else int(getattr(graphs, "num_graphs", 1))
            images = torch.empty(count, 0, 0, 0, device=next(self.graph_encoder.parameters()).device)  # batch size
        elif images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"TwoStreamClassifier: expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        extras: dict = {}
        backbone_feats = None
        if self.shared_backbone:
            backbone_feats = self.backbone_features(images)  # [C2..C5] at the segmenter's size: the only pass

        graph_pooled = node_emb = node_batch = None
        if self.graph_encoder is not None:
            if graphs is None or self.online_graphs:
                graphs, extras = self._build_graphs(images, backbone_feats)
            elif isinstance(graphs, list | tuple):
                from torch_geometric.data import Batch

                graphs = Batch.from_data_list([g.to_pyg() for g in graphs]).to(images.device)
            elif getattr(graphs, "batch", None) is None:  # one Data, not a Batch
                from torch_geometric.data import Batch

                graphs = Batch.from_data_list([graphs])
            if int(graphs.num_graphs) != images.shape[0]:
                raise ValueError(f"TwoStreamClassifier: {graphs.num_graphs} graphs for {images.shape[0]} images")
            graph_pooled, node_emb = self.graph_encoder(graphs)  # (B, Cg), (N, Cg)
            node_batch = graphs.batch

        image_pooled = tokens = None
        if self.image_encoder is not None:
            image_pooled, tokens = self.encode_image(images, backbone_feats)
        return self.fuse(image_pooled, tokens, graph_pooled, node_emb, node_batch), extras

    def encode_image(self, images: Tensor, backbone_feats: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """The image stream: ``(B, 3, H, W)`` -> ``(pooled (B, Ci), tokens (B, T, Ci))``, from the shared backbone's
        C5 (``backbone_feats``, :meth:`backbone_features` of ``images``; computed when not given) or from the images
        at the image encoder's size."""
        if self.shared_backbone:
            source = (backbone_feats if backbone_feats is not None else self.backbone_features(images))[-1]
        else:
            source = self.encoder_input(images)
        tokens = self.image_encoder.forward_features(source)  # (B, T, Ci)
        return self.image_encoder.forward_head(tokens), tokens  # (B, Ci), (B, T, Ci)

    def fuse(self, image_pooled: Tensor | None, tokens: Tensor | None, graph_pooled: Tensor | None,
             node_emb: Tensor | None, node_batch: Tensor | None) -> Tensor:
        """The streams' embeddings (``None`` for a stream the model lacks) -> the head's input ``(B, dim)``: the
        fusion's output, or the one stream's pooled embedding."""
        if self.fusion is not None:
            return self.fusion(image_pooled, tokens, graph_pooled, node_emb, node_batch)  # (B, dim)
        return image_pooled if image_pooled is not None else graph_pooled

    def parameter_counts(self) -> dict[str, tuple[int, int]]:
        """``{part: (total, trainable)}`` for segmenter, image encoder, graph encoder, fusion and head."""
        head = _count(self.head_norm), _count(self.head)
        return {
            "segmenter": _count(self.segmenter),
            "image_encoder": _count(self.image_encoder),
            "graph_encoder": _count(self.graph_encoder),
            "fusion": _count(self.fusion),
            "head": (head[0][0] + head[1][0], head[0][1] + head[1][1]),
        }

    def extra_repr(self) -> str:
        streams = [s for s, m in (("image", self.image_encoder), ("graph", self.graph_encoder)) if m is not None]
        sizes = ""
        if self.image_encoder is not None and self.image_size is not None and not self.shared_backbone:
            sizes += f", image_size={self.image_size[0]}x{self.image_size[1]}"
        if self.segmenter is not None:
            sizes += f", segmenter_input={self.segmenter_input}"
        return (f"num_scenes={self.num_scenes}, streams={'+'.join(streams)}, "
                f"segmenter_trainable={self.segmenter_trainable}, shared_backbone={self.shared_backbone}, "
                f"online_graphs={self.online_graphs}, pool_features={self.pool_features}{sizes}")


# --------------------------------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------------------------------


def build_model(cfg: Config, num_scenes: int, class_table: ClassTable,
                segmenter: Segmenter | None = None) -> TwoStreamClassifier:
    """The classifier ``cfg.model`` describes, for ``num_scenes`` scene classes and graphs labelled in ``class_table``
    (replaced by the segmenter's own table when it has one). Loads no trained segmenter weights: the engine does,
    by passing ``segmenter``, a trained one built from its checkpoint's config, used instead of building one.

    The segmenter is built when a stream needs it: the graph stream with ``model.segmenter.kind`` other than ``none``
    (online graphs in training, and graphs at inference, where no cache exists) or ``model.shared_backbone``.
    """
    m = cfg.model
    # Cross-key rules live in the config's validation (twostream.config); here only what the segmenter declares.
    if m.shared_backbone:
        require_capability(m.segmenter.kind, "shares_backbone", "model.shared_backbone")
    both = m.image_encoder.enabled and m.gnn.enabled
    if not segmenter_needed(cfg):
        segmenter = None
    elif segmenter is None:
        segmenter = build_segmenter(m.segmenter, class_table)
    table = segmenter.class_table if segmenter is not None else class_table

    builder = None
    if segmenter is not None and m.gnn.enabled:
        from twostream.graph.builder import SceneGraphBuilder

        builder = SceneGraphBuilder.from_config(cfg.graph, table)

    graph_encoder = None
    if m.gnn.enabled:
        feature_dim = 0
        if cfg.graph.pool_features:
            if segmenter is None or segmenter.feature_dim is None:
                raise ValueError(lacks_capability(segmenter, "feature_dim", "graph.pool_features")
                                 if segmenter is not None else "graph.pool_features needs a segmenter")
            feature_dim = int(segmenter.feature_dim)
        graph_encoder = build_graph_encoder(m.gnn, len(table), feature_dim=feature_dim)

    image_encoder = None
    if m.image_encoder.enabled:
        if m.shared_backbone:
            image_encoder = FeatureMapEncoder(segmenter.backbone_dim)
        else:
            image_encoder = build_image_encoder(m.image_encoder, img_size=tuple(cfg.data.image_size))

    fusion = None
    if both:
        # cross-attention reads the tokens, the other methods the pooled vector (equal widths for ViT/Swin/ResNet)
        image_dim = image_encoder.token_dim if m.fusion.type == "cross_attention" else image_encoder.num_features
        fusion = build_fusion(m.fusion, image_dim, graph_encoder.num_features)

    model = TwoStreamClassifier(
        num_scenes=num_scenes, segmenter=segmenter, builder=builder, graph_encoder=graph_encoder,
        image_encoder=image_encoder, fusion=fusion, segmenter_trainable=m.segmenter.trainable,
        shared_backbone=m.shared_backbone, online_graphs=cfg.graph.source == "online",
        pool_features=cfg.graph.pool_features, head_dropout=m.fusion.dropout,
        image_size=tuple(cfg.data.image_size),
        segmenter_input=segmenter_input(m.segmenter, cfg.data, type(segmenter)) if segmenter is not None else None,
    )
    log.info("two-stream model (%s):\n%s", model.extra_repr(), format_parameter_table(model.parameter_counts()))
    return model


def classifier_input_size(cfg: Config, segmenter_runs: bool) -> tuple[int, int]:
    """The ``(H, W)`` the classifier ``cfg`` describes reads its images at: ``data.image_size``, or, when its segmenter
    runs on them (``segmenter_runs``: online graphs, a shared backbone, graphs built at evaluation or inference) at a
    larger input size, that size (:func:`~twostream.models.segmenter_input.model_input_size`), so the segmenter sees
    pixels read at its own resolution; the model shrinks a copy for the image encoder."""
    seg = cfg.model.segmenter
    if not segmenter_runs or seg.kind == "none" or not segmenter_needed(cfg):
        return tuple(int(s) for s in cfg.data.image_size)
    return model_input_size(cfg.data.image_size, segmenter_input(seg, cfg.data, segmenter_class(seg.kind)))
