#!/usr/bin/env python
"""What the edge ablations cost: degree-preserving rewiring (``model.gnn.edges: shuffled``) against the GNN itself.

    python benchmarks/edge_ablations.py                     # GAT 3x256 (the default encoder), 1 CPU thread
    python benchmarks/edge_ablations.py --device cuda --batch-sizes 32 256

Scene graphs come from ADE20K-like label maps (``benchmarks/graph_builder.py``'s generator: 10-30 classes a map, so
10-30 nodes at class granularity, as ADE20K's validation graphs have) built by ``SceneGraphBuilder``. For each batch
size the table gives the median time of: the rewiring alone (:func:`~twostream.graph.rewire.rewire_degree_preserving`
with its seeds), the encoder's forward with ``edges`` full (the baseline), shuffled and none, and a training step
(forward + backward) with full and shuffled edges; ``x full`` is the ratio to the full forward, or for the training
step to the full training step.
"""

from __future__ import annotations

import argparse

import torch
from graph_builder import ade20k_like_maps  # benchmarks/graph_builder.py, beside this script

from twostream.benchmark.measure import time_calls
from twostream.data.classes import ade20k150
from twostream.graph.builder import SceneGraphBuilder
from twostream.graph.rewire import graph_seeds, rewire_degree_preserving
from twostream.models.gnn import GraphEncoder

__all__ = ["markdown_table", "run"]


def run(batch_sizes=(8, 32, 128), *, size: int = 256, device: str = "cpu", conv: str = "gat", hidden_dim: int = 256,
        num_layers: int = 3, iters: int = 20, seed: int = 0) -> list[dict]:
    """One row per (batch size, measurement): ``{"batch", "nodes", "edges", "what", "ms", "ratio"}``."""
    from torch_geometric.data import Batch

    dev = torch.device(device)
    table = ade20k150()
    builder = SceneGraphBuilder(class_table=table)
    maps = ade20k_like_maps(max(batch_sizes), size=size, seed=seed)
    graphs = [builder(m) for m in maps]
    encoders = {}
    for edges in ("full", "shuffled", "none"):
        torch.manual_seed(seed)
        encoders[edges] = GraphEncoder(len(table), conv=conv, hidden_dim=hidden_dim, num_layers=num_layers,
                                       edges=edges).to(dev)
    rows = []
    for b in batch_sizes:
        batch = Batch.from_data_list([g.to_pyg() for g in graphs[:b]]).to(dev)

        def rewire(batch=batch) -> None:
            seeds = graph_seeds(batch.labels, batch.edge_index, batch.batch, batch.num_graphs)
            rewire_degree_preserving(batch.edge_index, batch.batch, batch.num_graphs, seeds, epoch=1)

        def forward(edges: str, batch=batch):
            return lambda: encoders[edges].train()(batch)

        def step(edges: str, batch=batch):
            def call() -> None:
                encoders[edges].train()(batch)[0].square().sum().backward()
            return call

        timed = {"rewire alone": rewire, "forward, full": forward("full"), "forward, shuffled": forward("shuffled"),
                 "forward, none": forward("none"), "train step, full": step("full"),
                 "train step, shuffled": step("shuffled")}
        ms = {what: 1000 * time_calls(fn, dev, warmup=2, iters=iters, min_iters=5, budget_s=10.0).median
              for what, fn in timed.items()}
        for what, value in ms.items():
            base = ms["train step, full"] if what.startswith("train") else ms["forward, full"]
            rows.append({"batch": b, "nodes": int(batch.num_nodes), "edges": int(batch.num_edges) // 2, "what": what,
                         "ms": value, "ratio": value / base})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| graphs | nodes | undirected edges | measured | ms | x full |", "|---:|---:|---:|---|---:|---:|"]
    lines += [f"| {r['batch']} | {r['nodes']} | {r['edges']} | {r['what']} | {r['ms']:.2f} | {r['ratio']:.2f} |"
              for r in rows]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128], help="graphs per batch")
    p.add_argument("--size", type=int, default=256, help="label-map side the graphs are built from (default: 256)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--conv", default="gat", help="GNN layer (default: gat)")
    p.add_argument("--hidden-dim", type=int, default=256, help="GNN width (default: 256)")
    p.add_argument("--layers", type=int, default=3, help="GNN layers (default: 3)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per measurement; the median is kept")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    return p


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    rows = run(tuple(args.batch_sizes), size=args.size, device=args.device, conv=args.conv,
               hidden_dim=args.hidden_dim, num_layers=args.layers, iters=args.iters)
    print(f"{args.conv}, {args.layers} layers x {args.hidden_dim}, {args.device}, {args.threads} thread(s)")
    print(markdown_table(rows))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
