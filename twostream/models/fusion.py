"""Fusion of the two streams: image features ``v`` and scene-graph features ``g`` -> one scene feature ``z``.

Every method has the same call::

    z = fusion(image_pooled, image_tokens, graph_pooled, node_emb, node_batch)  # (B, dim)

with ``image_pooled (B, Ci)``, ``image_tokens (B, T, Ci)`` or ``None``, ``graph_pooled (B, Cg)``, ``node_emb (N, Cg)``
and ``node_batch (N,)`` (graph index of each node, sorted, as torch_geometric batches it). Only cross-attention reads
tokens and nodes; the others fuse the pooled vectors. The :data:`FUSIONS` table maps ``model.fusion.type`` to a class;
a new method is one class plus one entry. Each method LayerNorms its inputs first: the streams arrive at unrelated
scales (a timm encoder's normed tokens, a GNN's residual sums).

Each method also reports how it weighed the streams for one batch, for explanations
(:meth:`explain_extras`: the learned stream weights of ``sum``, the gate of ``gated``, the attention of image tokens
over the nodes of ``cross_attention``; nothing for ``concat`` and ``bilinear``, whose mixing has no such reading).

Single-stream baselines are not a fusion: ``model.fusion.type: none`` with one stream switched off sends that stream's
pooled features straight to the classification head (see :mod:`twostream.models.two_stream`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import to_dense_batch

from twostream.config import FusionConfig

__all__ = [
    "FUSIONS",
    "BilinearFusion",
    "ConcatFusion",
    "CrossAttentionFusion",
    "GatedFusion",
    "SumFusion",
    "build_fusion",
]

# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def _reset_all(module: nn.Module) -> None:
    """Reset every sub-module that knows how (Linear, LayerNorm, MultiheadAttention), in registration order."""
    for child in module.children():
        if isinstance(child, nn.MultiheadAttention):
            # as its constructor does: out_proj's Linear init, then xavier in_proj and zero biases (_reset_parameters
            # alone leaves out_proj.weight as it is)
            child.out_proj.reset_parameters()
            child._reset_parameters()
        elif hasattr(child, "reset_parameters"):
            child.reset_parameters()
        else:
            _reset_all(child)  # containers (Sequential)


class _Fusion(nn.Module):
    """Shared bookkeeping: input widths, output width, repr."""

    def __init__(self, image_dim: int, graph_dim: int, dim: int) -> None:
        super().__init__()
        if min(image_dim, graph_dim, dim) < 1:
            raise ValueError(f"{type(self).__name__}: image_dim, graph_dim and dim must be positive, "
                             f"got {image_dim}, {graph_dim}, {dim}")
        self.image_dim, self.graph_dim, self.dim = image_dim, graph_dim, dim
        self.image_norm = nn.LayerNorm(image_dim)
        self.graph_norm = nn.LayerNorm(graph_dim)

    @property
    def num_features(self) -> int:
        """Width of the fused feature."""
        return self.dim

    def reset_parameters(self) -> None:
        _reset_all(self)

    def explain_extras(self, image_pooled: Tensor, image_tokens: Tensor | None, graph_pooled: Tensor,
                       node_emb: Tensor, node_batch: Tensor) -> dict[str, Tensor]:
        """How this method weighed the two streams for each image of a batch (same arguments as ``forward``), as
        named tensors with a leading ``B``; ``{}`` when the method has nothing such to say."""
        return {}

    def extra_repr(self) -> str:
        return f"image_dim={self.image_dim}, graph_dim={self.graph_dim}, dim={self.dim}"


# --------------------------------------------------------------------------------------------------------------------
# Fusion methods
# --------------------------------------------------------------------------------------------------------------------


class ConcatFusion(_Fusion):
    r"""Concatenation and a two-layer MLP:

    .. math::
        \mathbf{z} = \mathbf{W}_2\,\mathrm{Dropout}(\mathrm{GELU}(\mathbf{W}_1
            [\mathrm{LN}(\mathbf{v}) \,\Vert\, \mathrm{LN}(\mathbf{g})]))

    Shapes:
        - **input:** ``image_pooled (B, Ci)``, ``graph_pooled (B, Cg)`` (other arguments ignored).
        - **output:** ``(B, dim)``.
    """

    def __init__(self, image_dim: int, graph_dim: int, *, dim: int = 512, dropout: float = 0.1) -> None:
        super().__init__(image_dim, graph_dim, dim)
        self.fc1 = nn.Linear(image_dim + graph_dim, dim)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, image_pooled: Tensor, image_tokens: Tensor | None, graph_pooled: Tensor, node_emb: Tensor,
                node_batch: Tensor) -> Tensor:
        x = torch.cat([self.image_norm(image_pooled), self.graph_norm(graph_pooled)], dim=1)  # (B, Ci + Cg)
        return self.fc2(self.drop(F.gelu(self.fc1(x))))  # (B, dim)


class SumFusion(_Fusion):
    r"""Weighted sum of the two streams projected to a common width, with learned stream weights:

    .. math::
        \mathbf{z} = \alpha_v \mathbf{W}_v \mathrm{LN}(\mathbf{v}) + \alpha_g \mathbf{W}_g \mathrm{LN}(\mathbf{g}),
        \qquad (\alpha_v, \alpha_g) = \mathrm{softmax}(\mathbf{w})

    :math:`\mathbf{w}` starts at zero (equal weights); :attr:`stream_weights` reports :math:`\alpha`.

    Shapes:
        - **input:** ``image_pooled (B, Ci)``, ``graph_pooled (B, Cg)``.
        - **output:** ``(B, dim)``.
    """

    def __init__(self, image_dim: int, graph_dim: int, *, dim: int = 512, dropout: float = 0.1) -> None:
        super().__init__(image_dim, graph_dim, dim)
        self.image_proj = nn.Linear(image_dim, dim)
        self.graph_proj = nn.Linear(graph_dim, dim)
        self.weight_logits = nn.Parameter(torch.zeros(2))
        self.drop = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.zeros_(self.weight_logits)

    @property
    def stream_weights(self) -> Tensor:
        """``(2,)`` current (image, graph) weights, summing to 1."""
        return self.weight_logits.softmax(dim=0)

    def explain_extras(self, image_pooled: Tensor, image_tokens: Tensor | None, graph_pooled: Tensor,
                       node_emb: Tensor, node_batch: Tensor) -> dict[str, Tensor]:
        r"""``stream_weights (B, 2)``: :math:`(\alpha_v, \alpha_g)`, the same for every image."""
        return {"stream_weights": self.stream_weights.expand(image_pooled.shape[0], 2)}

    def forward(self, image_pooled: Tensor, image_tokens: Tensor | None, graph_pooled: Tensor, node_emb: Tensor,
                node_batch: Tensor) -> Tensor:
        a = self.stream_weights  # (2,)
        v = self.image_proj(self.image_norm(image_pooled))  # (B, dim)
        g = self.graph_proj(self.graph_norm(graph_pooled))  # (B, dim)
        return self.drop(a[0] * v + a[1] * g)  # (B, dim)


class GatedFusion(_Fusion):
    r"""Gated multimodal unit (Arevalo et al., 2017): a sigmoid gate per feature chooses between the streams:

    .. math::
        \mathbf{h}_v = \tanh(\mathbf{W}_v \hat{\mathbf{v}}), \quad \mathbf{h}_g = \tanh(\mathbf{W}_g \hat{\mathbf{g}}),
        \quad \mathbf{s} = \sigma(\mathbf{W}_s [\hat{\mathbf{v}} \,\Vert\, \hat{\mathbf{g}}]), \quad
        \mathbf{z} = \mathbf{s} \odot \mathbf{h}_v + (1 - \mathbf{s}) \odot \mathbf{h}_g

    with :math:`\hat{\mathbf{v}} = \mathrm{LN}(\mathbf{v})`, :math:`\hat{\mathbf{g}} = \mathrm{LN}(\mathbf{g})`.

    Shapes:
        - **input:** ``image_pooled (B, Ci)``, ``graph_pooled (B, Cg)``.
        - **output:** ``(B, dim)``.
    """

    def __init__(self, image_dim: int, graph_dim: int, *, dim: int = 512, dropout: float = 0.1) -> None:
        super().__init__(image_dim, graph_dim, dim)
        self.image_proj = nn.Linear(image_dim, dim)
        self.graph_proj = nn.Linear(graph_dim, dim)
        self.gate = nn.Linear(image_dim + graph_dim, dim)
        self.drop = nn.Dropout(dropout)

    def gate_values(self, image_pooled: Tensor, graph_pooled: Tensor) -> Tensor:
        """``(B, dim)`` in (0, 1): the weight of the image stream per feature."""
        v, g = self.image_norm(image_pooled), self.graph_norm(graph_pooled)
        return torch.sigmoid(self.gate(torch.cat([v, g], dim=1)))

    def explain_extras(self, image_pooled: Tensor, image_tokens: Tensor | None, graph_pooled: Tensor,
                       node_emb: Tensor, node_batch: Tensor) -> dict[str, Tensor]:
        r"""``gate (B, dim)``: :math:`\mathbf{s}`, the image stream's weight per fused feature (the graph's is
        ``1 - gate``)."""
        return {"gate": self.gate_values(image_pooled, graph_pooled)}

    def forward(self, image_pooled: Tensor, image_tokens: Tensor | None, graph_pooled: Tensor, node_emb: Tensor,
                node_batch: Tensor) -> Tensor:
        v, g = self.image_norm(image_pooled), self.graph_norm(graph_pooled)  # (B, Ci), (B, Cg)
        s = torch.sigmoid(self.gate(torch.cat([v, g], dim=1)))  # (B, dim)
        z = s * torch.tanh(self.image_proj(v)) + (1 - s) * torch.tanh(self.graph_proj(g))  # (B, dim)
        return self.drop(z)


class CrossAttentionFusion(_Fusion):
    r"""Image tokens attend to the nodes of their own image's scene graph (one transformer decoder block), then pool:

    .. math::
        \mathbf{Q} &= \mathbf{W}_q \mathrm{LN}(\mathbf{V}_{\mathrm{tokens}}), \qquad
        \mathbf{K} = \mathbf{V} = \big[\,\mathbf{n}_\varnothing;\ \mathbf{W}_g \mathrm{LN}(\mathbf{g});\
            \mathbf{W}_g \mathrm{LN}(\mathbf{h}_1); \dots; \mathbf{W}_g \mathrm{LN}(\mathbf{h}_{N_b})\big] \\
        \mathbf{X} &= \mathrm{LN}(\mathbf{Q} + \mathrm{MHA}(\mathbf{Q}, \mathbf{K}, \mathbf{V})), \qquad
        \mathbf{X} = \mathrm{LN}(\mathbf{X} + \mathrm{FFN}(\mathbf{X})), \qquad
        \mathbf{z} = \tfrac{1}{T} \textstyle\sum_t \mathbf{X}_t

    Nodes are padded per graph (``to_dense_batch``) and the padding is masked out (``key_padding_mask``), so an
    image's result does not depend on the other graphs in its batch. Two keys are always present: a learned null
    token :math:`\mathbf{n}_\varnothing` (attention may look at nothing) and the graph's pooled embedding
    :math:`\mathbf{g}` (its summary, the learned empty-graph vector for a graph without nodes); so a graph with zero
    nodes still has keys and never yields NaN.

    Args:
        heads: attention heads; must divide ``dim``.

    Shapes:
        - **input:** ``image_tokens (B, T, Ci)``, ``graph_pooled (B, Cg)``, ``node_emb (N, Cg)``, ``node_batch (N,)``
          sorted (``image_pooled`` is ignored: the tokens carry the image).
        - **output:** ``(B, dim)``.
    """

    def __init__(self, image_dim: int, graph_dim: int, *, dim: int = 512, dropout: float = 0.1,
                 heads: int = 4) -> None:
        super().__init__(image_dim, graph_dim, dim)
        if dim % heads:
            raise ValueError(f"CrossAttentionFusion: dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.query_proj = nn.Linear(image_dim, dim)
        self.node_proj = nn.Linear(graph_dim, dim)
        self.null_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.normal_(self.null_token, std=0.02)

    def keys(self, graph_pooled: Tensor, node_emb: Tensor, node_batch: Tensor) -> tuple[Tensor, Tensor]:
        """Keys/values ``(B, 2 + N_max, dim)`` and ``key_padding_mask (B, 2 + N_max)`` (True = padding, ignored)."""
        b = graph_pooled.shape[0]
        nodes = self.node_proj(self.graph_norm(node_emb))  # (N, dim)
        dense, real = to_dense_batch(nodes, node_batch, batch_size=b)  # (B, N_max, dim), (B, N_max) True = node
        summary = self.node_proj(self.graph_norm(graph_pooled))[:, None]  # (B, 1, dim)
        kv = torch.cat([self.null_token.expand(b, -1, -1).to(nodes.dtype), summary, dense], dim=1)  # (B, 2+N_max, dim)
        always = real.new_ones(b, 2)  # the null and summary tokens
        return kv, ~torch.cat([always, real], dim=1)  # (B, 2 + N_max, dim), (B, 2 + N_max)

    def _check_tokens(self, image_tokens: Tensor | None) -> None:
        if image_tokens is None:
            raise ValueError("CrossAttentionFusion needs image tokens (B, T, C); pass the image encoder's "
                             "forward_features output, or pick another model.fusion.type")

    def explain_extras(self, image_pooled: Tensor, image_tokens: Tensor | None, graph_pooled: Tensor,
                       node_emb: Tensor, node_batch: Tensor) -> dict[str, Tensor]:
        """``attention (B, 2 + N_max)``: the attention of the image tokens on each key, averaged over heads and
        tokens (keys in the order of :meth:`keys`: null token, graph summary, then the graph's nodes; each row sums
        to 1), and ``attention_mask (B, 2 + N_max)`` bool, True for real keys (False: padding, weight 0)."""
        self._check_tokens(image_tokens)
        q = self.query_proj(self.image_norm(image_tokens))  # (B, T, dim)
        kv, pad = self.keys(graph_pooled, node_emb, node_batch)  # (B, K, dim), (B, K)
        _, weights = self.attn(q, kv, kv, key_padding_mask=pad, need_weights=True, average_attn_weights=True)
        return {"attention": weights.mean(dim=1), "attention_mask": ~pad}  # (B, T, K) -> (B, K)

    def forward(self, image_pooled: Tensor, image_tokens: Tensor | None, graph_pooled: Tensor, node_emb: Tensor,
                node_batch: Tensor) -> Tensor:
        self._check_tokens(image_tokens)
        q = self.query_proj(self.image_norm(image_tokens))  # (B, T, dim)
        kv, pad = self.keys(graph_pooled, node_emb, node_batch)  # (B, K, dim), (B, K)
        attended, _ = self.attn(q, kv, kv, key_padding_mask=pad, need_weights=False)  # (B, T, dim)
        x = self.norm1(q + self.drop(attended))  # (B, T, dim)
        x = self.norm2(x + self.drop(self.ffn(x)))  # (B, T, dim)
        return x.mean(dim=1)  # (B, dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}"


class BilinearFusion(_Fusion):
    r"""Low-rank bilinear pooling, MLB (Kim et al., ICLR 2017, "Hadamard product for low-rank bilinear pooling"):

    .. math::
        \mathbf{z} = \mathbf{P}^\top \mathrm{Dropout}\big(\tanh(\mathbf{U}^\top \mathrm{LN}(\mathbf{v}))
            \odot \tanh(\mathbf{V}^\top \mathrm{LN}(\mathbf{g}))\big) + \mathbf{b}

    a bilinear form :math:`\mathbf{v}^\top \mathbf{W}_k \mathbf{g}` per output feature whose matrices share a
    rank-``rank`` factorisation, so every output feature is a product of image and graph evidence.

    Args:
        rank: inner (joint) width of the factorisation.

    Shapes:
        - **input:** ``image_pooled (B, Ci)``, ``graph_pooled (B, Cg)``.
        - **output:** ``(B, dim)``.
    """

    def __init__(self, image_dim: int, graph_dim: int, *, dim: int = 512, dropout: float = 0.1,
                 rank: int = 64) -> None:
        super().__init__(image_dim, graph_dim, dim)
        if rank < 1:
            raise ValueError(f"BilinearFusion: rank must be positive, got {rank}")
        self.rank = rank
        self.image_factor = nn.Linear(image_dim, rank)
        self.graph_factor = nn.Linear(graph_dim, rank)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(rank, dim)

    def forward(self, image_pooled: Tensor, image_tokens: Tensor | None, graph_pooled: Tensor, node_emb: Tensor,
                node_batch: Tensor) -> Tensor:
        u = torch.tanh(self.image_factor(self.image_norm(image_pooled)))  # (B, rank)
        w = torch.tanh(self.graph_factor(self.graph_norm(graph_pooled)))  # (B, rank)
        return self.out(self.drop(u * w))  # (B, rank) -> (B, dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


# --------------------------------------------------------------------------------------------------------------------
# Table and builder
# --------------------------------------------------------------------------------------------------------------------

# model.fusion.type -> class. "none" is not here: a single-stream model has no fusion module.
FUSIONS: dict[str, type[_Fusion]] = {
    "concat": ConcatFusion,
    "sum": SumFusion,
    "gated": GatedFusion,
    "cross_attention": CrossAttentionFusion,
    "bilinear": BilinearFusion,
}


def build_fusion(cfg: FusionConfig, image_dim: int, graph_dim: int) -> _Fusion:
    """The fusion module ``cfg.type`` names, for image features of width ``image_dim`` and graph features of width
    ``graph_dim``."""
    if cfg.type not in FUSIONS:
        raise ValueError(f"unknown fusion type '{cfg.type}'; known: {', '.join(FUSIONS)} "
                         "(or none, for a single-stream model)")
    extra = {"cross_attention": {"heads": cfg.heads}, "bilinear": {"rank": cfg.rank}}.get(cfg.type, {})
    return FUSIONS[cfg.type](image_dim, graph_dim, dim=cfg.dim, dropout=cfg.dropout, **extra)
