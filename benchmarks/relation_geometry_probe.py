#!/usr/bin/env python
"""Can the objects' geometry, or their numbers of contacts, alone tell the relation pair apart? A probe of a relation
benchmark (docs/relations.md).

    python benchmarks/relation_geometry_probe.py datasets/relbench datasets/relbench_irregular \
        datasets/relbench_irregular_degree_matched

For every relation-only image of a synthetic set (``synthetic.json``'s ``relation_only``; every such image holds the
same classes, seven or eight), the graph of its annotation gives

- **geometry**: each class's area, centroid and box (7 numbers per class, in a fixed class order: 49 or 56 features,
  no edges);
- **degrees**: each class's number of contacts (one number per class: what a degree-preserving shuffle of the edges
  keeps).

Models that see all objects at once — a linear model and a two-layer MLP (64 hidden units), trained with AdamW on
the training split's relation-only images — are scored on the validation split's. Chance is 50%. With the ``boxes``
layouts the boxes give the contact away, with the ``irregular`` ones they should not; with the ``degree_matched``
ones the degrees should not either.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from twostream.data.classes import ade20k150
from twostream.data.io import load_label, read_scene_categories
from twostream.graph.builder import SceneGraphBuilder

__all__ = ["features", "probe"]

SCENES = ("dining_room", "living_room")
KINDS = ("geometry", "degrees")


def features(root: Path, split: str, kind: str = "geometry") -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, 7 C)`` geometry (``kind="geometry"``) or ``(M, C)`` numbers of contacts (``"degrees"``) of the ``C``
    classes of the relation-only images, in class-id order, and ``(M,)`` labels (0 dining_room, 1 living_room)."""
    builder = SceneGraphBuilder(class_table=ade20k150())
    meta = json.loads((root / "synthetic.json").read_text())
    scene_of = read_scene_categories(root / "sceneCategories.txt")
    prefix = "ADE_train_" if split == "training" else "ADE_val_"
    xs, ys, ids = [], [], None
    for stem in meta["relation_only"]:
        if not stem.startswith(prefix):
            continue
        graph = builder(load_label(root / "annotations" / split / f"{stem}.png"))
        labels = graph.labels.tolist()
        if ids is None:
            ids = sorted(labels)
        if sorted(labels) != ids:
            raise ValueError(f"{root}: {stem} holds other classes than the first relation-only image")
        if kind == "geometry":
            attr = graph.node_attr()  # (N, 7) area, centroid, box
        else:
            attr = torch.bincount(graph.edge_index[0], minlength=len(labels)).float()[:, None]  # (N, 1) degree
        xs.append(torch.cat([attr[labels.index(i)] for i in ids]))
        ys.append(SCENES.index(scene_of[stem]))
    return torch.stack(xs), torch.tensor(ys)


def probe(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], hidden: int = 64,
          steps: int = 2000, seed: int = 0) -> dict[str, float]:
    """Validation accuracy of a linear model and of a two-layer MLP on the :func:`features` of the relation-only
    images (``train`` and ``val``: their features and labels)."""
    (xt, yt), (xv, yv) = train, val
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
    head = [f"{kind}: {name}, val top-1 %" for kind in KINDS for name in ("linear", "2-layer MLP")]
    print("| set | relation-only images (train / val) | " + " | ".join(head) + " |")
    print("|---|---|" + "---:|" * len(head))
    for root in args.roots:
        cells = []
        for kind in KINDS:
            data = features(Path(root), "training", kind), features(Path(root), "validation", kind)  # seed-free
            runs = [probe(*data, seed=s) for s in range(args.seeds)]
            for name in ("linear", "mlp"):
                v = [100 * r[name] for r in runs]
                cells.append(f"{np.mean(v):.1f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.1f}")
        print(f"| {root} | {runs[0]['images'][0]} / {runs[0]['images'][1]} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
