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

Each graph's attribution is to its own image's scene logit; graphs of one batch never interact (every layer, norm
and readout works per node or per graph in eval mode), so a batch is explained in one call, image by image.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from twostream.explain.streams import StreamEmbeddings, classify

__all__ = ["METHODS", "GraphAttribution", "GraphStreamModule", "attribute_graphs", "reverse_edges",
           "undirected_scores"]

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
    with the PyG ``Explanation`` they came from (for PyG's metrics)."""

    node_scores: Tensor | None
    edge_scores: Tensor | None
    explanation: object | None
    explainer: object | None


def attribute_graphs(model: nn.Module, graphs, image: StreamEmbeddings | None, targets: Tensor, *,
                     method: str = "integrated_gradients", steps: int = 32, edges: bool = True) -> GraphAttribution:
    """Captum attributions (via PyG's ``CaptumExplainer``) of each graph's nodes and edges to its image's scene
    logit ``targets (B,)``.

    Node scores are summed over the node-input features; ``edges=False`` (or a batch without edges) skips the edge
    mask. A batch without nodes gets no node scores.
    """
    from torch_geometric.explain import Explainer
    from torch_geometric.explain.algorithm import CaptumExplainer

    if method not in METHODS:
        raise ValueError(f"explain: unknown method '{method}'; known: {', '.join(METHODS)}")
    num_nodes = int(graphs.labels.numel())
    num_edges = int(graphs.edge_index.shape[1])
    if num_nodes == 0:
        return GraphAttribution(None, None, None, None)
    name, has_steps = METHODS[method]
    kwargs = {"n_steps": steps} if has_steps else {}
    module = GraphStreamModule(model, graphs, image)
    x = module.node_inputs()
    with_edges = edges and num_edges > 0
    explainer = Explainer(module, CaptumExplainer(name, **kwargs), explanation_type="phenomenon",
                          node_mask_type="attributes", edge_mask_type="object" if with_edges else None,
                          model_config={"mode": "multiclass_classification", "task_level": "graph",
                                        "return_type": "raw"})
    explanation = explainer(x, graphs.edge_index, target=targets, batch=graphs.batch)
    node_scores = explanation.node_mask.detach().sum(dim=1)  # (N, F) -> (N,)
    edge_scores = explanation.edge_mask.detach() if with_edges else None
    return GraphAttribution(node_scores, edge_scores, explanation, explainer)
