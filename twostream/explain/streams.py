"""A :class:`~twostream.models.two_stream.TwoStreamClassifier` taken apart into its two streams and its head.

Explanations hold one stream fixed while they vary the other (graph attributions with the image embedding fixed,
the image CAM with the graph embedding fixed, occlusion with the image embedding computed once and repeated), and
replace a stream by its training-set mean to measure what it contributed. :func:`encode_streams` and
:func:`classify` call the model's own parts as its forward does (``graph_encoder``, ``encode_image``, ``fuse``,
``forward_head``); a test checks that they give the model's own logits.

Training-set means (:func:`compute_stream_means`) are stored in the classifier checkpoint under ``"stream_means"``
at the end of training (:func:`record_stream_means`, called by the classifier task)::

    {"image_pooled": (Ci,), "image_tokens": (T, Ci), "graph_pooled": (Cg,), "node_emb": (Cg,), "num_images": int}

(keys of streams the model lacks are absent); exports carry them as ``stream_means.safetensors``. A checkpoint without
them (older runs, ``train.stream_means_images=0``) falls back to zero embeddings, which the fusion's LayerNorm maps
to its bias: "no evidence"; the explanation's ``method`` says which baseline was used.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = ["StreamEmbeddings", "as_batch", "classify", "compute_stream_means", "encode_graphs", "encode_image",
           "encode_streams", "record_stream_means", "replace_stream", "stream_baseline_name"]


@dataclass
class StreamEmbeddings:
    """What each stream hands the fusion for a batch of ``B`` images (``None``: the model has no such stream).

    Shapes: ``image_pooled (B, Ci)``, ``image_tokens (B, T, Ci)``, ``graph_pooled (B, Cg)``, ``node_emb (N, Cg)``,
    ``node_batch (N,)`` (the graph of each node, sorted).
    """

    image_pooled: Tensor | None = None
    image_tokens: Tensor | None = None
    graph_pooled: Tensor | None = None
    node_emb: Tensor | None = None
    node_batch: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int((self.image_pooled if self.image_pooled is not None else self.graph_pooled).shape[0])

    def select(self, index: int, repeat: int = 1) -> StreamEmbeddings:
        """The image stream of image ``index`` repeated ``repeat`` times (graph parts dropped): the fixed image side
        of ``repeat`` graph variants of one image; empty for a model without an image stream."""
        pooled = self.image_pooled[index:index + 1].expand(repeat, -1) if self.image_pooled is not None else None
        tokens = (self.image_tokens[index:index + 1].expand(repeat, -1, -1) if self.image_tokens is not None
                  else None)
        return StreamEmbeddings(image_pooled=pooled, image_tokens=tokens)


def as_batch(graphs, device: torch.device | str):
    """A torch_geometric ``Batch`` on ``device`` from ``list[SceneGraph]``, a ``Batch`` or one ``Data``, with every
    tensor a plain copy (graphs built under ``torch.inference_mode`` cannot take part in autograd otherwise)."""
    from torch_geometric.data import Batch, Data

    if isinstance(graphs, list | tuple):
        graphs = Batch.from_data_list([g.to_pyg() if not isinstance(g, Data) else g for g in graphs])
    elif getattr(graphs, "batch", None) is None:
        graphs = Batch.from_data_list([graphs])
    out = graphs.clone()
    for store in out.stores:
        for key, value in store.items():
            if isinstance(value, Tensor):
                store[key] = value.detach().clone()
    return out.to(device)


def encode_image(model: nn.Module, images: Tensor, backbone_feats: list[Tensor] | None = None
                 ) -> tuple[Tensor, Tensor]:
    """``(B, 3, H, W)`` -> the image stream's ``(pooled (B, Ci), tokens (B, T, Ci))``: the model's own
    :meth:`~twostream.models.two_stream.TwoStreamClassifier.encode_image` (a shared backbone's C5 from
    ``backbone_feats`` when the caller has them, so that the backbone runs once)."""
    return model.encode_image(images, backbone_feats)


def encode_graphs(model: nn.Module, batch) -> tuple[Tensor, Tensor]:
    """A graph ``Batch`` -> ``(graph_pooled (B, Cg), node_emb (N, Cg))``."""
    return model.graph_encoder(batch)


def encode_streams(model: nn.Module, images: Tensor | None, batch=None,
                   backbone_feats: list[Tensor] | None = None) -> StreamEmbeddings:
    """Both streams of ``model`` for ``images (B, 3, H, W)`` and their graph ``Batch`` (``None`` for an image-only
    model, or to let a model with a segmenter build the graphs itself). A shared backbone runs once
    (``backbone_feats``: its features of ``images``, when the caller already has them). ``images=None``: a
    graph-only model given its graphs (stored graphs: no pixels are read)."""
    if images is None:
        if model.image_encoder is not None or model.shared_backbone or batch is None or model.online_graphs:
            raise ValueError("explain: images=None works only for a graph-only model given graphs")
        emb = StreamEmbeddings()
        emb.graph_pooled, emb.node_emb = encode_graphs(model, batch)
        emb.node_batch = batch.batch
        return emb
    emb = StreamEmbeddings()
    if model.shared_backbone and backbone_feats is None:
        backbone_feats = model.backbone_features(images)
    if model.graph_encoder is not None:
        if batch is None:
            batch, _ = model._build_graphs(images, backbone_feats)
        if int(batch.num_graphs) != images.shape[0]:
            raise ValueError(f"explain: {batch.num_graphs} graphs for {images.shape[0]} images")
        emb.graph_pooled, emb.node_emb = encode_graphs(model, batch)
        emb.node_batch = batch.batch
    if model.image_encoder is not None:
        emb.image_pooled, emb.image_tokens = encode_image(model, images, backbone_feats)
    return emb


def classify(model: nn.Module, emb: StreamEmbeddings) -> Tensor:
    """The fusion and head of ``model`` on stream embeddings -> logits ``(B, num_scenes)`` (the model's own
    :meth:`~twostream.models.two_stream.TwoStreamClassifier.fuse` and head)."""
    return model.forward_head(model.fuse(emb.image_pooled, emb.image_tokens, emb.graph_pooled, emb.node_emb,
                                         emb.node_batch))


# --------------------------------------------------------------------------------------------------------------------
# Replacing a stream by its mean
# --------------------------------------------------------------------------------------------------------------------


def stream_baseline_name(means: dict | None) -> str:
    """How :func:`replace_stream` replaces a stream with these means, in words (for the explanation's method)."""
    if means:
        return f"the training-set mean embedding ({int(means.get('num_images', 0))} training images)"
    return "a zero embedding (the checkpoint stores no training-set means; retrain or re-save to record them)"


def replace_stream(emb: StreamEmbeddings, stream: str, means: dict | None) -> StreamEmbeddings:
    """``emb`` with one stream (``"image"`` or ``"graph"``) replaced by its training-set mean for every image.

    The image stream: pooled vector and every token get the mean (tokens: the stored mean token map when its length
    fits, else the mean token repeated). The graph stream: pooled vector the mean, and no nodes (cross-attention then
    attends to the null token and the mean graph summary only). Without ``means``: zeros.
    """
    means = means or {}
    out = dataclasses.replace(emb)
    if stream == "image":
        if emb.image_pooled is None:
            raise ValueError("replace_stream: the model has no image stream")
        b = emb.image_pooled.shape[0]
        mean = _mean_like(means.get("image_pooled"), emb.image_pooled[0])
        out.image_pooled = mean.expand(b, -1)
        if emb.image_tokens is not None:
            t = emb.image_tokens.shape[1]
            tokens = means.get("image_tokens")
            if tokens is not None and tuple(tokens.shape) == tuple(emb.image_tokens.shape[1:]):
                tokens = tokens.to(emb.image_tokens)
            else:
                token = tokens.mean(dim=0) if tokens is not None else None
                tokens = _mean_like(token, emb.image_tokens[0, 0]).expand(t, -1)
            out.image_tokens = tokens.expand(b, -1, -1)
    elif stream == "graph":
        if emb.graph_pooled is None:
            raise ValueError("replace_stream: the model has no graph stream")
        b = emb.graph_pooled.shape[0]
        out.graph_pooled = _mean_like(means.get("graph_pooled"), emb.graph_pooled[0]).expand(b, -1)
        out.node_emb = emb.node_emb[:0]
        out.node_batch = emb.node_batch[:0]
    else:
        raise ValueError(f"replace_stream: stream must be 'image' or 'graph', got {stream!r}")
    return out


def _mean_like(mean: Tensor | None, like: Tensor) -> Tensor:
    if mean is None or tuple(mean.shape) != tuple(like.shape):
        if mean is not None:
            log.warning("stored stream mean of shape %s does not fit the model's %s; using zeros",
                        tuple(mean.shape), tuple(like.shape))
        return torch.zeros_like(like)
    return mean.to(like)


# --------------------------------------------------------------------------------------------------------------------
# Training-set means
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def compute_stream_means(model: nn.Module, batches: Iterable[dict], *, max_images: int = 2048,
                         device: torch.device | str | None = None) -> dict:
    """Mean stream embeddings of ``model`` over ``batches`` (dicts with ``"image"`` and, unless the model builds
    its own, ``"graph"``: what the engine's loaders yield; a graph-only model on stored graphs needs no image), in
    eval mode, over at most ``max_images`` images.

    Returns the ``"stream_means"`` dict of the module docstring (float32 CPU tensors).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    images_seen = nodes_seen = 0
    try:
        for batch in batches:
            if batch is None:
                continue
            images = batch["image"].to(device) if batch.get("image") is not None else None
            graphs = batch.get("graph") if model.graph_encoder is not None and not model.online_graphs else None
            graphs = graphs.to(device) if graphs is not None else None
            emb = encode_streams(model, images, graphs)
            parts = {"image_pooled": emb.image_pooled, "image_tokens": emb.image_tokens,
                     "graph_pooled": emb.graph_pooled}
            for key, value in parts.items():
                if value is not None:
                    sums[key] = sums.get(key, 0) + value.float().sum(dim=0)
            if emb.node_emb is not None:
                sums["node_emb"] = sums.get("node_emb", 0) + emb.node_emb.float().sum(dim=0)
                nodes_seen += int(emb.node_emb.shape[0])
            images_seen += int(images.shape[0]) if images is not None else int(graphs.num_graphs)
            if images_seen >= max_images:
                break
    finally:
        model.train(was_training)
    means: dict = {k: (v / (nodes_seen if k == "node_emb" else images_seen)).cpu()
                   for k, v in sums.items() if images_seen and (k != "node_emb" or nodes_seen)}
    means["num_images"] = images_seen
    return means


def record_stream_means(run_dir: str | Path, model: nn.Module, batches: Iterable[dict] | None, *,
                        max_images: int = 2048, names: Sequence[str] = ("best.pth", "last.pth")) -> list[Path]:
    """Add ``"stream_means"`` to the run's final checkpoints, each computed with that checkpoint's own weights.

    ``batches``: an iterable over training batches (re-iterated per checkpoint; the classifier task passes its
    training loader). The model's weights are put back as they were. Each file is computed once: the run folder's
    ``.pth`` files that are hard links of a named one (``last.pth`` = ``best.pth`` = the newest
    ``ckpt_e*_s*.pth``) are rewritten as one file and linked again, so the folder holds as many copies on disk as
    before. Returns the files written.
    """
    from twostream.engine.checkpoint import atomic_torch_save, link_checkpoint, load_checkpoint, load_model_state

    run_dir = Path(run_dir)
    if max_images <= 0 or batches is None:
        return []
    files = [run_dir / n for n in names if (run_dir / n).is_file()]
    files += sorted(p for p in run_dir.glob("*.pth") if p.name not in names)
    groups: dict[tuple[int, int], list[Path]] = {}
    for path in files:
        st = os.stat(path)
        groups.setdefault((st.st_dev, st.st_ino), []).append(path)
    groups = {k: group for k, group in groups.items() if group[0].name in names}
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    written = []
    try:
        for group in groups.values():
            ckpt = load_checkpoint(group[0])
            if ckpt.get("stage") != "classifier":
                continue
            load_model_state(model, ckpt["model"], group[0])
            ckpt["stream_means"] = compute_stream_means(model, batches, max_images=max_images)
            written.append(atomic_torch_save(ckpt, group[0]))
            written += [link_checkpoint(group[0], path) for path in group[1:]]
            log.info("stream means over %d training images stored in %s", ckpt["stream_means"]["num_images"],
                     ", ".join(p.name for p in group))
    finally:
        model.load_state_dict(original)
    return written
