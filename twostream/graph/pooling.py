"""Node features pooled from a feature map under each node's pixels, from the builder's runs (differentiable)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from twostream.graph.runs import Runs

__all__ = ["pool_run_features"]


def pool_run_features(runs: Runs, run_node: Any, node_area: Any, xp: Any, features: Tensor,
                      image_size: tuple[int, int]) -> Tensor:
    """``(N, C)`` float32: mean of the nearest-resized ``features (B, C, h, w)`` over each node's pixels.

    ``run_node (R,)`` is each run's node (``-1``: none) and ``node_area (N,)`` each node's pixel count; pixel
    ``(y, x)`` reads feature cell ``(y * h // H, x * w // W)``.

    Per run (row ``y``, columns ``[x0, x1)``) the sum of the resized features is ``G(x1) - G(x0)`` with
    ``G(x) = sum of the features of pixels 0..x-1 in the run's feature row``: a prefix sum over feature cells
    weighted by how many pixel columns each cell covers, plus the partial cell. Runs add into their node.
    """
    height, width = image_size
    batch, channels, h, w = features.shape
    device = features.device

    def t(x: Any) -> Tensor:
        return xp.to_torch(x).to(device).long()

    node = t(run_node)
    sel = node >= 0
    node, img, y = node[sel], t(runs.image)[sel], t(runs.y)[sel]
    x0 = t(runs.x0)[sel]
    x1 = x0 + t(runs.length)[sel]
    num_nodes = int(node_area.shape[0])
    feats = features.float().permute(0, 2, 3, 1)  # (B, C, h, w) -> (B, h, w, C)
    cells = torch.arange(w + 1, device=device)
    cell_start = (cells * width + w - 1) // w  # (w + 1,) first pixel column of each cell; cell_start[w] = W
    cell_width = (cell_start[1:] - cell_start[:-1]).to(feats.dtype)  # (w,)
    zeros = feats.new_zeros(batch, h, 1, channels)
    prefix = torch.cat([zeros, torch.cumsum(feats * cell_width[:, None], dim=2)], dim=2)  # (B, h, w + 1, C)
    padded = torch.cat([feats, zeros], dim=2)  # (B, h, w + 1, C); cell w is past the right edge
    row = (img * h + (y * h) // height) * (w + 1)  # (R',) flat (b, cy) row in the (B, h, w + 1) grid

    def prefix_at(x: Tensor) -> Tensor:  # G(x) per run, (R', C)
        c = (x * w) // width
        index = row + c
        partial = (x - cell_start[c]).to(feats.dtype)[:, None]
        return prefix.reshape(-1, channels)[index] + partial * padded.reshape(-1, channels)[index]

    sums = feats.new_zeros(num_nodes, channels).index_add_(0, node, prefix_at(x1) - prefix_at(x0))
    area = xp.to_torch(node_area).to(device).to(feats.dtype).clamp(min=1)
    return sums / area[:, None]
