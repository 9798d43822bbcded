"""The graph stream: a torch-geometric encoder from a batch of scene graphs to one vector per graph.

Nodes enter as a learned embedding of their class id concatenated with their geometric attributes (area, centroid,
bbox) and, optionally, features pooled from the segmenter under their mask; a stack of message-passing layers (GCN,
GraphSAGE, GAT or GATv2, the :data:`CONVS` table) mixes them along the "touches" edges; a readout (mean, max, sum or
gated attention, the :data:`READOUTS` table) pools each graph::

    >>> from torch_geometric.data import Batch
    >>> enc = GraphEncoder(num_classes=151, conv="gat", hidden_dim=64, num_layers=2, heads=4)
    >>> batch = Batch.from_data_list([g.to_pyg() for g in scene_graphs])
    >>> graph_emb, node_emb = enc(batch)  # (B, 64), (N, 64)

Graphs of every size work in one batch, including a single node without edges and a graph with no nodes at all (an
image whose pixels are all "other"): the readout of an empty graph is a learned vector, never NaN.

Edge attributes (``edge_attr``: boundary / sqrt(HW), dx, dy, distance) are used where the layer takes them: GAT and
GATv2 attend with them (``edge_dim``). GCN takes one scalar weight per edge; it gets the *boundary share*
``w_ji = b_ij / sum_k b_ik``, the fraction of node i's boundary that touches j, so with its self-loop (weight 1) every
node with neighbours has degree 2 and aggregates half itself, half its neighbours weighted by how much they touch it.
GraphSAGE takes no edge attributes (mean aggregation over the plain adjacency).

Ablations of the graph itself are settings of the encoder (``model.gnn.edges``, ``model.gnn.node_input``), so every
path that runs it (training, evaluation, inference, online graphs, every fusion) gets them:

- ``edges="none"``, the bag of objects: the edge set is replaced by an empty one before the first layer, so no message
  passes between nodes. With only their self loops the layers become per-node maps (GCN: ``W h_i + b``; SAGE: its
  root weight plus the neighbour bias; GAT / GATv2: attention over the node itself, weight 1, so ``W h_i + b``): the
  encoder is a DeepSets network (per-node layers, then the readout), and its output is exactly the same for any edge
  set. The parameters only neighbours use (GAT's attention vectors and edge projection, SAGE's neighbour weight) are
  kept, so the model has the same shape and the same initial weights as ``full`` for a given seed, and get zero
  gradients.
- ``edges="shuffled"``: each graph is rewired at random keeping every node's degree
  (:func:`~twostream.graph.rewire.rewire_degree_preserving`, seeded by the graph's content and the epoch that
  :meth:`GraphEncoder.set_epoch` last set; in eval mode always :data:`~twostream.graph.rewire.EVAL_EPOCH`). Edge
  attributes are recomputed for the new pairs (centroid offset and distance); each edge keeps its boundary length, so
  the boundary-share weights of GCN stay a distribution over a node's contacts.
- ``node_input="class"``: nodes enter as their class embedding alone, and no edge attribute is used either (they
  hold centroid offsets and boundary lengths): which objects there are and which touch which, no geometry anywhere.
  Pooled segmenter features, when configured (``graph.pool_features``), are still added.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GATv2Conv, GCNConv, SAGEConv
from torch_geometric.nn.aggr import AttentionalAggregation, MaxAggregation, MeanAggregation, SumAggregation
from torch_geometric.nn.norm import BatchNorm, GraphNorm, LayerNorm
from torch_geometric.utils import scatter

from twostream.config import GNNConfig
from twostream.graph.rewire import EVAL_EPOCH, graph_seeds, rewire_degree_preserving
from twostream.graph.scene_graph import EDGE_ATTR_DIM, NODE_ATTR_DIM

__all__ = ["CONVS", "EDGE_MODES", "NODE_INPUTS", "NORMS", "READOUTS", "GraphEncoder", "build_graph_encoder"]

# What the layers see of the scene graph's edges (the edge ablations; see the module docstring).
EDGE_MODES = ("full", "none", "shuffled")
# What a node starts from: its class and geometry (area, centroid, bbox), or its class alone (and no edge attributes).
NODE_INPUTS = ("class_geometry", "class")

# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def boundary_share(boundary: Tensor, edge_index: Tensor, num_nodes: int, eps: float = 1e-6) -> Tensor:
    """GCN edge weights: ``(E,)`` boundary lengths -> ``(E,)`` share of the *target* node's total boundary.

    For every node the weights of its incoming edges sum to 1 (``eps`` keeps a zero-length boundary, possible with a
    tolerance, from dividing by zero). Any positive scale of ``boundary`` gives the same result.
    """
    b = boundary.clamp_min(0) + eps  # (E,)
    total = scatter(b, edge_index[1], dim=0, dim_size=num_nodes, reduce="sum")  # (N,)
    return b / total[edge_index[1]]


def shuffle_edge_attr(edge_attr: Tensor, edge_index: Tensor, changed: Tensor, centroid: Tensor) -> Tensor:
    """Edge attributes of rewired edges: ``(E, 4)`` boundary / sqrt(HW), dx, dy, distance -> the same with the offset
    and distance recomputed from ``centroid (N, 2)`` where ``changed (E,)``; the boundary stays with its edge."""
    src, dst = edge_index
    offset = centroid[dst] - centroid[src]  # (E, 2)
    fresh = torch.cat([edge_attr[:, :1], offset, offset.norm(dim=1, keepdim=True)], dim=1)  # (E, 4)
    return torch.where(changed[:, None], fresh.to(edge_attr.dtype), edge_attr)


def _make_conv(conv: str, dim: int, heads: int, dropout: float, use_edge_attr: bool) -> nn.Module:
    """One ``dim -> dim`` message-passing layer of kind ``conv``."""
    if conv in ("gat", "gatv2"):
        # Heads are concatenated, so each produces dim / heads channels; attention dropout as in Velickovic et al.
        return CONVS[conv](dim, dim // heads, heads=heads, concat=True, dropout=dropout,
                           edge_dim=EDGE_ATTR_DIM if use_edge_attr else None, add_self_loops=True)
    if conv == "gcn":
        return GCNConv(dim, dim, add_self_loops=True, normalize=True)
    return SAGEConv(dim, dim, aggr="mean")


# name -> message-passing layer class. A new layer is one entry here plus, if it takes edge data, a case in
# _make_conv and GraphEncoder._conv_kwargs.
CONVS: dict[str, type[nn.Module]] = {"gcn": GCNConv, "sage": SAGEConv, "gat": GATConv, "gatv2": GATv2Conv}

# name -> normalisation layer factory (torch_geometric.nn.norm). "layer" normalises each node over its own channels
# (mode="node"), so a node's output never depends on how many other nodes its graph has; "graph" is GraphNorm
# (Cai et al. 2021), per graph over its nodes; "batch" is BatchNorm over all nodes of the batch.
NORMS: dict[str, Callable[[int], nn.Module] | None] = {
    "none": None,
    "batch": lambda dim: BatchNorm(dim, allow_single_element=True),
    "layer": lambda dim: LayerNorm(dim, mode="node"),
    "graph": lambda dim: GraphNorm(dim),
}

# name -> readout factory. "attention" is the gated attention pooling of Li et al. 2016 (AttentionalAggregation); its
# gate has no bias because a softmax over a graph's nodes ignores a shift shared by all of them (it would never learn).
READOUTS: dict[str, Callable[[int], nn.Module]] = {
    "mean": lambda dim: MeanAggregation(),
    "max": lambda dim: MaxAggregation(),
    "sum": lambda dim: SumAggregation(),
    "attention": lambda dim: AttentionalAggregation(gate_nn=nn.Linear(dim, 1, bias=False)),
}


def _check_choice(kind: str, value: str, table: dict | tuple) -> None:
    if value not in table:
        raise ValueError(f"unknown GNN {kind} '{value}'; known: {', '.join(table)}")


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------


class GNNLayer(nn.Module):
    r"""One message-passing step with normalisation, activation, dropout and an optional residual connection:

    .. math::
        \mathbf{h}' = \mathbf{h} + \mathrm{Dropout}(\mathrm{GELU}(\mathrm{Norm}(\mathrm{Conv}(\mathbf{h}, A, e))))

    (without the leading :math:`\mathbf{h}` when ``residual=False``).
    """

    def __init__(self, conv: str, dim: int, *, heads: int, dropout: float, residual: bool, norm: str,
                 use_edge_attr: bool) -> None:
        super().__init__()
        self.kind, self.residual = conv, residual
        self.use_edge_attr = use_edge_attr and conv in ("gat", "gatv2", "gcn")
        self.conv = _make_conv(conv, dim, heads, dropout, self.use_edge_attr)
        factory = NORMS[norm]
        self.norm = factory(dim) if factory is not None else None
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        if self.norm is not None:
            self.norm.reset_parameters()

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor | None, edge_weight: Tensor | None,
                batch: Tensor, num_graphs: int) -> Tensor:
        """``h (N, D)``, ``edge_index (2, E)``, ``edge_attr (E, 4)`` or None, ``edge_weight (E,)`` or None,
        ``batch (N,)`` -> ``(N, D)``."""
        if self.kind in ("gat", "gatv2"):
            out = self.conv(h, edge_index, edge_attr=edge_attr if self.use_edge_attr else None)
        elif self.kind == "gcn":
            out = self.conv(h, edge_index, edge_weight=edge_weight if self.use_edge_attr else None)
        else:
            out = self.conv(h, edge_index)
        if isinstance(self.norm, GraphNorm):
            out = self.norm(out, batch, batch_size=num_graphs)  # batch_size given: no max() over an empty batch
        elif self.norm is not None:
            out = self.norm(out)
        out = self.dropout(F.gelu(out))
        return h + out if self.residual else out


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


class GraphEncoder(nn.Module):
    r"""Scene-graph encoder: class embeddings and geometry in, one vector per graph (and per node) out.

    .. math::
        \mathbf{h}_i^{(0)} &= \mathbf{W}_{\mathrm{in}} \left[ \mathbf{E}[c_i] \,\Vert\, \mathbf{a}_i
            \,\Vert\, \mathbf{W}_f \mathbf{f}_i \right] \\
        \mathbf{h}^{(l+1)} &= \mathbf{h}^{(l)} + \mathrm{Dropout}\big(\mathrm{GELU}(\mathrm{Norm}(
            \mathrm{Conv}_l(\mathbf{h}^{(l)}, A, \mathbf{e})))\big), \quad l = 0 \dots L-1 \\
        \mathbf{g} &= \mathrm{Readout}\big(\{\mathbf{h}_i^{(L)}\}_{i \in G}\big), \quad
            \mathbf{g} = \mathbf{g}_\varnothing \text{ (learned) if } G \text{ has no nodes}

    with :math:`c_i` the class id, :math:`\mathbf{a}_i` the node attributes, :math:`\mathbf{f}_i` pooled segmenter
    features (only when ``feature_dim > 0``) and :math:`\mathbf{e}` the edge attributes (see the module docstring for
    which layer uses what).

    Args:
        num_classes: size of the class table node labels index (``len(class_table)``).
        conv: message-passing layer, a key of :data:`CONVS` (``gcn``, ``sage``, ``gat``, ``gatv2``).
        hidden_dim: width of every layer and of the outputs (default ``256``).
        num_layers: message-passing layers (default ``3``).
        heads: attention heads of ``gat``/``gatv2``; must divide ``hidden_dim`` (default ``4``).
        dropout: dropout after each layer and on attention coefficients (default ``0.1``).
        residual: add each layer's input to its output (default ``True``).
        norm: a key of :data:`NORMS` (default ``"layer"``).
        readout: a key of :data:`READOUTS` (default ``"attention"``).
        use_edge_attr: use edge attributes where the layer takes them (gat, gatv2; gcn as a boundary weight).
        edges: a value of :data:`EDGE_MODES`: ``"full"`` (default), ``"none"`` (bag of objects) or ``"shuffled"``
            (degree-preserving rewiring); see the module docstring.
        node_input: a value of :data:`NODE_INPUTS`: ``"class_geometry"`` (default) or ``"class"`` (class embedding
            only, and no edge attributes, whatever ``use_edge_attr`` says).
        shuffle_rounds: ``edges="shuffled"``: rounds of simultaneous double edge swaps (each attempts ``E_g / 2`` swaps
            in a graph of ``E_g`` undirected edges; default ``10``).
        class_embed_dim: width of the class-id embedding (default ``64``).
        node_attr_dim: width of ``x`` (default ``NODE_ATTR_DIM = 7``).
        feature_dim: width of pooled segmenter features ``features``; ``0`` (default) ignores them.

    Shapes:
        - **input:** a torch_geometric ``Batch`` with ``labels (N,)`` int64, ``x (N, node_attr_dim)``,
          ``edge_index (2, E)`` int64, ``edge_attr (E, 4)``, ``batch (N,)``, ``num_graphs = B``, and
          ``features (N, feature_dim)`` when ``feature_dim > 0``.
        - **output:** ``graph_emb (B, hidden_dim)``, ``node_emb (N, hidden_dim)``.
    """

    def __init__(self, num_classes: int, *, conv: str = "gat", hidden_dim: int = 256, num_layers: int = 3,
                 heads: int = 4, dropout: float = 0.1, residual: bool = True, norm: str = "layer",
                 readout: str = "attention", use_edge_attr: bool = True, edges: str = "full",
                 node_input: str = "class_geometry", shuffle_rounds: int = 10, class_embed_dim: int = 64,
                 node_attr_dim: int = NODE_ATTR_DIM, feature_dim: int = 0) -> None:
        super().__init__()
        _check_choice("layer", conv, CONVS)
        _check_choice("norm", norm, NORMS)
        _check_choice("readout", readout, READOUTS)
        _check_choice("edges mode", edges, EDGE_MODES)
        _check_choice("node input", node_input, NODE_INPUTS)
        if num_classes < 1 or hidden_dim < 1 or num_layers < 1:
            raise ValueError(f"GraphEncoder: num_classes, hidden_dim and num_layers must be positive, got "
                             f"{num_classes}, {hidden_dim}, {num_layers}")
        if conv in ("gat", "gatv2") and hidden_dim % heads:
            raise ValueError(f"GraphEncoder: hidden_dim ({hidden_dim}) must be divisible by heads ({heads}) for "
                             f"'{conv}', whose heads are concatenated")
        self.num_classes, self.conv, self.hidden_dim, self.num_layers = num_classes, conv, hidden_dim, num_layers
        self.heads, self.dropout, self.residual, self.norm = heads, dropout, residual, norm
        self.readout_name, self.use_edge_attr, self.class_embed_dim = readout, use_edge_attr, class_embed_dim
        self.node_attr_dim, self.feature_dim = node_attr_dim, feature_dim
        self.edges, self.node_input, self.shuffle_rounds = edges, node_input, shuffle_rounds
        # class-only nodes get no edge attributes either: offsets between centroids would bring the geometry back
        self.edge_attr_used = use_edge_attr and node_input == "class_geometry" and conv in ("gat", "gatv2", "gcn")
        self.epoch = 0  # what edges="shuffled" rewires with in training (set_epoch)

        self.class_embed = nn.Embedding(num_classes, class_embed_dim)
        if feature_dim > 0:
            self.feature_proj = nn.Linear(feature_dim, class_embed_dim)
        else:
            self.register_module("feature_proj", None)
        geometry_dim = node_attr_dim if node_input == "class_geometry" else 0
        in_dim = class_embed_dim + geometry_dim + (class_embed_dim if feature_dim > 0 else 0)
        self.input_proj = nn.Linear(in_dim, hidden_dim)
        self.layers = nn.ModuleList(
            GNNLayer(conv, hidden_dim, heads=heads, dropout=dropout, residual=residual, norm=norm,
                     use_edge_attr=self.edge_attr_used)
            for _ in range(num_layers)
        )
        self.readout = READOUTS[readout](hidden_dim)
        # The readout of a graph with no nodes (an all-"other" image); zeros at init, learned like any bias.
        self.empty_embedding = nn.Parameter(torch.zeros(hidden_dim))
        self.reset_parameters()

    @property
    def num_features(self) -> int:
        """Width of ``graph_emb`` and ``node_emb``."""
        return self.hidden_dim

    def reset_parameters(self) -> None:
        """Re-draw every parameter (embedding, projections, layers, norms, readout gate) and zero the empty-graph
        embedding; after ``torch.manual_seed(s)`` two encoders of the same shape end up identical."""
        nn.init.normal_(self.class_embed.weight)
        if self.feature_proj is not None:
            self.feature_proj.reset_parameters()
        self.input_proj.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        if hasattr(self.readout, "reset_parameters"):
            self.readout.reset_parameters()
        nn.init.zeros_(self.empty_embedding)

    def set_epoch(self, epoch: int) -> None:
        """The training epoch ``edges="shuffled"`` rewires with (the trainer calls it once per epoch); in eval mode
        the encoder rewires with the fixed :data:`~twostream.graph.rewire.EVAL_EPOCH` instead."""
        self.epoch = int(epoch)

    def node_inputs(self, batch) -> Tensor:
        """``(N, hidden_dim)`` initial node states :math:`\\mathbf{h}^{(0)}` of a batch."""
        parts = [self.class_embed(batch.labels)]
        if self.node_input == "class_geometry":
            parts.append(batch.x.to(self.input_proj.weight.dtype))
        if self.feature_proj is not None:
            features = getattr(batch, "features", None)
            if features is None:
                raise ValueError(f"GraphEncoder was built with feature_dim={self.feature_dim} but the graphs carry no "
                                 "'features'; build graphs with pooled features (graph.pool_features=true)")
            parts.append(self.feature_proj(features.to(self.input_proj.weight.dtype)))
        return self.input_proj(torch.cat(parts, dim=1))  # (N, class_embed [+ attr] [+ class_embed]) -> (N, D)

    def graph_edges(self, batch, node_batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor | None]:
        """The edges the layers see under :attr:`edges`: ``(edge_index (2, E'), edge_attr (E', 4) or None)``."""
        edge_index = batch.edge_index
        edge_attr = getattr(batch, "edge_attr", None) if self.edge_attr_used else None
        if self.edges == "none":  # no neighbours: every layer sees each node alone (and its self loop)
            empty_attr = None if edge_attr is None else edge_attr.new_zeros((0, edge_attr.shape[1]))
            return edge_index.new_zeros((2, 0)), empty_attr
        if self.edges == "shuffled":
            seeds = graph_seeds(batch.labels, edge_index, node_batch, num_graphs)  # (B,)
            epoch = self.epoch if self.training else EVAL_EPOCH
            edge_index, changed = rewire_degree_preserving(edge_index, node_batch, num_graphs, seeds, epoch=epoch,
                                                           rounds=self.shuffle_rounds)
            if edge_attr is not None:
                edge_attr = shuffle_edge_attr(edge_attr, edge_index, changed, batch.x[:, 1:3].to(edge_attr.dtype))
        return edge_index, edge_attr

    def forward(self, batch) -> tuple[Tensor, Tensor]:
        """A ``Batch`` of ``B`` graphs with ``N`` nodes in all -> ``(graph_emb (B, D), node_emb (N, D))``."""
        n = int(batch.labels.numel())
        node_batch = getattr(batch, "batch", None)
        num_graphs = int(getattr(batch, "num_graphs", 1))
        if node_batch is None:  # a single Data, not a Batch
            node_batch = batch.labels.new_zeros(n)
        if self.edge_attr_used and getattr(batch, "edge_attr", None) is None:
            raise ValueError(f"GraphEncoder({self.conv}, use_edge_attr=True): the graphs carry no edge_attr; "
                             "build them with SceneGraph.to_pyg() or set model.gnn.use_edge_attr=false")
        edge_index, edge_attr = self.graph_edges(batch, node_batch, num_graphs)
        edge_weight = None
        if self.conv == "gcn" and self.edge_attr_used:
            edge_weight = boundary_share(edge_attr[:, 0], edge_index, n)
        if edge_attr is not None:
            edge_attr = edge_attr.to(self.input_proj.weight.dtype)

        h = self.node_inputs(batch)  # (N, D)
        for layer in self.layers:
            h = layer(h, edge_index, edge_attr, edge_weight, node_batch, num_graphs)  # (N, D)

        graph_emb = self.readout(h, index=node_batch, dim_size=num_graphs)  # (B, D); empty graphs read 0
        counts = torch.bincount(node_batch, minlength=num_graphs)[:num_graphs]  # (B,)
        empty = (counts == 0)[:, None]  # (B, 1)
        graph_emb = torch.where(empty, self.empty_embedding.to(graph_emb.dtype).expand_as(graph_emb), graph_emb)
        return graph_emb, h

    def __repr__(self) -> str:
        edge = "edge_attr" if self.edge_attr_used and self.conv in ("gat", "gatv2") else (
            "boundary_weight" if self.edge_attr_used and self.conv == "gcn" else "no_edge_attr")
        heads = f", heads={self.heads}" if self.conv in ("gat", "gatv2") else ""
        feats = f", feature_dim={self.feature_dim}" if self.feature_dim else ""
        ablation = "" if self.edges == "full" else f", edges={self.edges}"
        ablation += "" if self.node_input == "class_geometry" else f", node_input={self.node_input}"
        return (f"{type(self).__name__}({self.conv}, num_classes={self.num_classes}, hidden_dim={self.hidden_dim}, "
                f"num_layers={self.num_layers}{heads}, norm={self.norm}, readout={self.readout_name}, "
                f"residual={self.residual}, {edge}{feats}{ablation})")


# --------------------------------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------------------------------


def build_graph_encoder(cfg: GNNConfig, num_classes: int, feature_dim: int = 0) -> GraphEncoder:
    """The :class:`GraphEncoder` ``cfg`` describes, for graphs labelled in a table of ``num_classes`` classes and
    (``feature_dim > 0``) carrying pooled segmenter features of that width."""
    return GraphEncoder(num_classes, conv=cfg.type, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers,
                        heads=cfg.heads, dropout=cfg.dropout, residual=cfg.residual, norm=cfg.norm,
                        readout=cfg.readout, use_edge_attr=cfg.use_edge_attr, edges=cfg.edges,
                        node_input=cfg.node_input, class_embed_dim=cfg.class_embed_dim, feature_dim=feature_dim)
