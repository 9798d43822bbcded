"""Distributed helpers and device resolution: one place reads torchrun's environment and turns a device name into a
``torch.device``; everything else asks these functions.

The same command runs on one process, several (``torchrun --nproc_per_node=N``) and several machines (torchrun's
``--nnodes``/``--rdzv-*`` flags): nothing here launches processes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

__all__ = [
    "DEVICES",
    "DistInfo",
    "all_gather_object",
    "all_reduce_max",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup",
    "convert_sync_batchnorm",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "launched_ranks",
    "resolve_device",
]

DEVICES = ("auto", "cpu", "cuda", "cuda:N")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """The ``torch.device`` for a device name (``train.device``, the tools' ``--device``).

    ``auto`` -> this process's GPU when one is visible, else the CPU; ``cuda`` -> ``cuda:<local_rank>`` (torchrun's
    ``LOCAL_RANK`` unless given, else 0); ``cuda:N`` and ``cpu`` as written.

    Raises:
        ValueError: one line, for a name outside :data:`DEVICES` or a GPU that is not there.
    """
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    text = str(name).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda":
        text = f"cuda:{local_rank}"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"device '{name}' is not one of {', '.join(DEVICES)}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device '{name}' is not one of {', '.join(DEVICES)}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}': no CUDA GPU is visible; use cpu or auto (train.device, --device)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device '{name}': only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return device


def launched_ranks() -> DistInfo:
    """This process's place among the processes torchrun launched (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), without
    joining a process group (graph builds: the ranks share a folder, not tensors)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    return DistInfo(rank=int(os.environ["RANK"]), world_size=world_size,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or run single-process.

    Backend: nccl on GPU, gloo on CPU.
    """
    info = launched_ranks()
    if not info.enabled:
        log.debug("not using distributed mode")
        return info
    rank, world_size = info.rank, info.world_size
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        log.info("distributed: rank %d of %d (%s)", rank, world_size, backend)
    return info


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over ranks (a copy; the input is untouched)."""
    if get_world_size() == 1:
        return value.detach().clone()
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over ranks (a copy)."""
    out = value.detach().clone()
    if get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of ``value`` over ranks (a copy)."""
    out = value.detach().clone()
    if get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process); objects are pickled."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself in one process)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def convert_sync_batchnorm(model: torch.nn.Module, mode: str, stage: str, dist_info: DistInfo,
                           device: torch.device) -> torch.nn.Module:
    """``train.sync_bn``: under DDP, BatchNorm layers become SyncBatchNorm, so their statistics cover the global
    batch (``auto``: in the segmentation stage; ``always``; ``never``). One process: ``model`` unchanged.

    timm's converter is used (it also converts its ``BatchNormAct2d``); on CPU (gloo), where torch's SyncBatchNorm
    refuses to run, the layers become :class:`~twostream.engine.sync_bn.CPUSyncBatchNorm`. Parameters and buffers
    are the same tensors, so an optimizer built before and the checkpoints' state-dict keys are unaffected.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    from twostream.engine.sync_bn import CPUSyncBatchNorm

    if not dist_info.enabled or mode == "never" or (mode == "auto" and stage != "segmentation"):
        return model
    count = sum(isinstance(m, _BatchNorm) and not isinstance(m, torch.nn.SyncBatchNorm | CPUSyncBatchNorm)
                for m in model.modules())
    if not count:
        return model
    if device.type == "cpu":
        from twostream.engine.sync_bn import convert_cpu_sync_batchnorm

        model = convert_cpu_sync_batchnorm(model)
    else:
        from timm.layers import convert_sync_batchnorm as timm_convert

        model = timm_convert(model)
    log.info("train.sync_bn=%s: %d BatchNorm layer(s) synchronised across %d processes", mode, count,
             dist_info.world_size)
    return model
