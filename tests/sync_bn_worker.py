"""Run by tests/test_sync_bn.py under torchrun (2 CPU processes, gloo): one DDP training step of a small conv net
with BatchNorm (and timm's BatchNormAct2d) after train.sync_bn's conversion; each rank writes its BN statistics and
gradients to <out>/rank<r>.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from twostream.engine.distributed import DistInfo, convert_sync_batchnorm


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3),
                         BatchNormAct2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank r's half of a global batch of 4; the ranks' images differ in brightness, so local statistics would."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 8, 8, generator=g) + torch.tensor([0.0, 0.0, 3.0, 3.0])[:, None, None, None]
    return images[2 * rank:2 * rank + 2], torch.tensor([0, 1, 0, 1])[2 * rank:2 * rank + 2]


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = convert_sync_batchnorm(net(), "auto", "segmentation", DistInfo(rank, world, rank), torch.device("cpu"))
    kinds = [type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    ddp = DistributedDataParallel(model)
    images, labels = batch(rank)
    nn.functional.cross_entropy(ddp(images), labels).backward()
    bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    torch.save({"kinds": kinds, "running_mean": [m.running_mean.clone() for m in bn],
                "running_var": [m.running_var.clone() for m in bn],
                "grad": [p.grad.clone() for p in model.parameters()]}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
