"""Degree-preserving random rewiring of a batch of graphs: the ``shuffled`` edge ablation (``model.gnn.edges``).

Each graph's undirected edges are rewired by *double edge swaps* (Maslov & Sneppen 2002; networkx's
``double_edge_swap`` does one at a time): two edges ``{a, b}`` and ``{c, d}`` of one graph become ``{a, d}`` and
``{c, b}`` (or ``{a, c}`` and ``{b, d}``), which keeps the degree of all four nodes. A swap that would make a self loop
or an edge that already exists is rejected, so the result is again a simple undirected graph with every node's degree
unchanged; after enough swaps which node touches which is random, given the degrees.

Vectorised over the whole batch: each round pairs up the edges of every graph at random (disjoint pairs, so all of a
round's swaps can be applied at once), proposes one swap per pair and rejects the invalid ones — also any two
proposals of a round that would create the same edge. ``rounds`` rounds attempt ``rounds * E_g / 2`` swaps in a graph
of ``E_g`` undirected edges. No Python loop over graphs, nodes or edges.

Randomness is a counter-based hash of (graph content, epoch, round, edge), not a generator's state: a graph is rewired
the same way whatever else is in its batch, in any order, on any device, in every run; another epoch rewires it anew.
The graph's seed is a hash of its node labels and edges (local indices), which the data pipeline cannot change.

A graph with fewer than two undirected edges, or where every swap is invalid (a star, a triangle), stays as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["EVAL_EPOCH", "graph_seeds", "rewire_degree_preserving"]

# The epoch a model in eval mode rewires with (evaluation and inference): fixed, so scores repeat exactly.
EVAL_EPOCH = -1

_MASK = (1 << 31) - 1  # every hashed value stays below 2**31, so products with 31-bit constants fit in int64


def _mix(x: Tensor) -> Tensor:
    """An integer hash (xor-shift-multiply, 31-bit): int64 tensor -> int64 values in ``[0, 2**31)``."""
    x = x & _MASK
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK
    x = (((x >> 16) ^ x) * 0x2C1B3C6D) & _MASK
    return ((x >> 15) ^ x) & _MASK


def _combine(x: Tensor, y: Tensor | int) -> Tensor:
    """Hash of the pair ``(x, y)`` (both non-negative, below ``2**31``)."""
    return _mix(_mix(x) * 0x5BD1E995 + y)


def graph_seeds(labels: Tensor, edge_index: Tensor, node_batch: Tensor, num_graphs: int) -> Tensor:
    """``(B,)`` int64 seeds, one per graph, from its content alone: its node labels and its edges in local indices.

    The same graph gets the same seed in any batch, at any position; node order and labels matter (they are what the
    rewiring acts on), node attributes do not.
    """
    n = labels.numel()
    counts = torch.bincount(node_batch, minlength=num_graphs)[:num_graphs]  # (B,)
    first = torch.cumsum(counts, 0) - counts  # (B,) first node of each graph
    local = torch.arange(n, device=labels.device) - first[node_batch]  # (N,)
    node_part = torch.zeros(num_graphs, dtype=torch.int64, device=labels.device)
    node_part.index_add_(0, node_batch, _combine(local, labels & _MASK))
    src, dst = edge_index
    g = node_batch[src]  # (E,)
    edge_part = torch.zeros_like(node_part)
    edge_part.index_add_(0, g, _combine(local[src], local[dst]))  # sums of 31-bit values: no overflow below 2**32 edges
    return _combine(_combine(node_part & _MASK, counts), edge_part & _MASK)


def rewire_degree_preserving(edge_index: Tensor, node_batch: Tensor, num_graphs: int, seeds: Tensor, *,
                             epoch: int = 0, rounds: int = 10) -> tuple[Tensor, Tensor]:
    """Rewire every graph of a batch at random, keeping each node's degree.

    Args:
        edge_index: ``(2, E)`` int64 global node indices of the batch; an undirected edge appears once or in both
            directions (as ``SceneGraph.to_pyg`` writes it). Self loops are kept where they are and not swapped.
        node_batch: ``(N,)`` graph of each node; a graph's nodes are contiguous (as in a torch_geometric ``Batch``).
        num_graphs: ``B``.
        seeds: ``(B,)`` int64 per-graph seeds (:func:`graph_seeds`).
        epoch: mixed into every graph's seed; another epoch, another rewiring.
        rounds: rounds of simultaneous swaps (each attempts ``E_g / 2`` swaps per graph).

    Returns:
        ``edge_index (2, E)``: the rewired edges, edge ``e`` being the new pair of the undirected edge that edge ``e``
        was (in the same direction convention, so a symmetric input stays symmetric and in the same order), and
        ``changed (E,)`` bool: whether edge ``e`` now joins another pair of nodes. Edge data that describes the pair
        (offsets between centroids) must be recomputed where ``changed``; data of the edge itself (its boundary) may
        be carried over.
    """
    if edge_index.numel() == 0 or rounds <= 0:
        return edge_index, torch.zeros(edge_index.shape[1], dtype=torch.bool, device=edge_index.device)
    device = edge_index.device
    n = int(node_batch.numel())
    src, dst = edge_index
    loop = src == dst
    lo, hi = torch.minimum(src, dst), torch.maximum(src, dst)
    key = lo * n + hi  # (E,) one key per undirected pair; n < 2**31 nodes, so keys < 2**62
    slots, inverse = torch.unique(key[~loop], return_inverse=True)  # (S,) sorted: grouped by graph, in graph order
    su, sv = slots // n, slots % n  # (S,) endpoints, su < sv
    su0, sv0 = su.clone(), sv.clone()
    s = slots.numel()
    g = node_batch[su]  # (S,) graph of each slot (non-decreasing)
    per_graph = torch.bincount(g, minlength=num_graphs)[:num_graphs]  # (B,)
    first = torch.cumsum(per_graph, 0) - per_graph  # (B,)
    local = torch.arange(s, device=device) - first[g]  # (S,) slot index within its graph
    paired = (local % 2 == 0) & (local + 1 < per_graph[g])  # sorted positions that start a pair
    starts = torch.nonzero(paired).squeeze(1)  # (P,) pair k = sorted positions (starts[k], starts[k] + 1)
    if starts.numel() == 0:  # no graph has two edges
        return edge_index, torch.zeros(edge_index.shape[1], dtype=torch.bool, device=device)
    # every round's random numbers at once: a sort key per slot (to pair them up) and a coin per pair
    seed = _combine(seeds & _MASK, epoch & _MASK)[g]  # (S,)
    steps = torch.arange(rounds, device=device)
    rand = _combine(_combine(seed[:, None], steps[None, :]), local[:, None])  # (S, R)
    block = g * (1 << 31)  # (S,) sorting by block + rand keeps every graph's slots in its own block
    flips = (_combine(_combine(seed[starts][:, None], steps[None, :] + rounds), local[starts][:, None]) & 1).bool()
    for r in range(rounds):
        # pair the edges of every graph at random: sort each graph's slots by a hash, pair neighbours
        order = torch.sort(block + rand[:, r], stable=True).indices  # (S,)
        a, b = order[starts], order[starts + 1]  # (P,) slot ids of each pair
        flip = flips[:, r]  # (P,) which of the two swaps
        ua, va, ub, vb = su[a], sv[a], su[b], sv[b]
        x1, y1 = ua, torch.where(flip, ub, vb)  # {a, d} or {a, c}
        x2, y2 = torch.where(flip, va, ub), torch.where(flip, vb, va)  # {c, b} or {b, d}
        n1lo, n1hi = torch.minimum(x1, y1), torch.maximum(x1, y1)
        n2lo, n2hi = torch.minimum(x2, y2), torch.maximum(x2, y2)
        k1, k2 = n1lo * n + n1hi, n2lo * n + n2hi  # (P,)
        ok = (x1 != y1) & (x2 != y2)  # no self loop
        current = torch.sort(su * n + sv).values  # (S,)
        for k in (k1, k2):  # no edge that exists already (before this round: a conservative test)
            at = torch.searchsorted(current, k).clamp_max(s - 1)
            ok &= current[at] != k
        proposed = torch.cat([k1, k2])  # (2P,) no two proposals of the round may create the same edge
        sorted_keys, where = torch.sort(proposed)
        dup = torch.zeros_like(proposed, dtype=torch.bool)
        same = sorted_keys[1:] == sorted_keys[:-1]
        dup[where[1:][same]] = True
        dup[where[:-1][same]] = True
        p = k1.numel()
        ok &= ~(dup[:p] | dup[p:])
        su[a], sv[a] = torch.where(ok, n1lo, ua), torch.where(ok, n1hi, va)
        su[b], sv[b] = torch.where(ok, n2lo, ub), torch.where(ok, n2hi, vb)

    forward = src[~loop] < dst[~loop]  # the direction each edge had: (lo, hi) or (hi, lo)
    new_src = torch.where(forward, su[inverse], sv[inverse])
    new_dst = torch.where(forward, sv[inverse], su[inverse])
    out = edge_index.clone()
    out[0, ~loop], out[1, ~loop] = new_src, new_dst
    changed = torch.zeros(edge_index.shape[1], dtype=torch.bool, device=device)
    changed[~loop] = ((su != su0) | (sv != sv0))[inverse]
    return out, changed
