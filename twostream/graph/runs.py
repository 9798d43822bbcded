"""Runs: the representation the scene-graph builder works on, and the vectorised operations over them.

A *run* is a maximal horizontal stretch of one label in one row. A 512x512 ADE20K-like map has ~10k runs against
262k pixels, so everything after finding them (geometry, connected regions, most adjacencies) costs O(runs), not
O(pixels). Every function takes ``xp`` (:class:`~twostream.graph._ops.NumpyOps` or ``TorchOps``) and works the same
on numpy arrays and torch tensors; maps are ``(B, H, W)`` and contiguous, flat indices run over the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Runs", "connected_runs", "diagonal_label_pairs", "find_runs", "offset_positions", "run_contacts"]


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


def diagonal_label_pairs(lab: Any, runs: Runs, vertical: Any, start_mask: Any,
                         xp: Any) -> tuple[list[tuple[Any, Any, Any]], Any]:
    """8-connectivity without tolerance: the diagonal pixel pairs ``(p, p + W + dx)``, ``dx = +-1``, of a label map,
    found beside run starts and the ``vertical`` changes (positions of the differing ``(p, p + W)`` pairs) instead of
    by more passes over the map.

    With ``A = p``, ``B = p + W + dx`` and ``C = p + dx`` (A's row neighbour, above B), ``A != B`` means either
    ``A != C``: a run starts between A and C, so A and C are two consecutive runs; or ``A == C != B``: C sits on a
    vertical change whose label pair is the diagonal's. The two cases are disjoint.

    Returns:
        the label pairs ``(a, b, image)`` of the first case (``image`` is ``None`` for one map; pairs with
        ``a == b`` are included and must be dropped by the caller), and per vertical change the number (0-2) of
        diagonal pairs of the second case that share its label pair.
    """
    batch, height, width = lab.shape
    flat, starts = lab.reshape(-1), start_mask.reshape(-1)
    index = xp.flatnonzero((runs.x0 >= 1) & (runs.y < height - 1))  # runs with a left neighbour and a row below
    start = runs.start[index]
    image = runs.image[index] if batch > 1 else None
    # dx = +1: A is the last pixel of the run before, B is below the start; dx = -1: A is the start, B below-left.
    pairs = [(runs.label[index - 1], xp.i64(flat[start + width]), image),
             (runs.label[index], xp.i64(flat[start + width - 1]), image)]
    column = vertical % width
    # dx = +1: C = the vertical change's upper pixel, A = C - 1 in the same run (no start at C); dx = -1: A = C + 1.
    extra = xp.i64((column >= 1) & ~starts[vertical]) + xp.i64((column <= width - 2) & ~starts[vertical + 1])
    return pairs, extra


def run_contacts(start_mask: Any, connectivity: int, xp: Any) -> tuple[Any, Any, Any]:
    """Every pair of runs in consecutive rows that touch, with their number of touching pixel pairs.

    Returns ``(above, below, pairs)``: run indices (runs numbered in raster order, as :func:`find_runs` does) and
    pixel-pair counts; a pair of runs may appear more than once (its counts then add up).

    The pixel pairs ``(y, x)``-``(y + 1, x)`` are cut into *segments* at every run start of either row, so along a
    segment both pixels stay in the same two runs: a segment of length ``L`` is ``L`` vertical pairs. Every run start
    is a segment start, so counting starts along the segments numbers the runs (no search). Under 8-connectivity the
    diagonal pairs follow from the same segments: ``L - 1`` of each direction inside a segment, and one of each
    direction across the border of two consecutive segments of a row (upper run of one, lower run of the other).
    """
    batch, height, width = start_mask.shape
    top = start_mask[:, :-1]  # (B, H-1, W): starts of rows 0..H-2
    bottom = start_mask[:, 1:]  # starts of rows 1..H-1
    q = xp.flatnonzero(top | bottom)  # segment starts; column 0 is a run start in every row
    length = xp.cat([q[1:], xp.full(1, batch * (height - 1) * width, q)]) - q
    above = xp.i64(top.reshape(-1)[q]).cumsum(0) - 1
    below = xp.i64(bottom.reshape(-1)[q]).cumsum(0) - 1
    first_row = xp.i64(start_mask[:, 0].sum(1))  # (B,) runs in each image's first row
    if batch == 1:
        below = below + first_row[0]
    else:  # the views leave out each image's last row (above) and first row (below): skip their runs
        last_row = xp.i64(start_mask[:, -1].sum(1))
        img = q // ((height - 1) * width)
        above = above + xp.cat([xp.full(1, 0, q), last_row.cumsum(0)[:-1]])[img]
        below = below + first_row.cumsum(0)[img]
    if connectivity == 4:
        return above, below, length
    border = xp.flatnonzero(q[1:] % width != 0)  # segment i + 1 continues segment i's row
    ones = xp.full(int(border.shape[0]), 1, q)
    return (xp.cat([above, above[border], above[border + 1]]), xp.cat([below, below[border + 1], below[border]]),
            xp.cat([3 * length - 2, ones, ones]))


def connected_runs(runs: Runs, contacts: tuple[Any, Any, Any] | None, xp: Any) -> Any:
    """``(R,)`` root of each run's connected region (the region's smallest run index): union-find over the runs,
    joined where ``contacts`` (:func:`run_contacts`) touch with the same label."""
    num_runs = int(runs.start.shape[0])
    parent = xp.arange(num_runs, runs.start)
    if contacts is None:
        return parent
    above, below, _ = contacts
    keep = runs.label[above] == runs.label[below]
    u, v = above[keep], below[keep]
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
