"""Node and edge importance through ``torch_geometric.explain``: the classifier as a function of its graph stream.

PyG's :class:`~torch_geometric.explain.Explainer` explains any model whose forward takes ``(x, edge_index,
**kwargs)``. :class:`GraphStreamModule` makes a two-stream scene classifier such a model:

- ``x`` is the node input *after* the class embedding: the input of ``graph_encoder.input_proj``, i.e. the class
  embedding concatenated with the geometry (and projected pooled features). Class ids are integers and have no
  gradient; their embedding is where a node's evidence enters the network, so attributions over ``x`` summed over
  its features are the node's importance, and the zero baseline of integrated gradients is "no node input".
  The module injects ``x`` with a forward pre-hook on ``input_proj``, so whatever the encoder does before it (which
  node inputs it uses, ``model.gnn.node_input``) and after it (layers, readout) is the encoder's own code.
- edge importance comes from PyG's edge masks: the explainer sets ``edge_mask`` on every ``MessagePassing`` layer and
  ``MessagePassing.propagate`` multiplies each message by it (self-loops that GCN and GAT add keep weight 1). GCN,
  GraphSAGE, GAT and GATv2 all go through ``propagate`` (checked by the tests: a mask of ones changes nothing, and the
  mask's gradient reaches every edge). Both directions of an undirected edge are summed into one score.
- the image stream's embedding is computed once and held fixed; fusion and head are the model's own.
- nodes and edges are attributed in two explainer calls, each with the other input at its actual value: node
  importance integrates the node inputs from zero with every edge present, edge importance integrates the edge masks
  from zero (no messages) with every node input present. One joint path (both from zero at once) credits an edge
  with what its endpoints' identities do as they appear: on the relation-only set (docs/explanations.md) a model
  decided by one contact had that contact ranked first by the separate edge path in 100% of the images, by the
  joint path in 50%.

Each graph's attribution is to its own image's scene logit; graphs of one batch never interact (every layer, norm
and readout works per node or per graph in eval mode), so a batch is explained in one call, image by image.

Speed. PyG's own ``CaptumExplainer`` hands Captum a model that takes one input at a time (it forces
``internal_batch_size=1``), so integrated gradients with 32 steps is 32 sequential forward and backward passes, each
a handful of small kernels: ~1 s for one image on a CPU. :class:`BatchedCaptumExplainer` is the same algorithm (a
PyG ``ExplainerAlgorithm``, used through ``Explainer``, returning its ``Explanation``) whose Captum model lays the
``S`` interpolated inputs side by side as ``S`` copies of the batch in one torch_geometric batch (node inputs or edge
masks of copy ``s`` from step ``s``), so Captum runs all steps in one pass (``internal_batch_size``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.explain.algorithm import ExplainerAlgorithm

from twostream.explain.occlusion import EDGE_KEYS, NODE_KEYS
from twostream.explain.streams import StreamEmbeddings, classify

__all__ = ["METHODS", "BatchedCaptumExplainer", "GraphAttribution", "GraphStreamModule", "attribute_graphs",
           "repeat_batch", "reverse_edges", "undirected_scores"]

# method name -> (captum.attr class name, needs n_steps). Captum methods PyG's CaptumExplainer supports without a
# user-given baseline.
METHODS: dict[str, tuple[str, bool]] = {
    "integrated_gradients": ("IntegratedGradients", True),
    "saliency": ("Saliency", False),
    "input_x_gradient": ("InputXGradient", False),
}


class GraphStreamModule(nn.Module):
    """``forward(x, edge_index, batch) -> logits (B, num_scenes)``: ``model`` with its image stream held fixed.

    Args:
        model: a ``TwoStreamClassifier`` with a graph stream.
        graphs: the torch_geometric ``Batch`` being explained (labels, edge attributes, pooled features: everything
            but ``x`` and ``edge_index`` is read from it).
        image: the fixed image-stream embedding of the batch's images (``StreamEmbeddings`` with ``image_pooled``
            and ``image_tokens``), or ``None`` for a graph-only model.

    Shapes: ``x (N, F)`` the node inputs of :meth:`node_inputs`; ``edge_index (2, E)`` the batch's own edges (the
    explainer passes them through; edge attributes are aligned with them); ``batch (N,)`` the graph of each node.
    """

    def __init__(self, model: nn.Module, graphs, image: StreamEmbeddings | None = None) -> None:
        super().__init__()
        if model.graph_encoder is None:
            raise ValueError("GraphStreamModule: the model has no graph stream (an image-only model)")
        self.model = model
        self.graphs = graphs
        self.image = image or StreamEmbeddings()
        # A new module is in training mode; PyG's Explainer.get_prediction reads the wrapper's mode and puts it back
        # with train(mode), which recurses into the classifier: take the classifier's own mode, so that a call after
        # the explanation (PyG's fidelity) cannot leave a model in eval mode training (BatchNorm statistics, dropout).
        self.train(model.training)

    @torch.no_grad()
    def node_inputs(self) -> Tensor:
        """``(N, F)`` the encoder's own input of ``input_proj`` for the batch (class embedding, geometry, ...)."""
        seen: list[Tensor] = []
        hook = self.model.graph_encoder.input_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        try:
            self.model.graph_encoder(self.graphs)
        finally:
            hook.remove()
        return seen[0].detach().clone()

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None) -> Tensor:
        if edge_index.shape[1] != self.graphs.edge_index.shape[1]:
            raise ValueError(f"GraphStreamModule: edge_index has {edge_index.shape[1]} edges but the batch "
                             f"{self.graphs.edge_index.shape[1]}; edges are explained through masks, not removed")
        graphs = copy.copy(self.graphs)  # shallow: only edge_index (and batch) are swapped
        graphs.edge_index = edge_index
        if batch is not None:
            graphs.batch = batch
        # the hook lives for this call only: the model is left as it was, even if the call fails
        hook = self.model.graph_encoder.input_proj.register_forward_pre_hook(lambda module, args: (x,))
        try:
            graph_pooled, node_emb = self.model.graph_encoder(graphs)
        finally:
            hook.remove()
        emb = StreamEmbeddings(image_pooled=self.image.image_pooled, image_tokens=self.image.image_tokens,
                               graph_pooled=graph_pooled, node_emb=node_emb, node_batch=graphs.batch)
        return classify(self.model, emb)


def repeat_batch(graphs, copies: int):
    """``copies`` copies of a torch_geometric ``Batch`` of ``B`` graphs as one ``Batch`` of ``copies * B`` graphs
    (copy ``s`` holds graphs ``s * B .. s * B + B - 1``), node- and edge-level tensors repeated, no Python loop."""
    from torch_geometric.data import Batch

    n, e, b = int(graphs.labels.numel()), int(graphs.edge_index.shape[1]), int(graphs.num_graphs)
    device = graphs.edge_index.device
    out = Batch()
    for key, value in graphs.items():
        if not isinstance(value, Tensor) or key in ("edge_index", "batch", "ptr"):
            continue
        node_level = value.shape[:1] == (n,) and key in NODE_KEYS
        edge_level = value.shape[:1] == (e,) and key in EDGE_KEYS
        if node_level or edge_level:
            out[key] = value.repeat(copies, *([1] * (value.dim() - 1)))
    step = torch.arange(copies, device=device)
    out.edge_index = (graphs.edge_index[:, None, :] + (step * n)[None, :, None]).reshape(2, -1)  # (2, S * E)
    out.batch = (graphs.batch[None, :] + (step * b)[:, None]).reshape(-1)  # (S * N,)
    out.ptr = torch.cat([(graphs.ptr[:-1][None, :] + (step * n)[:, None]).reshape(-1),
                         torch.tensor([copies * n], device=device)])
    return out


class _StepBatchedModel(nn.Module):
    """Captum's model for :class:`BatchedCaptumExplainer`: ``(S, N, F)`` node inputs or ``(S, E)`` edge masks ->
    ``(S,)`` the sum over graphs of each graph's target logit, all ``S`` steps in one forward pass."""

    def __init__(self, module: GraphStreamModule, x: Tensor, target: Tensor, mode: str) -> None:
        super().__init__()
        self.module, self.x, self.target, self.mode = module, x, target, mode

    def forward(self, inputs: Tensor) -> Tensor:
        from torch_geometric.explain.algorithm.utils import clear_masks, set_masks

        steps = inputs.shape[0]
        graphs = self.module.graphs
        big = repeat_batch(graphs, steps)
        image = self.module.image
        rep = StreamEmbeddings(
            image_pooled=image.image_pooled.repeat(steps, 1) if image.image_pooled is not None else None,
            image_tokens=image.image_tokens.repeat(steps, 1, 1) if image.image_tokens is not None else None)
        wide = GraphStreamModule(self.module.model, big, rep)
        if self.mode == "node":
            logits = wide(inputs.reshape(-1, inputs.shape[-1]), big.edge_index, big.batch)  # (S * B, C)
        else:
            set_masks(self.module.model, inputs.reshape(-1), big.edge_index, apply_sigmoid=False)
            try:
                logits = wide(self.x.repeat(steps, 1), big.edge_index, big.batch)
            finally:
                clear_masks(self.module.model)
        b = int(graphs.num_graphs)
        picked = logits.view(steps, b, -1).gather(2, self.target.view(1, b, 1).expand(steps, b, 1))  # (S, B, 1)
        return picked.sum(dim=(1, 2))  # (S,): graphs are independent, so each gets its own gradient


class BatchedCaptumExplainer(ExplainerAlgorithm):
    """A torch_geometric ``ExplainerAlgorithm`` running a Captum attribution method with its steps batched
    (module docstring). Node masks ``attributes`` or edge masks ``object``, one of them per explainer; graph-level
    multiclass models whose forward is ``(x, edge_index, batch=...)`` (a :class:`GraphStreamModule`).

    Args:
        method: a Captum method name: ``IntegratedGradients``, ``Saliency`` or ``InputXGradient``.
        steps: integration steps (integrated gradients).
        max_nodes: at most this many nodes per forward pass (steps are chunked to fit).
    """

    def __init__(self, method: str = "IntegratedGradients", steps: int = 32, max_nodes: int = 200_000) -> None:
        super().__init__()
        self.method, self.steps, self.max_nodes = method, steps, max_nodes

    def supports(self) -> bool:
        from torch_geometric.explain.config import MaskType, ModelMode, ModelTaskLevel

        c, m = self.explainer_config, self.model_config
        node, edge = c.node_mask_type, c.edge_mask_type
        return ((node == MaskType.attributes) != (edge == MaskType.object)
                and node in (None, MaskType.attributes) and edge in (None, MaskType.object)
                and m.mode == ModelMode.multiclass_classification and m.task_level == ModelTaskLevel.graph)

    def forward(self, model: nn.Module, x: Tensor, edge_index: Tensor, *, target: Tensor, index=None,
                batch: Tensor | None = None, **kwargs):
        import captum.attr
        from torch_geometric.explain import Explanation

        mode = "node" if self.explainer_config.node_mask_type is not None else "edge"
        captum_model = _StepBatchedModel(model, x, target, mode)
        inputs = x[None] if mode == "node" else torch.ones(1, edge_index.shape[1], device=x.device)
        method = getattr(captum.attr, self.method)(captum_model)
        extra = {}
        if self.method == "IntegratedGradients":
            per_pass = max(1, self.max_nodes // max(int(x.shape[0]), 1))
            extra = {"n_steps": self.steps, "internal_batch_size": min(self.steps, per_pass)}
        attribution = method.attribute(inputs.requires_grad_(), **extra)[0]  # (N, F) or (E,)
        if mode == "node":
            return Explanation(node_mask=attribution.detach())
        return Explanation(edge_mask=attribution.detach())


def reverse_edges(edge_index: Tensor, num_nodes: int) -> Tensor:
    """``(E,)`` position of each directed edge's reverse in ``edge_index (2, E)`` (every edge has one: graphs store
    both directions)."""
    src, dst = edge_index
    key = src * max(num_nodes, 1) + dst
    order = torch.argsort(key)
    pos = torch.searchsorted(key[order], dst * max(num_nodes, 1) + src)
    rev = order[pos.clamp(max=max(key.numel() - 1, 0))]
    if key.numel() and not torch.equal(key[rev], dst * max(num_nodes, 1) + src):
        raise ValueError("explain: the graph's edges are not stored in both directions")
    return rev


def undirected_scores(edge_index: Tensor, scores: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Directed ``scores (E,)`` -> each undirected edge once: ``(positions (M,), summed scores (M,))`` where
    ``positions`` are the directed edges with ``source < target``, in their order."""
    rev = reverse_edges(edge_index, num_nodes)
    keep = torch.nonzero(edge_index[0] < edge_index[1]).view(-1)
    return keep, scores[keep] + scores[rev[keep]]


@dataclass
class GraphAttribution:
    """Per node ``(N,)`` and per directed edge ``(E,)`` attributions of one batch (``None`` where not computed),
    with the PyG ``Explainer`` and node ``Explanation`` they came from (for PyG's metrics)."""

    node_scores: Tensor | None
    edge_scores: Tensor | None
    explanation: object | None
    explainer: object | None


def attribute_graphs(model: nn.Module, graphs, image: StreamEmbeddings | None, targets: Tensor, *,
                     method: str = "integrated_gradients", steps: int = 32, edges: bool = True) -> GraphAttribution:
    """Captum attributions (through :class:`BatchedCaptumExplainer`, PyG's ``CaptumExplainer`` batched) of each
    graph's nodes and edges to its image's scene logit ``targets (B,)``: one explainer for the node inputs (edges
    present), one for the edge masks (node inputs present).

    Node scores are summed over the node-input features; ``edges=False`` (or a batch without edges) skips the edge
    mask. A batch without nodes gets no scores.
    """
    from torch_geometric.explain import Explainer

    if method not in METHODS:
        raise ValueError(f"explain: unknown method '{method}'; known: {', '.join(METHODS)}")
    num_nodes = int(graphs.labels.numel())
    num_edges = int(graphs.edge_index.shape[1])
    if num_nodes == 0:
        return GraphAttribution(None, None, None, None)
    name, _ = METHODS[method]
    module = GraphStreamModule(model, graphs, image)
    x = module.node_inputs()

    def explainer_for(node_mask_type: str | None, edge_mask_type: str | None) -> Explainer:
        return Explainer(module, BatchedCaptumExplainer(name, steps=steps), explanation_type="phenomenon",
                         node_mask_type=node_mask_type, edge_mask_type=edge_mask_type,
                         model_config={"mode": "multiclass_classification", "task_level": "graph",
                                       "return_type": "raw"})

    node_explainer = explainer_for("attributes", None)
    explanation = node_explainer(x, graphs.edge_index, target=targets, batch=graphs.batch)
    node_scores = explanation.node_mask.detach().sum(dim=1)  # (N, F) -> (N,)
    edge_scores = None
    if edges and num_edges > 0:
        edge_explanation = explainer_for(None, "object")(x, graphs.edge_index, target=targets, batch=graphs.batch)
        edge_scores = edge_explanation.edge_mask.detach()  # (E,)
    return GraphAttribution(node_scores, edge_scores, explanation, node_explainer)
