"""The few array operations whose spelling differs between numpy and torch, behind one interface.

The scene-graph builder is written once against these and runs on numpy arrays (the CPU path: numpy's ``flatnonzero``
and ``bincount`` are several times faster than torch's on the CPU) or on torch tensors (any device, so that a batch of
GPU label maps never leaves the GPU). Everything else the builder does (comparisons, fancy indexing, integer
arithmetic) is spelled the same in both.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["NumpyOps", "TorchOps"]


class NumpyOps:
    """The few array operations whose spelling differs between numpy and torch (numpy: the CPU path)."""

    int64 = np.int64

    @staticmethod
    def flatnonzero(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask)

    @staticmethod
    def arange(n: int, like: np.ndarray) -> np.ndarray:
        return np.arange(n, dtype=np.int64)

    @staticmethod
    def full(n: int, value: int, like: np.ndarray) -> np.ndarray:
        return np.full(n, value, dtype=np.int64)

    @staticmethod
    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)

    @staticmethod
    def i64(x: np.ndarray) -> np.ndarray:
        return x.astype(np.int64, copy=False)

    @staticmethod
    def count(x: np.ndarray, n: int) -> np.ndarray:
        return np.bincount(x, minlength=n)

    @staticmethod
    def segment_sum(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
        # float64 weights are exact for integer sums below 2**53 (a 2**26-pixel map's coordinate sums stay far below).
        return np.rint(np.bincount(index, weights=values, minlength=n)).astype(np.int64)

    @staticmethod
    def segment_min(index: np.ndarray, values: np.ndarray, n: int, fill: int) -> np.ndarray:
        out = np.full(n, fill, dtype=np.int64)
        np.minimum.at(out, index, values)
        return out

    @staticmethod
    def segment_max(index: np.ndarray, values: np.ndarray, n: int, fill: int) -> np.ndarray:
        out = np.full(n, fill, dtype=np.int64)
        np.maximum.at(out, index, values)
        return out

    @staticmethod
    def unique_counts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.unique(x, return_counts=True)

    @staticmethod
    def unique_inverse(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.unique(x, return_inverse=True)

    @staticmethod
    def argsort(x: np.ndarray) -> np.ndarray:
        return np.argsort(x, kind="stable")

    @staticmethod
    def repeat(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return np.repeat(values, counts)

    @staticmethod
    def row_starts(lab: np.ndarray) -> np.ndarray:
        """``(B, H, W)`` bool: the pixel starts a run (first column, or its label differs from its left neighbour)."""
        start = np.empty(lab.shape, dtype=bool)
        start[:, :, 0] = True
        np.not_equal(lab[:, :, 1:], lab[:, :, :-1], out=start[:, :, 1:])
        return start

    @staticmethod
    def scatter_min_(target: np.ndarray, index: np.ndarray, values: np.ndarray) -> np.ndarray:
        np.minimum.at(target, index, values)
        return target

    @staticmethod
    def minimum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.minimum(a, b)

    @staticmethod
    def maximum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.maximum(a, b)

    @staticmethod
    def asarray(x: np.ndarray, like: np.ndarray) -> np.ndarray:
        return x

    @staticmethod
    def where_node(node: np.ndarray, value: np.ndarray) -> np.ndarray:
        """``value`` where ``node >= 0``, else -1."""
        return np.where(node >= 0, value, -1)

    @staticmethod
    def f64(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64)

    @staticmethod
    def f32(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32)

    @staticmethod
    def stack1(parts: list[np.ndarray]) -> np.ndarray:
        return np.stack(parts, axis=1)

    @staticmethod
    def to_torch(x: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(x))

    @staticmethod
    def tolist(x: np.ndarray) -> list:
        return x.tolist()


class TorchOps:
    """The same operations in torch (any device; used for GPU tensors so that the map never leaves the device)."""

    int64 = torch.int64

    @staticmethod
    def flatnonzero(mask: Tensor) -> Tensor:
        return torch.nonzero(mask.reshape(-1)).squeeze(1)

    @staticmethod
    def arange(n: int, like: Tensor) -> Tensor:
        return torch.arange(n, dtype=torch.int64, device=like.device)

    @staticmethod
    def full(n: int, value: int, like: Tensor) -> Tensor:
        return torch.full((n,), value, dtype=torch.int64, device=like.device)

    @staticmethod
    def cat(parts: list[Tensor]) -> Tensor:
        return torch.cat(parts)

    @staticmethod
    def i64(x: Tensor) -> Tensor:
        return x.long()

    @staticmethod
    def count(x: Tensor, n: int) -> Tensor:
        return torch.bincount(x, minlength=n)

    @staticmethod
    def segment_sum(index: Tensor, values: Tensor, n: int) -> Tensor:
        return torch.zeros(n, dtype=torch.int64, device=index.device).index_add_(0, index, values.long())

    @staticmethod
    def segment_min(index: Tensor, values: Tensor, n: int, fill: int) -> Tensor:
        out = torch.full((n,), fill, dtype=torch.int64, device=index.device)
        return out.scatter_reduce_(0, index, values.long(), reduce="amin")

    @staticmethod
    def segment_max(index: Tensor, values: Tensor, n: int, fill: int) -> Tensor:
        out = torch.full((n,), fill, dtype=torch.int64, device=index.device)
        return out.scatter_reduce_(0, index, values.long(), reduce="amax")

    @staticmethod
    def unique_counts(x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.unique(x, sorted=True, return_counts=True)

    @staticmethod
    def unique_inverse(x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.unique(x, sorted=True, return_inverse=True)

    @staticmethod
    def argsort(x: Tensor) -> Tensor:
        return torch.argsort(x, stable=True)

    @staticmethod
    def repeat(values: Tensor, counts: Tensor) -> Tensor:
        return torch.repeat_interleave(values, counts)

    @staticmethod
    def row_starts(lab: Tensor) -> Tensor:
        first = torch.ones_like(lab[:, :, :1], dtype=torch.bool)
        return torch.cat([first, lab[:, :, 1:] != lab[:, :, :-1]], dim=2)

    @staticmethod
    def scatter_min_(target: Tensor, index: Tensor, values: Tensor) -> Tensor:
        return target.scatter_reduce_(0, index, values, reduce="amin")

    @staticmethod
    def minimum(a: Tensor, b: Tensor) -> Tensor:
        return torch.minimum(a, b)

    @staticmethod
    def maximum(a: Tensor, b: Tensor) -> Tensor:
        return torch.maximum(a, b)

    @staticmethod
    def asarray(x: np.ndarray, like: Tensor) -> Tensor:
        return torch.from_numpy(x).to(like.device)

    @staticmethod
    def where_node(node: Tensor, value: Tensor) -> Tensor:
        return torch.where(node >= 0, value, torch.full_like(value, -1))

    @staticmethod
    def f64(x: Tensor) -> Tensor:
        return x.double()

    @staticmethod
    def f32(x: Tensor) -> Tensor:
        return x.float()

    @staticmethod
    def stack1(parts: list[Tensor]) -> Tensor:
        return torch.stack(parts, dim=1)

    @staticmethod
    def to_torch(x: Tensor) -> Tensor:
        return x

    @staticmethod
    def tolist(x: Tensor) -> list:
        return x.tolist()
