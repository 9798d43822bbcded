"""Training-side throughput: the classifier's optimizer step and the data loader that feeds it.

The data is what a staged run reads: a synthetic ADE20K-format set generated at the benchmark size
(:func:`~twostream.data.synthetic.make_synthetic`), its scene graphs stored once (:func:`build_graph_store`; built
from the annotations, the same store format a trained segmenter's ``pred`` graphs use), opened with the training
transforms (``build_datasets``), graphs attached from the store (``WithGraphs`` + ``GraphStore``, as the classifier
task does) and batched by the engine's own ``make_loaders``.

- Training step: ``ClassificationTask.loss`` (forward with the cached graphs, cross-entropy), backward, gradient
  clipping and an AdamW step from ``build_optimizer`` (the trainer's per-step work, without logging), on one batch
  from that loader; median seconds per step after warm-up.
- Loader: batches per second from the training loader with ``num_workers`` = 0, 1, 2, with nothing consuming them
  but the loop itself. The clock starts once the batches the workers prefetched during start-up
  (``2 * num_workers``) have been taken, so the rate is the steady one; start-up (to the first batch) is reported
  on its own.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from twostream.benchmark.inference import ModelSpec, build_spec_model, compile_dense, spec_config
from twostream.benchmark.measure import Timing, time_calls
from twostream.config import Config

log = logging.getLogger(__name__)

__all__ = ["LoaderRow", "TrainStepResult", "bench_loader", "bench_train_step", "prepare_training_data"]

PREFETCH = 2  # DataLoader's default prefetch_factor: batches each worker prepares ahead


@dataclass
class TrainStepResult:
    """Seconds per optimizer step of ``config`` at ``batch`` images of ``image_size``."""

    config: str
    batch: int
    image_size: tuple[int, int]
    params: int
    trainable: int
    step: Timing

    @property
    def images_per_s(self) -> float:
        return self.step.rate(self.batch)

    @property
    def steps_per_s(self) -> float:
        return self.step.rate(1)


@dataclass
class LoaderRow:
    """One loader measurement: ``batches`` timed batches of ``batch`` items in ``seconds``, after a start-up."""

    workers: int
    batch: int
    startup_s: float
    batches: int
    seconds: float

    @property
    def batches_per_s(self) -> float:
        return self.batches / self.seconds

    @property
    def images_per_s(self) -> float:
        return self.batches * self.batch / self.seconds

    @property
    def ms_per_item(self) -> float:
        """Time one worker (or the main process with 0 workers) spends on one item."""
        return 1e3 * self.seconds * max(self.workers, 1) / (self.batches * self.batch)


def prepare_training_data(root: Path, config_dir: Path, *, size: int | None, ci: bool, loader_batches: int,
                          workers: Sequence[int], seed: int = 0, batch_size: int | None = None) -> Config:
    """Generate the synthetic set and its graph store under ``root``; return the quickstart config reading them.

    Enough training images are drawn for the largest worker count: the prefetched start-up batches plus
    ``loader_batches`` timed ones.
    """
    from twostream.data.ade20k import ADE20KDataset
    from twostream.data.synthetic import SCENES, make_synthetic
    from twostream.data.transforms import build_transforms
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.graph.store_build import build_graph_store

    data_root, cache_dir = root / "synthetic", root / "graphs-training"
    extra = [f"data.root={data_root}", f"graph.cache_dir={cache_dir}", "graph.source=pred",
             "model.segmenter.checkpoint=", "data.max_items=0"]
    if batch_size is not None:
        extra.append(f"train.batch_size={batch_size}")
    cfg = spec_config(ModelSpec("quickstart", "quickstart"), config_dir, size=size, ci=ci, extra=extra)
    batch = cfg.train.batch_size
    needed = batch * (1 + PREFETCH * max(workers, default=0) + loader_batches)
    per_scene = math.ceil(needed / len(SCENES))
    h, w = cfg.data.image_size
    log.info("synthetic set: %d training images of %dx%d px in %s", per_scene * len(SCENES), h, w, data_root)
    make_synthetic(data_root, train_per_scene=per_scene, val_per_scene=1, size=(h, w), seed=seed)
    builder = SceneGraphBuilder.from_config(cfg.graph)
    dataset = ADE20KDataset(data_root, cfg.data.train_split, vocabulary=None,
                            transform=build_transforms(cfg.data, train=False))
    build_graph_store(cache_dir, dataset, builder, kind="gt", progress=False)
    return cfg


def _train_dataset(cfg: Config):
    """The training split with graphs from the store: what the classifier task's loader reads."""
    from twostream.data.ade20k import build_datasets
    from twostream.engine.data import WithGraphs
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.graph.store import GraphStore

    train_set, val_set, _ = build_datasets(cfg)
    settings = SceneGraphBuilder.from_config(cfg.graph).settings()
    return WithGraphs(train_set, cache=GraphStore(cfg.graph.cache_dir, settings=settings)), val_set


def _loader(cfg: Config, workers: int, seed: int):
    from twostream.engine.data import make_loaders

    train_set, val_set = _train_dataset(cfg)
    return make_loaders(train_set, val_set, batch_size=cfg.train.batch_size, eval_batch_size=cfg.eval.batch_size,
                        num_workers=workers, rank=0, world_size=1, seed=seed).train


def bench_loader(cfg: Config, workers: int, batches: int, seed: int = 0) -> LoaderRow:
    """Steady-state batches per second of the training loader with ``workers`` worker processes."""
    loader = _loader(cfg, workers, seed)
    skip = PREFETCH * workers  # batches prepared during start-up, before the clock starts
    if len(loader) < 1 + skip + batches:
        raise ValueError(f"benchmark: the loader has {len(loader)} batches, {1 + skip + batches} are needed")
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    startup = time.perf_counter() - t0
    for _ in range(skip):
        next(it)
    t1 = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - t1
    del it  # shuts the workers down
    return LoaderRow(workers=workers, batch=cfg.train.batch_size, startup_s=startup, batches=batches,
                     seconds=seconds)


def bench_train_step(cfg: Config, device: torch.device, *, warmup: int = 1, iters: int = 5, min_iters: int = 3,
                     budget_s: float = 15.0, bf16: bool = False, compile: bool = False,
                     seed: int = 0) -> TrainStepResult:
    """Seconds per training step of ``cfg``'s classifier on one batch of its training loader."""
    from twostream.engine.distributed import DistInfo
    from twostream.engine.optim import build_optimizer
    from twostream.engine.tasks import ClassificationTask

    task = ClassificationTask(cfg, DistInfo())
    batch = next(iter(_loader(cfg, 0, seed)))
    model = build_spec_model(cfg, seed).to(device).train()
    if compile:
        compile_dense(model)
    optimizer = build_optimizer(model, cfg.train)
    batch = task.to_device(batch, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss, _ = task.loss(model, batch)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the trainer reads the loss every step (a device sync on a GPU)

    timing = time_calls(step, device, warmup=warmup, iters=iters, min_iters=min_iters, budget_s=budget_s)
    params = list(model.parameters())
    return TrainStepResult(config="quickstart", batch=int(batch["image"].shape[0]),
                           image_size=tuple(cfg.data.image_size), params=sum(p.numel() for p in params),
                           trainable=sum(p.numel() for p in params if p.requires_grad), step=timing)

