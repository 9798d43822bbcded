"""Explanation cost: one image explained (nodes, edges, occlusion, CAM, streams) by the quick-start model.

The model is ``configs/quickstart.yaml``'s architecture with random weights (timing does not depend on them). The
image is a synthetic scene and its graph the one its annotation gives (about the size of a real ADE20K class graph;
a random-weight segmenter's argmax would give a graph of ~100 noisy nodes instead). Measured in the same rounds:

- ``classify``: the plain classifier forward on that image and graph (the baseline: what a prediction costs after
  the segmenter);
- each part of :class:`~twostream.explain.SceneExplainer` alone (``graph``: Captum integrated gradients for nodes and
  for edges through torch_geometric.explain, ``occlusion``, ``cam``, ``streams``) and all of them together.

Target (issue 19): the whole explanation in at most 1 s on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from twostream.benchmark.measure import Timing, time_calls

__all__ = ["EXPLAIN_MAX_S", "ExplainRow", "bench_explain", "explain_table"]

EXPLAIN_MAX_S = 1.0
PARTS = ("graph", "occlusion", "cam", "streams")


@dataclass
class ExplainRow:
    """One explanation measurement (seconds per image)."""

    config: str
    image_size: tuple[int, int]
    nodes: int
    edges: int
    steps: int
    classify: Timing
    explain: Timing
    parts: dict[str, Timing] = field(default_factory=dict)


def bench_explain(config_dir: Path, device: torch.device, *, size: int | None = None, ci: bool = False,
                  warmup: int = 1, iters: int = 5, min_iters: int = 3, budget_s: float = 15.0,
                  seed: int = 0) -> ExplainRow:
    """Time the explanation of one image by the quick-start model (module docstring)."""
    from twostream.benchmark.inference import ModelSpec, build_spec_model, spec_config
    from twostream.data.classes import ade20k150
    from twostream.data.synthetic import render_scene
    from twostream.explain import SceneExplainer
    from twostream.graph.builder import SceneGraphBuilder

    cfg = spec_config(ModelSpec("quickstart", "quickstart"), config_dir, size=size, ci=ci)
    model = build_spec_model(cfg, seed=seed).to(device)
    h, w = cfg.data.image_size
    image, sem = render_scene("dining_room", seed, (h, w))[:2]
    images = (torch.from_numpy(image).permute(2, 0, 1).float() / 255)[None].to(device)  # (1, 3, H, W)
    graphs = [SceneGraphBuilder.from_config(cfg.graph, ade20k150())(sem)]
    scenes = [f"scene{i}" for i in range(model.num_scenes)]

    def timed(fn) -> Timing:
        return time_calls(fn, device, warmup=warmup, iters=iters, min_iters=min_iters, budget_s=budget_s)

    with torch.inference_mode():
        classify = timed(lambda: model(images, graphs))
    full = SceneExplainer(model, scenes)
    row = ExplainRow(config="quickstart", image_size=(h, w), nodes=graphs[0].num_nodes,
                     edges=graphs[0].num_edges // 2, steps=full.steps, classify=classify,
                     explain=timed(lambda: full.explain(images, graphs)))
    for part in PARTS:
        one = SceneExplainer(model, scenes, parts=(part,))
        row.parts[part] = timed(lambda one=one: one.explain(images, graphs))
    return row


def explain_table(row: ExplainRow) -> str:
    """The markdown table of one measurement: ms per image for the whole explanation and each part, and the ratio
    to the plain classifier forward."""
    def ms(t: Timing) -> str:
        return f"{1e3 * t.median:.0f}"

    head = ["model", "image", "graph (nodes / edges)", "classify ms", "explain ms (x classify)",
            *[f"{p} ms" for p in PARTS], f"≤ {EXPLAIN_MAX_S:.0f} s"]
    cells = [row.config, f"{row.image_size[0]}x{row.image_size[1]}", f"{row.nodes} / {row.edges}",
             ms(row.classify), f"**{ms(row.explain)}** ({row.explain.median / row.classify.median:.0f}x)",
             *[ms(row.parts[p]) if p in row.parts else "—" for p in PARTS],
             "met" if row.explain.median <= EXPLAIN_MAX_S else "**not met**"]
    notes = (f"Random weights, one image; graph: integrated gradients ({row.steps} steps) for the nodes and for the "
             "edges; each part is timed alone (it includes the streams' forward pass it needs), so the parts add up "
             "to more than the whole.")
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(cells) + " |",
                      "", notes])
