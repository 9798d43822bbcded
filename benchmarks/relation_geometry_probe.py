#!/usr/bin/env python
"""Can the objects' geometry alone tell the relation pair apart? A probe of a relation benchmark (docs/relations.md).

    python benchmarks/relation_geometry_probe.py datasets/relbench datasets/relbench_irregular

For every relation-only image of a synthetic set (``synthetic.json``'s ``relation_only``), the graph of its annotation
gives each of the seven classes' area, centroid and box (7 numbers, in a fixed class order: 49 features, no edges).
A model that sees all objects at once — a linear model and a two-layer MLP (64 hidden units), trained with AdamW on
the training split's relation-only images — is scored on the validation split's. Chance is 50%. With the ``boxes``
layout the boxes give the contact away; with ``irregular`` they should not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from twostream.data.classes import ade20k150
from twostream.graph.builder import SceneGraphBuilder

__all__ = ["features", "probe"]

CLASSES = ("wall", "ceiling", "floor", "painting", "table", "chair", "sofa")
SCENES = ("dining_room", "living_room")


def features(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, 49)`` geometry of the seven classes and ``(M,)`` labels (0 dining_room, 1 living_room)."""
    table = ade20k150()
    builder = SceneGraphBuilder(class_table=table)
    ids = [table.index(c) for c in CLASSES]
    meta = json.loads((root / "synthetic.json").read_text())
    scene_of = dict(line.split() for line in (root / "sceneCategories.txt").read_text().splitlines())
    prefix = "ADE_train_" if split == "training" else "ADE_val_"
    xs, ys = [], []
    for stem in meta["relation_only"]:
        if not stem.startswith(prefix):
            continue
        graph = builder(np.asarray(Image.open(root / "annotations" / split / f"{stem}.png")))
        attr = graph.node_attr()  # (N, 7) area, centroid, box
        row = [attr[graph.labels.tolist().index(i)] for i in ids]
        xs.append(torch.cat(row))
        ys.append(SCENES.index(scene_of[stem]))
    return torch.stack(xs), torch.tensor(ys)


def probe(root: Path, hidden: int = 64, steps: int = 2000, seed: int = 0) -> dict[str, float]:
    """Validation accuracy of a linear model and of a two-layer MLP on the geometry of the relation-only images."""
    (xt, yt), (xv, yv) = features(root, "training"), features(root, "validation")
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
    xt, xv = (xt - mean) / std, (xv - mean) / std
    out = {}
    for name in ("linear", "mlp"):
        torch.manual_seed(seed)
        d = xt.shape[1]
        model = (torch.nn.Linear(d, 2) if name == "linear" else
                 torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden),
                                     torch.nn.GELU(), torch.nn.Linear(hidden, 2)))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt), yt).backward()
            opt.step()
        with torch.no_grad():
            out[name] = float((model(xv).argmax(1) == yv).float().mean())
        out["train_" + name] = float((model(xt).argmax(1) == yt).float().mean())
    out["images"] = (len(yt), len(yv))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", help="synthetic sets (tools/make_synthetic.py --relation-fraction 1.0 ...)")
    p.add_argument("--seeds", type=int, default=3, help="model seeds (default: 3)")
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| set | relation-only images (train / val) | linear, val top-1 % | 2-layer MLP, val top-1 % |")
    print("|---|---|---:|---:|")
    for root in args.roots:
        runs = [probe(Path(root), seed=s) for s in range(args.seeds)]
        cells = []
        for name in ("linear", "mlp"):
            v = [100 * r[name] for r in runs]
            cells.append(f"{np.mean(v):.1f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.1f}")
        print(f"| {root} | {runs[0]['images'][0]} / {runs[0]['images'][1]} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
