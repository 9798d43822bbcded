"""The entry point: explain a batch of images (and their scene graphs) for the predicted or a named scene.

    >>> explainer = SceneExplainer(model, scenes=vocabulary.names, stream_means=ckpt.get("stream_means"))
    >>> [e] = explainer.explain(images, graphs)                  # (1, 3, H, W) and [SceneGraph]
    >>> e.because()
    'dining_room 93% because chair 35%, table 20%; touching chair–table 41%; streams Δp image +0.01, graph +0.62'
    >>> explainer.explain(images, graphs, scene="living_room")  # why (not) another scene

Four parts, each from the library that does it (see the module of each):

- ``graph``: node and edge importance, Captum through ``torch_geometric.explain`` (:mod:`.graph_attribution`);
- ``occlusion``: exact single-node and single-edge deletions, batched (:mod:`.occlusion`);
- ``cam``: Grad-CAM over the image (pytorch-grad-cam, :mod:`.cam`);
- ``streams``: each stream replaced by its training-set mean (:mod:`.streams`), plus what the fusion says about
  how it weighed them (stream weights, gate, attention over the nodes).

Graphs of a batch are explained together but never mixed: each graph's attributions are to its own image's score,
and every layer of the model works per graph in eval mode, so an image's explanation is the same alone or in any
batch (tested). The model's parameters are frozen while explaining (gradients reach the inputs only) and restored
afterwards, as are its train/eval mode and its parameters' ``requires_grad``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from twostream.explain.explanation import SceneExplanation, _f32
from twostream.explain.streams import (
    StreamEmbeddings,
    as_batch,
    classify,
    encode_streams,
    replace_stream,
    stream_baseline_name,
)

__all__ = ["PARTS", "SceneExplainer", "explain_batch", "resolve_scene"]

PARTS = ("graph", "occlusion", "cam", "streams")


def resolve_scene(scene: str | int, scenes: Sequence[str]) -> int:
    """A scene name or class index -> its index; a name outside the vocabulary is one line listing the scenes."""
    if isinstance(scene, bool) or not isinstance(scene, str | int | np.integer):
        raise TypeError(f"explain: a scene is a name or a class index, got {type(scene).__name__}")
    if isinstance(scene, str):
        if scene not in scenes:
            raise ValueError(f"scene '{scene}' is not in the model's vocabulary; scenes: {', '.join(scenes)}")
        return list(scenes).index(scene)
    if not 0 <= int(scene) < len(scenes):
        raise ValueError(f"scene index {int(scene)} is out of range for {len(scenes)} scenes")
    return int(scene)


@contextlib.contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode, parameters frozen, gradients on (also inside ``no_grad``); all restored on exit."""
    training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


class SceneExplainer:
    """Explanations of a ``TwoStreamClassifier``'s scene scores.

    Args:
        model: the classifier (any streams, GNN and fusion).
        scenes: scene names in the model's class order.
        class_table: the label set of the graphs' nodes (for names); default the graphs' own (``SceneGraph``
            inputs) or the model's segmenter's.
        method: ``integrated_gradients`` (default), ``saliency`` or ``input_x_gradient`` (Captum, via PyG).
        steps: integration steps of ``integrated_gradients``.
        stream_means: the checkpoint's ``"stream_means"`` (``None``: zero baseline, said in ``method``).
        parts: which of :data:`PARTS` to compute (``("graph",)`` for attributions alone).
        max_nodes: nodes per forward pass of the occlusion batches.
    """

    def __init__(self, model: nn.Module, scenes: Sequence[str], *, class_table=None,
                 method: str = "integrated_gradients", steps: int = 32, stream_means: dict | None = None,
                 parts: Sequence[str] = PARTS, max_nodes: int = 200_000) -> None:
        from twostream.explain.graph_attribution import METHODS

        if method not in METHODS:
            raise ValueError(f"explain: unknown method '{method}'; known: {', '.join(METHODS)}")
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise ValueError(f"explain: unknown parts {unknown}; known: {', '.join(PARTS)}")
        if len(scenes) != model.num_scenes:
            raise ValueError(f"explain: {len(scenes)} scene names for a model of {model.num_scenes} scenes")
        if steps < 1:
            raise ValueError(f"explain: steps must be at least 1, got {steps}")
        self.model, self.scenes = model, list(scenes)
        self.class_table = class_table
        self.method, self.steps, self.stream_means = method, steps, stream_means
        self.parts, self.max_nodes = tuple(parts), max_nodes
        # What the last explain() call computed, for evaluators that score it further (PyG's fidelity, deletion
        # curves, the check panel): keys batch, embeddings, targets, probs (the target scene's), scene_probs (B, S),
        # attribution.
        self.last: dict = {}

    # ------------------------------------------------------------------------------------------------ helpers

    @property
    def edges_mode(self) -> str:
        """``full`` unless the graph encoder ignores or rewires the edges (``model.gnn.edges``)."""
        enc = self.model.graph_encoder
        return str(getattr(enc, "edges", "full")) if enc is not None else "full"

    def _targets(self, scene, probs: Tensor) -> Tensor:
        b = probs.shape[0]
        if scene is None:
            return probs.argmax(dim=1)
        if isinstance(scene, str | int | np.integer) and not isinstance(scene, bool):
            return torch.full((b,), resolve_scene(scene, self.scenes), dtype=torch.long, device=probs.device)
        scene = list(scene)
        if len(scene) != b:
            raise ValueError(f"explain: {len(scene)} scenes for {b} images")
        return torch.tensor([int(probs[i].argmax()) if s is None else resolve_scene(s, self.scenes)
                             for i, s in enumerate(scene)], dtype=torch.long, device=probs.device)

    def _method_text(self, cam_layer: str | None) -> str:
        from twostream.explain.graph_attribution import METHODS

        name, has_steps = METHODS[self.method]
        m = self.model
        parts = []
        if m.graph_encoder is not None and "graph" in self.parts:
            steps = f", {self.steps} steps, zero baseline" if has_steps else ""
            parts.append(f"nodes, edges: captum {name}{steps} via torch_geometric.explain, attribution to the "
                         "scene logit (nodes: node inputs after the class embedding, summed over features, edges "
                         "present; edges: PyG edge masks, both directions summed, node inputs present)")
        if m.graph_encoder is not None and "occlusion" in self.parts:
            parts.append("occlusion: exact single deletions, drop in the scene probability")
        if m.image_encoder is not None and "cam" in self.parts and cam_layer:
            parts.append(f"image: Grad-CAM at {cam_layer}")
        if "streams" in self.parts:
            parts.append(f"streams: drop in the scene probability when a stream is replaced by "
                         f"{stream_baseline_name(self.stream_means)}")
        return "; ".join(parts)

    def _notes(self, num_nodes: int, num_edges: int) -> list[str]:
        m, notes = self.model, []
        if m.graph_encoder is None:
            notes.append("image-only model: no scene graph, so no node or edge importance; the image (CAM) and "
                         "the image stream only")
        else:
            if m.image_encoder is None:
                notes.append("graph-only model: no image stream, so no CAM")
            if num_nodes == 0:
                notes.append("the scene graph has no nodes: no node or edge importance")
            elif num_edges == 0:
                notes.append("the scene graph has no edges: no edge importance")
            elif self.edges_mode != "full":
                notes.append(f"the model's graph encoder does not use the edges as given (model.gnn.edges="
                             f"{self.edges_mode}): no edge importance")
        return notes

    def _fusion_extras(self, emb: StreamEmbeddings, ptr: Tensor | None) -> list[dict]:
        """Per image, what the fusion says about how it weighed the streams (JSON-ready)."""
        fusion = self.model.fusion
        b = emb.batch_size
        if fusion is None:
            return [{} for _ in range(b)]
        raw = fusion.explain_extras(emb.image_pooled, emb.image_tokens, emb.graph_pooled, emb.node_emb,
                                    emb.node_batch)
        out: list[dict] = [{} for _ in range(b)]
        for i in range(b):
            if "stream_weights" in raw:
                w = _f32(raw["stream_weights"][i].detach().cpu().numpy())
                out[i]["stream_weights"] = {"image": w[0], "graph": w[1]}
            if "gate" in raw:
                gate = raw["gate"][i].detach().float().cpu()
                out[i]["gate"] = {"image_mean": _f32(gate.mean().view(1).numpy())[0],
                                  "image_share": _f32((gate > 0.5).float().mean().view(1).numpy())[0]}
            if "attention" in raw:
                n = int(ptr[i + 1] - ptr[i]) if ptr is not None else 0
                att = _f32(raw["attention"][i, :2 + n].detach().cpu().numpy())
                out[i]["attention"] = {"null": att[0], "summary": att[1], "nodes": att[2:]}
        return out

    # ------------------------------------------------------------------------------------------------ explain

    def explain(self, images: Tensor, graphs=None, scene=None) -> list[SceneExplanation]:
        """Explain each image of ``images (B, 3, H, W)`` (in ``[0, 1]``, the model's input size) with its graph.

        Args:
            graphs: ``list[SceneGraph]`` (or a torch_geometric ``Batch`` of them, with ``class_table`` given to
                the explainer), ``None`` for an image-only model or one that builds its own graphs.
            scene: ``None`` (each image's predicted scene), a scene name or index for all images, or a list with
                one entry (name, index or ``None``) per image.

        Returns:
            One :class:`SceneExplanation` per image (the CAM at the model's input size).
        """
        model = self.model
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"explain: expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        device = next(model.parameters()).device
        with _explaining(model):
            return self._explain(images, graphs, scene, device)

    def _explain(self, images: Tensor, graphs, scene, device: torch.device) -> list[SceneExplanation]:
        from twostream.explain.cam import image_cam
        from twostream.explain.graph_attribution import attribute_graphs, undirected_scores
        from twostream.explain.occlusion import occlusion_scores

        model = self.model
        table = self.class_table
        if isinstance(graphs, list | tuple) and graphs:
            table = table or graphs[0].class_table
        batch = None
        images = images.detach().clone().to(device)
        feats = None  # a shared backbone runs once, as in the model's forward: for the graphs, the image, the CAM
        if model.shared_backbone:
            with torch.no_grad():
                feats = model.backbone_features(images)
        if model.graph_encoder is not None:
            if graphs is None:
                if model.segmenter is None or model.builder is None:
                    raise ValueError("explain: this model reads graphs it cannot build (no segmenter); pass graphs")
                with torch.no_grad():
                    graphs = model._build_graphs(images, feats)[1]["graphs"]
                table = table or graphs[0].class_table
            batch = as_batch(graphs, device)
            if table is None:
                table = model.segmenter.class_table if model.segmenter is not None else None
            if table is None:
                raise ValueError("explain: give class_table= to name the nodes of a Batch of graphs")

        with torch.no_grad():
            emb = encode_streams(model, images, batch, backbone_feats=feats)
            probs = classify(model, emb).float().softmax(dim=1)  # (B, S)
        targets = self._targets(scene, probs)
        b = images.shape[0]
        full = probs[torch.arange(b, device=probs.device), targets]  # (B,)

        attribution = None
        if batch is not None and "graph" in self.parts:
            fixed = StreamEmbeddings(image_pooled=emb.image_pooled, image_tokens=emb.image_tokens)
            attribution = attribute_graphs(model, batch, fixed, targets, method=self.method, steps=self.steps,
                                           edges=self.edges_mode == "full")
        cams, cam_layer = None, None
        if model.image_encoder is not None and "cam" in self.parts:
            fixed = StreamEmbeddings(graph_pooled=emb.graph_pooled, node_emb=emb.node_emb,
                                     node_batch=emb.node_batch)
            cams, cam_layer = image_cam(model, images, fixed, targets, backbone_feats=feats)
        streams: dict[str, Tensor] = {}
        if "streams" in self.parts:
            with torch.no_grad():
                for name, present in (("image", emb.image_pooled), ("graph", emb.graph_pooled)):
                    if present is not None:
                        p = classify(model, replace_stream(emb, name, self.stream_means)).float().softmax(1)
                        streams[name] = full - p[torch.arange(b, device=p.device), targets]
        with torch.no_grad():
            extras = self._fusion_extras(emb, batch.ptr if batch is not None else None)

        edge_pairs = edge_sums = None
        if attribution is not None and attribution.edge_scores is not None:
            edge_pairs, edge_sums = undirected_scores(batch.edge_index, attribution.edge_scores,
                                                      int(batch.labels.numel()))
        self.last = {"batch": batch, "embeddings": emb, "targets": targets, "probs": full, "scene_probs": probs,
                     "attribution": attribution}
        method = self._method_text(cam_layer)
        out = []
        for i in range(b):
            t = int(targets[i])
            e = SceneExplanation(scene=self.scenes[t], scene_index=t, prob=float(full[i]), method=method,
                                 cam=cams[i] if cams is not None else None, extras=extras[i],
                                 streams={"image": None, "graph": None})
            for name, drop in streams.items():
                e.streams[name] = float(drop[i])
            if batch is not None:
                self._fill_graph(e, batch, i, attribution, edge_pairs, edge_sums, table)
                if "occlusion" in self.parts and e.num_nodes:
                    data = batch.get_example(i)
                    with torch.no_grad():
                        node_drop, _, edge_drop = occlusion_scores(
                            model, data, emb.select(i),
                            t, full[i], max_nodes=self.max_nodes)
                    e.node_occlusion = node_drop.cpu().numpy().astype(np.float32)
                    e.edge_occlusion = edge_drop.cpu().numpy().astype(np.float32) if len(e.edges) else None
            e.notes = self._notes(e.num_nodes, len(e.edges))
            out.append(e)
        return out

    def _fill_graph(self, e: SceneExplanation, batch, i: int, attribution, edge_pairs: Tensor | None,
                    edge_sums: Tensor | None, table) -> None:
        """Node names, confidence, edges and attributions of graph ``i`` of ``batch`` (local node ids)."""
        lo, hi = int(batch.ptr[i]), int(batch.ptr[i + 1])
        labels = batch.labels[lo:hi].tolist()
        e.node_names = [table.short_name(int(c)) for c in labels]
        confidence = getattr(batch, "confidence", None)
        if confidence is not None:
            e.node_confidence = confidence[lo:hi].detach().cpu().numpy().astype(np.float32)
        src, dst = batch.edge_index
        mine = (src >= lo) & (src < hi) & (src < dst)
        e.edges = (batch.edge_index[:, mine].t() - lo).cpu().numpy().astype(np.int64).reshape(-1, 2)
        if attribution is None or hi == lo:
            return
        if attribution.node_scores is not None:
            e.node_scores = attribution.node_scores[lo:hi].cpu().numpy().astype(np.float32)
        if edge_pairs is not None:
            keep = (src[edge_pairs] >= lo) & (src[edge_pairs] < hi)
            e.edge_scores = edge_sums[keep].cpu().numpy().astype(np.float32) if len(e.edges) else None


def explain_batch(model: nn.Module, images: Tensor, graphs=None, *, scenes: Sequence[str], scene=None,
                  **kwargs) -> list[SceneExplanation]:
    """One call: :class:`SceneExplainer` ``(model, scenes, **kwargs)`` ``.explain(images, graphs, scene)``."""
    return SceneExplainer(model, scenes, **kwargs).explain(images, graphs, scene=scene)
