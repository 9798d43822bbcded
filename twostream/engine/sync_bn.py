"""SyncBatchNorm that also runs on CPU processes (gloo).

``torch.nn.SyncBatchNorm`` computes the batch statistics over every rank, but only on GPU: torch 2.14 raises
"SyncBatchNorm expected input tensor to be on GPU" for CPU input (``torch.batch_norm_stats`` has no CPU kernel) and
``DistributedDataParallel`` refuses a CPU module holding one ("SyncBatchNorm layers only work with GPU modules").
GPU runs use torch's (through timm's converter, which also handles timm's ``BatchNormAct2d``). For CPU process
groups (gloo: tests, CPU clusters) :func:`convert_cpu_sync_batchnorm` puts :class:`CPUSyncBatchNorm` in their place:
it computes the same statistics with a differentiable all-reduce (``torch.distributed.nn.functional.all_reduce``) of
each channel's sum, sum of squares and count; it normalises with the global mean and (biased) variance, updates the
running statistics with the global unbiased variance, as ``SyncBatchNorm`` does, and gradients flow back through the
reduction. Outside training, or with one process, it is plain batch norm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["CPUSyncBatchNorm", "CPUSyncBatchNormAct", "convert_cpu_sync_batchnorm"]


class CPUSyncBatchNorm(_BatchNorm):
    """Batch norm over ``(N, C, *)`` input whose training statistics cover every rank of ``process_group``.

    Not a subclass of ``nn.SyncBatchNorm`` (DDP refuses those on CPU). State dict identical to ``BatchNorm``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"CPUSyncBatchNorm: expected at least 2D input (N, C, ...), got {x.dim()}D")

    def _world(self) -> int:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group or dist.group.WORLD)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if self._world() == 1:  # eval, or one process: plain batch norm
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [0, *range(2, x.ndim)]
        local = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([x.numel() / c])])  # (2C + 1,)
        total = all_reduce(local, op=dist.ReduceOp.SUM, group=self.process_group or dist.group.WORLD)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)  # biased: what normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        shape = (1, c, *([1] * (x.ndim - 2)))
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class CPUSyncBatchNormAct(CPUSyncBatchNorm):
    """timm's ``BatchNormAct2d`` (batch norm, then its ``drop`` and ``act``) with :class:`CPUSyncBatchNorm`'s
    statistics."""

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))


def convert_cpu_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Every BatchNorm layer of ``module`` (timm's ``BatchNormAct2d`` too) as a :class:`CPUSyncBatchNorm` sharing its
    parameters and buffers; returns ``module`` (or the replacement, when ``module`` itself is one)."""
    from timm.layers import BatchNormAct2d

    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm | CPUSyncBatchNorm):
        cls = CPUSyncBatchNormAct if isinstance(module, BatchNormAct2d) else CPUSyncBatchNorm
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                  process_group)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        if isinstance(module, BatchNormAct2d):
            out.act, out.drop = module.act, module.drop
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_cpu_sync_batchnorm(child, process_group))
    return out
