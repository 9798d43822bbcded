"""train.sync_bn: BatchNorm statistics over every rank. torch's SyncBatchNorm refuses CPU tensors, so on gloo the
layers become CPUSyncBatchNorm; a 2-process CPU step must give both ranks the running statistics (and gradients) of
one process seeing the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from twostream.engine.distributed import DistInfo, convert_sync_batchnorm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from sync_bn_worker import batch, net  # noqa: E402


def test_conversion_follows_the_setting():
    cpu, two = torch.device("cpu"), DistInfo(0, 2, 0)
    assert type(convert_sync_batchnorm(net(), "auto", "segmentation", DistInfo(), cpu)[1]) is nn.BatchNorm2d
    assert type(convert_sync_batchnorm(net(), "auto", "classifier", two, cpu)[1]) is nn.BatchNorm2d
    assert type(convert_sync_batchnorm(net(), "never", "segmentation", two, cpu)[1]) is nn.BatchNorm2d
    model = net()
    weight = model[1].weight
    converted = convert_sync_batchnorm(model, "always", "classifier", two, cpu)
    assert type(converted[1]).__name__ == "CPUSyncBatchNorm" and converted[1].weight is weight  # same parameters
    assert type(converted[4]).__name__ == "CPUSyncBatchNormAct" and converted[4].act is not None
    assert set(converted.state_dict()) == set(net().state_dict())  # checkpoints unchanged
    x = torch.randn(2, 3, 8, 8)
    converted.eval()  # outside training (and with one process) it is plain batch norm
    torch.testing.assert_close(converted(x), net().eval()(x))


@pytest.mark.distributed
def test_two_cpu_processes_share_batchnorm_statistics(tmp_path):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(REPO / "tests" / "sync_bn_worker.py"), str(tmp_path)], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{k}.pt", weights_only=True) for k in (0, 1)]
    assert ranks[0]["kinds"] == ["CPUSyncBatchNorm", "CPUSyncBatchNormAct"]
    # one process, plain BatchNorm, the whole global batch (DDP averages gradients over ranks: mean loss over 4)
    model = net()
    images, labels = zip(batch(0), batch(1))
    nn.functional.cross_entropy(model(torch.cat(images)), torch.cat(labels)).backward()
    bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for rank in ranks:
        for got, want in zip(rank["running_mean"] + rank["running_var"],
                             [m.running_mean for m in bn] + [m.running_var for m in bn]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for got, want in zip(rank["grad"], [p.grad for p in model.parameters()]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ranks[0]["running_mean"][0], ranks[1]["running_mean"][0], rtol=0, atol=0)
