"""Runs: the representation the scene-graph builder works on, and the vectorised operations over them.

A *run* is a maximal horizontal stretch of one label in one row. A 512x512 ADE20K-like map has ~10k runs against
262k pixels, so everything after finding them (geometry, connected regions, most adjacencies) costs O(runs), not
O(pixels). Every function takes ``xp`` (:class:`~twostream.graph._ops.NumpyOps` or ``TorchOps``) and works the same
on numpy arrays and torch tensors; maps are ``(B, H, W)`` and contiguous, flat indices run over the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Runs", "connected_runs", "diagonal_positions", "find_runs", "offset_positions", "run_segments"]


@dataclass
class Runs:
    """Runs of a ``(B, H, W)`` map (``R`` runs, raster order over the batch): flat start, length, label, position."""

    start: Any  # (R,) int64 flat index of the run's first pixel in the (B, H, W) map
    length: Any  # (R,) int64
    label: Any  # (R,) int64
    image: Any  # (R,) int64 batch index
    y: Any  # (R,) int64 row
    x0: Any  # (R,) int64 first column


def find_runs(lab: Any, start_mask: Any, xp: Any) -> Runs:
    """The runs of ``lab (B, H, W)`` given its run-start mask (``xp.row_starts(lab)``)."""
    batch, height, width = lab.shape
    start = xp.flatnonzero(start_mask)  # (R,) raster order
    total = batch * height * width
    length = xp.cat([start[1:], xp.full(1, total, start)]) - start  # a row's last run ends at the next row start
    label = xp.i64(lab.reshape(-1)[start])
    row = start // width  # global row over the batch
    if batch == 1:
        image, y = xp.full(int(start.shape[0]), 0, start), row
    else:
        rows = xp.arange(batch * height, start)  # small tables instead of two more divisions per run
        image, y = (rows // height)[row], (rows % height)[row]
    return Runs(start=start, length=length, label=label, image=image, y=y, x0=start - row * width)


def offset_positions(cmp: Any, xp: Any, dy: int, dx: int) -> Any:
    """Flat positions ``p`` of the pixel pairs ``(p, p + dy * W + dx)`` of ``cmp (B, H, W)`` whose values differ.

    The contiguous map is compared with itself shifted by ``d = dy * W + dx`` as one flat array (no strided
    copies); the few differing "pairs" that wrap around a row or an image edge are dropped afterwards.
    """
    batch, height, width = cmp.shape
    d = dy * width + dx
    flat = cmp.reshape(-1)
    if abs(dx) >= width or dy >= height or d >= flat.shape[0]:
        return xp.full(0, 0, cmp)
    q = xp.flatnonzero(flat[:-d] != flat[d:])
    if dx != 0 or batch > 1:
        row = q // width
        x = q - row * width
        keep = (x + dx >= 0) & (x + dx < width)
        if batch > 1:  # one image's last rows against the next image's first rows
            keep &= (row % height) + dy < height
        q = q[keep]
    return q


def diagonal_positions(lab: Any, runs: Runs, vertical: Any, start_mask: Any, dx: int) -> tuple[Any, Any]:
    """8-connectivity without tolerance: positions ``p`` of the differing diagonal pairs ``(p, p + W + dx)`` of a
    label map, found next to run starts and ``vertical`` changes (positions of differing ``(p, p + W)`` pairs)
    instead of by another pass over the map. Returns two disjoint arrays of positions.

    With ``A = p``, ``B = p + W + dx`` and ``C = p + dx`` (A's neighbour in its row, above B), ``A != B`` means
    ``A != C`` (a run starts between them) or ``A == C != B`` (a vertical change under C): two disjoint sets.
    """
    width = lab.shape[2]
    flat, starts_flat = lab.reshape(-1), start_mask.reshape(-1)
    starts = runs.start[(runs.x0 >= 1) & (runs.y < lab.shape[1] - 1)]
    s1 = starts - 1 if dx == 1 else starts  # A != C
    s1 = s1[flat[s1] != flat[s1 + width + dx]]
    column = vertical % width
    if dx == 1:
        under = vertical[column >= 1]
        s2 = under - 1
        s2 = s2[~starts_flat[under]]  # A == C (no run starts at C) and C != B
    else:
        under = vertical[column <= width - 2]
        s2 = under + 1
        s2 = s2[~starts_flat[s2]]
    return s1, s2


def run_segments(runs: Runs, start_mask: Any, xp: Any, dx: int) -> tuple[Any, Any, Any]:
    """Pixel pairs ``(y, x)``-``(y + 1, x + dx)`` grouped into segments along which both pixels stay in the same
    runs: the run above, the run below and the number of pixel pairs of each segment.

    A segment starts at every run start of either row (and at the first column), so one entry per segment finds
    every pair of runs touching at this offset, and its length is their number of touching pixel pairs.
    """
    batch, height, width = start_mask.shape
    xa0, xa1 = max(0, -dx), width - max(0, dx)
    span = xa1 - xa0
    top = start_mask[:, :-1, xa0:xa1]  # (B, H-1, W')
    bottom = start_mask[:, 1:, xa0 + dx: xa1 + dx]
    brk = top | bottom
    brk[:, :, 0] = True
    q = xp.flatnonzero(brk)  # in the (B, H-1, W') grid; each grid row starts with a breakpoint
    length = xp.cat([q[1:], xp.full(1, batch * (height - 1) * span, q)]) - q
    if dx == 0:
        # Every run start of rows 0..H-2 (top) and 1..H-1 (bottom) is a breakpoint, so counting them along the
        # breakpoints numbers the runs: no search needed. Across images, skip the rows the views leave out.
        above = xp.i64(top.reshape(-1)[q]).cumsum(0) - 1
        below = xp.i64(bottom.reshape(-1)[q]).cumsum(0) - 1
        first_row = xp.i64(start_mask[:, 0].sum(1))  # (B,) runs in each image's first and last row
        if batch == 1:
            return above, below + first_row[0], length
        last_row = xp.i64(start_mask[:, -1].sum(1))
        img = q // ((height - 1) * span)
        skipped_above = xp.cat([xp.full(1, 0, q), last_row.cumsum(0)[:-1]])
        return above + skipped_above[img], below + first_row.cumsum(0)[img], length
    row = q // span
    rows = xp.arange(batch * (height - 1), q)
    img = rows // (height - 1)
    pa = ((img * height + (rows - img * (height - 1))) * width + xa0)[row] + (q - row * span)
    ra = xp.searchsorted_right(runs.start, pa) - 1
    rb = xp.searchsorted_right(runs.start, pa + width + dx) - 1
    return ra, rb, length


def connected_runs(runs: Runs, segments: list[tuple[Any, Any, Any]], xp: Any) -> Any:
    """``(R,)`` root of each run's connected region: the region's smallest run index (union-find over runs)."""
    num_runs = int(runs.start.shape[0])
    parent = xp.arange(num_runs, runs.start)
    if not segments:
        return parent
    us, vs = [], []
    for ra, rb, _ in segments:
        keep = runs.label[ra] == runs.label[rb]
        us.append(ra[keep])
        vs.append(rb[keep])
    u, v = xp.cat(us), xp.cat(vs)
    # Hook each larger root under the smallest root it touches, then jump pointers until every run points at a
    # root. Roots only decrease, so this terminates; ADE20K-like maps need a handful of rounds.
    while True:
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        if not bool(differ.any()):
            return parent
        u, v, pu, pv = u[differ], v[differ], pu[differ], pv[differ]
        xp.scatter_min_(parent, xp.maximum(pu, pv), xp.minimum(pu, pv))
        while True:  # two jumps per convergence check: chains are ~H runs deep after the first hooking
            grand = parent[parent][parent[parent]]
            if bool((grand == parent).all()):
                break
            parent = grand
