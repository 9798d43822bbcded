"""Exact occlusion: delete nodes or edges, rerun the graph stream and the head, read the scene's probability.

Gradient attributions say how the score changes for an infinitesimal change of the input; occlusion says what
happens when an object or a contact is really gone. All variants of one graph (every single-node deletion, every
single-edge deletion, or any list of node subsets) become one torch_geometric batch built with tensor operations
(:func:`subgraph_batch`: no loop over nodes or variants), and run through the graph encoder in one forward pass
(or a few, when the batch would exceed ``max_nodes`` nodes); the image stream's embedding is computed once and
repeated for every variant. Deleting a node deletes its edges; deleting an undirected edge deletes both directions.
Everything else (node attributes, the other edges' attributes) stays as it was, so a variant is exactly the graph
one would have built without that object or contact, except for the GCN boundary shares, which the encoder
recomputes from the remaining edges as it would for such a graph.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from twostream.explain.streams import StreamEmbeddings, classify, encode_graphs

__all__ = ["EDGE_KEYS", "NODE_KEYS", "deletion_curve", "deletion_probs", "insertion_probs", "occlusion_scores",
           "subgraph_batch"]

# The node- and edge-level tensors of SceneGraph.to_pyg(): what a graph variant or a repeated batch copies per graph.
NODE_KEYS = ("labels", "x", "pos", "features", "confidence")
EDGE_KEYS = ("edge_attr", "boundary")


def subgraph_batch(data, node_keep: Tensor, edge_keep: Tensor | None = None):
    """``G`` variants of one graph as one ``Batch``: variant ``g`` keeps the nodes where ``node_keep[g]`` and the
    edges whose two ends are kept and (when given) where ``edge_keep[g]``.

    Args:
        data: one graph (``torch_geometric.data.Data`` of ``SceneGraph.to_pyg()``) with ``N`` nodes, ``E`` edges.
        node_keep: ``(G, N)`` bool.
        edge_keep: ``(G, E)`` bool or ``None``.

    Returns:
        A ``Batch`` of ``G`` graphs (``batch``, ``ptr``, ``num_graphs`` set) with node ids renumbered ``0..n_g-1``
        in their original order.
    """
    from torch_geometric.data import Batch

    g = node_keep.shape[0]
    device = node_keep.device
    src, dst = data.edge_index  # (E,)
    e = int(src.numel())
    counts = node_keep.sum(dim=1)  # (G,)
    offsets = torch.cumsum(counts, 0) - counts  # (G,) first node of each variant
    new_id = torch.cumsum(node_keep.long(), dim=1) - 1 + offsets[:, None]  # (G, N) global id where kept
    keep_e = node_keep[:, src] & node_keep[:, dst]  # (G, E)
    if edge_keep is not None:
        keep_e &= edge_keep
    out = Batch()
    for key in NODE_KEYS:
        value = getattr(data, key, None)
        if value is not None:
            out[key] = value[None].expand(g, *value.shape)[node_keep]  # (sum n_g, ...)
    for key in EDGE_KEYS:
        value = getattr(data, key, None)
        if value is not None:
            out[key] = value[None].expand(g, *value.shape)[keep_e]
    out.edge_index = torch.stack([new_id[:, src][keep_e], new_id[:, dst][keep_e]]) if e else \
        torch.zeros(2, 0, dtype=torch.long, device=device)
    out.batch = torch.repeat_interleave(torch.arange(g, device=device), counts)
    out.ptr = torch.cat([offsets, counts.sum().view(1)])
    return out


def deletion_probs(model: nn.Module, data, image: StreamEmbeddings, scene: int, node_keep: Tensor,
                   edge_keep: Tensor | None = None, *, max_nodes: int = 200_000) -> Tensor:
    """``(G,)`` probability of ``scene`` for each variant of :func:`subgraph_batch`, with the image stream of
    ``image`` (one image's embedding, or empty for a graph-only model) repeated for every variant."""
    g, n = node_keep.shape
    per_chunk = max(1, max_nodes // max(n, 1))
    probs = []
    for start in range(0, g, per_chunk):
        nk = node_keep[start:start + per_chunk]
        ek = edge_keep[start:start + per_chunk] if edge_keep is not None else None
        batch = subgraph_batch(data, nk, ek)
        pooled, nodes = encode_graphs(model, batch)
        emb = image.select(0, nk.shape[0])
        emb.graph_pooled, emb.node_emb, emb.node_batch = pooled, nodes, batch.batch
        probs.append(classify(model, emb).float().softmax(dim=1)[:, scene])
    return torch.cat(probs) if probs else torch.zeros(0)


def insertion_probs(model: nn.Module, data, image: StreamEmbeddings, scene: int, pairs: Tensor,
                    like: Tensor) -> Tensor:
    """``(K,)`` probability of ``scene`` when the contact ``pairs[k]`` is added to the graph (variant ``k``: both
    directions), the counterpart of deleting one (:func:`occlusion_scores`): what an absent contact would change.

    Args:
        data: one graph (``SceneGraph.to_pyg()``) with ``N`` nodes and ``E`` directed edges.
        pairs: ``(K, 2)`` node ids of pairs that do not touch.
        like: ``(K,)`` index of an existing directed edge whose boundary length the new contact takes (e.g. the
            contact it would replace), ``-1`` for a zero boundary. The centroid offset and distance are computed for
            the new pair, as the builder would.
    """
    from torch_geometric.data import Batch

    k, n = int(pairs.shape[0]), int(data.labels.numel())
    device = data.labels.device
    if k == 0:
        return torch.zeros(0)
    base = subgraph_batch(data, torch.ones(k, n, dtype=torch.bool, device=device))  # K copies, ids + k * N
    e = int(data.edge_index.shape[1])
    src = pairs[:, 0].to(device) + torch.arange(k, device=device) * n  # (K,)
    dst = pairs[:, 1].to(device) + torch.arange(k, device=device) * n
    graph_of_edge = torch.cat([torch.arange(k, device=device).repeat_interleave(e),
                               torch.arange(k, device=device).repeat(2)])  # (K E + 2K,)
    order = torch.argsort(graph_of_edge, stable=True)  # each variant's edges together, the new ones last
    out = Batch()
    for key in NODE_KEYS:
        value = getattr(base, key, None)
        if value is not None:
            out[key] = value
    out.edge_index = torch.cat([base.edge_index, torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])],
                               dim=1)[:, order]
    like = like.to(device).long()
    has = like >= 0
    if getattr(data, "boundary", None) is not None:
        b = torch.where(has, data.boundary[like.clamp_min(0)], torch.zeros_like(like, dtype=data.boundary.dtype))
        out.boundary = torch.cat([base.boundary, b, b])[order]
    if getattr(data, "edge_attr", None) is not None:
        attr = data.edge_attr
        centroid = data.x[:, 1:3].to(attr.dtype)  # node_attr: area, centroid (x, y), box
        length = torch.where(has, attr[like.clamp_min(0), 0], torch.zeros_like(attr[:k, 0]))  # boundary / sqrt(HW)

        def fresh(a: Tensor, b: Tensor) -> Tensor:  # (K, 4) for the directed edges a -> b
            offset = centroid[b] - centroid[a]
            return torch.cat([length[:, None], offset, offset.norm(dim=1, keepdim=True)], dim=1)

        local_src, local_dst = pairs[:, 0].to(device), pairs[:, 1].to(device)
        out.edge_attr = torch.cat([base.edge_attr, fresh(local_src, local_dst), fresh(local_dst, local_src)])[order]
    out.batch, out.ptr = base.batch, base.ptr
    pooled, nodes = encode_graphs(model, out)
    emb = image.select(0, k)
    emb.graph_pooled, emb.node_emb, emb.node_batch = pooled, nodes, out.batch
    return classify(model, emb).float().softmax(dim=1)[:, scene]


def occlusion_scores(model: nn.Module, data, image: StreamEmbeddings, scene: int, full_prob: float | Tensor, *,
                     max_nodes: int = 200_000) -> tuple[Tensor, Tensor, Tensor]:
    """Every single-node and single-edge deletion of one graph in one batch.

    Returns ``(node_drop (N,), edge_pairs (M,) positions of the directed edges source < target, edge_drop (M,))``
    with ``drop = full_prob - prob_after_deletion``: positive when the node or edge supported ``scene``.
    """
    from twostream.explain.graph_attribution import reverse_edges

    n = int(data.labels.numel())
    device = data.labels.device
    src, dst = data.edge_index
    pairs = torch.nonzero(src < dst).view(-1)  # (M,)
    m = int(pairs.numel())
    eye = torch.eye(n, dtype=torch.bool, device=device)
    node_keep = torch.cat([~eye, torch.ones(m, n, dtype=torch.bool, device=device)])  # (N + M, N)
    edge_keep = None
    if m:
        rev = reverse_edges(data.edge_index, n)
        edge_keep = torch.ones(n + m, int(src.numel()), dtype=torch.bool, device=device)
        rows = torch.arange(n, n + m, device=device)
        edge_keep[rows, pairs] = False
        edge_keep[rows, rev[pairs]] = False
    if n + m == 0:
        return torch.zeros(0), pairs, torch.zeros(0)
    probs = deletion_probs(model, data, image, scene, node_keep, edge_keep, max_nodes=max_nodes)
    drop = torch.as_tensor(full_prob, dtype=probs.dtype, device=probs.device) - probs
    return drop[:n], pairs, drop[n:]


def deletion_curve(model: nn.Module, data, image: StreamEmbeddings, scene: int, full_prob: float,
                   scores: Tensor, ks: tuple[int, ...], *, draws: int = 8, generator: torch.Generator | None = None,
                   max_nodes: int = 200_000) -> tuple[list[float | None], list[float | None]]:
    """Deletion fidelity of one graph: the drop in ``scene``'s probability when its ``k`` top-scored nodes are
    deleted, and the mean drop over ``draws`` random sets of ``k`` nodes, for each ``k`` in ``ks`` (``None`` where
    the graph has fewer than ``k`` nodes). One batch for all variants."""
    n = int(data.labels.numel())
    valid = [k for k in ks if k <= n]
    if not valid:
        return [None] * len(ks), [None] * len(ks)
    device = data.labels.device
    order = torch.argsort(scores.to(device), descending=True, stable=True)  # (N,)
    rand = torch.rand(len(valid), draws, n, generator=generator).argsort(dim=2).to(device)  # (K, R, N) permutations
    rows = []
    for j, k in enumerate(valid):
        top = torch.ones(1, n, dtype=torch.bool, device=device)
        top[0, order[:k]] = False
        some = torch.ones(draws, n, dtype=torch.bool, device=device)
        some.scatter_(1, rand[j, :, :k], False)
        rows += [top, some]
    probs = deletion_probs(model, data, image, scene, torch.cat(rows), max_nodes=max_nodes)
    per_k = probs.split([1 + draws] * len(valid))
    top_drop = {k: float(full_prob - p[0]) for k, p in zip(valid, per_k)}
    rand_drop = {k: float(full_prob - p[1:].mean()) for k, p in zip(valid, per_k)}
    return [top_drop.get(k) for k in ks], [rand_drop.get(k) for k in ks]
