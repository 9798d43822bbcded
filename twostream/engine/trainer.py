"""The training loop for both stages: segmentation (UPSNet or a trainable published segmenter) and the two-stream
scene classifier.

Read it top to bottom like torchvision's reference script: ``train_one_epoch`` -> ``evaluate`` -> ``train``.
What differs between the stages (model, loss, metrics, data) lives in a small task object
(:mod:`twostream.engine.tasks`); the loop itself is shared: AdamW, warmup + cosine/poly schedule, gradient clipping and
accumulation, AMP, optional ``torch.compile`` and channels_last, DDP through torchrun, atomic resumable checkpoints,
TensorBoard scalars, a progress bar, and ``metrics.jsonl`` (one line per logged step and per evaluation).

Resume is exact: a run killed at any optimizer step and started again with the same command ends with the same weights
as a run that was never interrupted (bitwise on the CPU; see docs/training.md for what GPUs change). The checkpoint
holds the model, optimizer, scheduler and scaler states, the position inside the epoch and every rank's random
generators; augmentation is seeded per item (:class:`~twostream.engine.data.SeededItems`).

Preemption: on SIGTERM or SIGUSR1 the run finishes the optimizer step it is in, writes a checkpoint, logs one line and
raises :class:`Preempted`; ``tools/train.py`` then exits with status ``128 + signal number`` (143 for SIGTERM, 138 for
SIGUSR1). Under torchrun the ranks agree on the step (an all-reduce of the stop flag after every step).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from twostream.config import Config, config_differences, config_to_dict, save_config
from twostream.engine import distributed as D
from twostream.engine.checkpoint import (
    FORMAT,
    CheckpointError,
    CheckpointManager,
    capture_rng,
    load_checkpoint,
    load_model_state,
    record_command,
    resolve_segmenter_config,
    restore_rng,
    write_error,
)
from twostream.engine.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

__all__ = ["STOP_SIGNALS", "Preempted", "TrainingError", "preempted_exit_code", "resolve_amp", "seed_everything",
           "train"]

# Signals that stop a run cleanly (checkpoint, then exit): what schedulers send before they kill a job (SLURM, k8s
# and most others send SIGTERM; SLURM's --signal and some clusters' pre-emption notices use SIGUSR1).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, an inconsistent run folder). The message is one line."""


def preempted_exit_code(signum: int) -> int:
    """The exit status of a run stopped by signal ``signum`` after its checkpoint: ``128 + signum``, the shell's code
    for "ended by that signal" (143 for SIGTERM, 138 for SIGUSR1), so schedulers and wrappers read it as they would."""
    return 128 + int(signum)


class Preempted(Exception):
    """The run stopped on a signal after writing its checkpoint; running the same command resumes it exactly."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = preempted_exit_code(signum)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``: ``None`` means full precision."""
    if amp == "fp32" or device.type != "cuda":
        if amp in ("bf16", "fp16") and device.type != "cuda":
            log.warning("train.amp=%s asked for but the device is %s: training in float32", amp, device)
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _unwrap(model: nn.Module) -> nn.Module:
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)  # torch.compile wrapper


class _JsonlLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (rank 0 only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, **record) -> None:
        if self.path is not None:
            try:
                with self.path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                raise write_error(self.path, e, "the metrics log") from None


class _StopSignals:
    """Turns :data:`STOP_SIGNALS` into a flag the loop polls after each optimizer step (the handler does nothing else,
    so a signal never interrupts a step or a checkpoint write). The previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        self.signum = self.signum or signum

    def poll(self, device: torch.device) -> int:
        """The signal that asks this run to stop, or 0; collective under torchrun (every rank gets the same answer,
        so all of them stop after the same step)."""
        if D.get_world_size() == 1:
            return self.signum
        return int(D.all_reduce_max(torch.tensor([self.signum], dtype=torch.int64, device=device)).item())


@dataclass
class LoopState:
    """Where the run is: what a checkpoint records and a resume restores."""

    epoch: int = 0  # the epoch in progress (0-based)
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of this epoch already consumed
    best: float | None = None  # best validation score so far (task.main_metric)
    # the epoch's evaluation and end-of-epoch checkpoint are done (a checkpoint after the last step, written before
    # them by a preemption or train.checkpoint_every, leaves them to the resumed run)
    epoch_done: bool = False


@dataclass
class Run:
    """Everything one training run holds, built once by :func:`train` and read by :func:`train_one_epoch`."""

    cfg: Config
    task: Any
    model: nn.Module  # the model as trained: DDP- and compile-wrapped when asked
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    dist: D.DistInfo
    manager: CheckpointManager | None  # rank 0 only
    writer: Any = None  # TensorBoard SummaryWriter, rank 0 only
    jsonl: _JsonlLog = field(default_factory=lambda: _JsonlLog(None))
    state: LoopState = field(default_factory=LoopState)
    stop: _StopSignals = field(default_factory=_StopSignals)

    def checkpoint_state(self, rng_ranks: list[dict]) -> dict:
        m = _unwrap(self.model)
        return {
            "format": FORMAT,
            "stage": self.task.stage,
            "model": m.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "batch_in_epoch": self.state.batch_in_epoch,
            "best": self.state.best,
            "epoch_done": self.state.epoch_done,
            "world_size": self.dist.world_size,
            "config": config_to_dict(self.cfg),
            **self.task.checkpoint_extras(),
            "rng": rng_ranks[0],  # rank 0's generators (what earlier versions stored)
            "rng_ranks": rng_ranks,  # every rank's, in rank order: a resume with as many processes restores its own
        }

    def save_checkpoint(self, is_best: bool = False) -> Path:
        """Collective: every rank hands in its random generators, rank 0 writes, every rank learns whether it could.

        Raises:
            CheckpointError: on every rank, when rank 0's write failed (disk full, read-only folder).
        """
        rng_ranks = D.all_gather_object(capture_rng())
        error, path = "", self.manager.last if self.manager is not None else Path()
        if self.manager is not None:
            try:
                path = self.manager.save(self.checkpoint_state(rng_ranks), epoch=self.state.epoch,
                                         step=self.state.step, is_best=is_best)
            except CheckpointError as e:
                error = str(e)
        error = D.broadcast_object(error)
        if error:
            raise CheckpointError(error)
        return path

    def preempt_if_asked(self, checkpointed: bool) -> None:
        """After an optimizer step: stop here when a stop signal reached any rank (checkpoint first)."""
        signum = self.stop.poll(self.device)
        if not signum:
            return
        path = self.manager.last if self.manager is not None else None
        if not checkpointed:
            path = self.save_checkpoint()
        name = signal.Signals(signum).name
        message = (f"stopped by {name} after optimizer step {self.state.step} (epoch {self.state.epoch + 1}): "
                   f"checkpoint {path}; run the same command to resume (exit status {preempted_exit_code(signum)})")
        if self.dist.is_main:
            log.warning("%s", message)
        raise Preempted(signum, message)


# Extending a run (more epochs) or changing how often it logs or checkpoints, or how its data is loaded, is fine on a
# resume; anything else is another run.
RESUME_FREE_KEYS = ("train.epochs", "train.checkpoint_every", "train.keep_last", "train.log_every", "data.num_workers")


def _check_run_folder(cfg: Config, run_dir: Path, resuming: bool) -> None:
    """A run folder holds one experiment: refuse to mix a different config into it."""
    saved = run_dir / "config.yaml"
    if not resuming or not saved.exists():
        return
    from twostream.config import load_config

    diff = config_differences(load_config(saved), cfg, RESUME_FREE_KEYS)
    if diff:
        raise TrainingError(f"{run_dir} holds a run with another config (differs in {', '.join(diff[:5])}); "
                            "pass --fresh to start it over, or set output.dir to a new folder")


def train_one_epoch(run: Run, loader, epoch: int) -> None:
    """One pass over the (rest of the) epoch; ``run.state`` (step, position in the epoch) is updated as it goes."""
    model, task, optimizer, cfg, state = run.model, run.task, run.optimizer, run.cfg, run.state
    model.train()
    tcfg = cfg.train
    accumulate = tcfg.accumulate
    batches_per_epoch = state.batch_in_epoch + len(loader)
    # The bar is for terminals; logs and CI get the per-epoch lines and metrics.jsonl instead.
    show_bar = run.dist.is_main and sys.stderr.isatty()
    bar = tqdm(loader, total=len(loader), initial=0, disable=not show_bar, dynamic_ncols=True,
               desc=f"epoch {epoch + 1}/{tcfg.epochs}", mininterval=1.0, leave=False)
    running_loss, running_items, t0 = 0.0, 0, time.perf_counter()
    micro = 0
    optimizer.zero_grad(set_to_none=True)
    for batch_idx, batch in enumerate(bar, start=state.batch_in_epoch):
        if batch is None:  # every item of this batch failed to load; the dataset logged why
            continue
        batch = task.to_device(batch, run.device)
        sync = (micro + 1) % accumulate == 0 or batch_idx + 1 == batches_per_epoch
        no_sync = model.no_sync() if (run.dist.enabled and not sync) else contextlib.nullcontext()
        with no_sync:
            with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                loss, n_items = task.loss(model, batch)
            if not torch.isfinite(loss):
                names = ", ".join(batch.get("name", [])[:4])
                last = run.manager.last if run.manager else "not written"
                raise TrainingError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, optimizer step {state.step}, batch {batch_idx} "
                    f"(images {names}, ...); the last good checkpoint is {last}"
                    "; lower train.lr, enable train.grad_clip, or check this batch's data")
            run.scaler.scale(loss / accumulate).backward()
        micro += 1
        running_loss += loss.item() * n_items
        running_items += n_items
        state.batch_in_epoch = batch_idx + 1
        if not sync:
            continue
        if tcfg.grad_clip > 0:
            run.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        run.scaler.step(optimizer)
        run.scaler.update()
        run.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        step = state.step
        if step % tcfg.log_every == 0 or step == 1 or state.batch_in_epoch == batches_per_epoch:
            stats = torch.tensor([running_loss, running_items], dtype=torch.float64, device=run.device)
            stats = D.all_reduce_sum(stats)
            mean_loss = (stats[0] / stats[1].clamp(min=1)).item()
            elapsed = time.perf_counter() - t0
            images_per_s = stats[1].item() / max(elapsed, 1e-9)
            lr = optimizer.param_groups[0]["lr"]
            if run.dist.is_main:
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
                run.jsonl.write(kind="train", epoch=epoch, step=step, loss=mean_loss, lr=lr,
                                images_per_s=images_per_s)
                if run.writer is not None:
                    run.writer.add_scalar("train/loss", mean_loss, step)
                    run.writer.add_scalar("train/lr", lr, step)
                    run.writer.add_scalar("train/images_per_s", images_per_s, step)
            running_loss, running_items, t0 = 0.0, 0, time.perf_counter()
        checkpointed = bool(tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0)
        if checkpointed:
            run.save_checkpoint()
        run.preempt_if_asked(checkpointed)
    bar.close()


@torch.no_grad()
def evaluate(model, task, loader, device: torch.device, amp_dtype) -> dict:
    model.eval()
    return task.evaluate(_unwrap(model), loader, device, amp_dtype)


def train(cfg: Config, *, resume: str | None = None, fresh: bool = False,
          command: Sequence[str] | None = None) -> dict:
    """Run one training stage as ``cfg.train.stage`` says; returns the final metrics.

    Args:
        resume: a checkpoint to continue from; ``None`` continues from ``<output.dir>/last.pth`` when it exists.
        fresh: start over even if the run folder holds checkpoints (they are kept until overwritten).
        command: the command line that started the run (``tools/train.py`` passes ``sys.argv``); recorded in
            ``<output.dir>/command.txt`` with the run's files, for its model card.

    Raises:
        Preempted: SIGTERM or SIGUSR1 arrived; the checkpoint is written (``exit_code`` is for the tool).
        TrainingError, CheckpointError, ConfigError: one line each.
    """
    from twostream.engine.tasks import build_task

    with _StopSignals() as stop:  # installed first: a signal during set-up stops the run at its first step
        tcfg = cfg.train
        device = D.resolve_device(tcfg.device)
        dist_info = D.init_distributed(device)
        try:
            return _train(cfg, resume, fresh, device, dist_info, stop, build_task, command)
        finally:
            D.cleanup()


def _train(cfg: Config, resume: str | None, fresh: bool, device: torch.device, dist_info: D.DistInfo,
           stop: _StopSignals, build_task, command: Sequence[str] | None) -> dict:
    # The trained segmenter's checkpoint decides its architecture: the resolved config is what the run records.
    cfg = resolve_segmenter_config(cfg)
    tcfg = cfg.train
    seed_everything(tcfg.seed, tcfg.deterministic)
    run_dir = Path(cfg.output.dir)
    manager = CheckpointManager(run_dir, tcfg.keep_last) if dist_info.is_main else None

    resume_path = None
    if resume:
        resume_path = Path(resume)
    elif not fresh and (run_dir / "last.pth").exists():
        resume_path = run_dir / "last.pth"
    _check_run_folder(cfg, run_dir, resuming=resume_path is not None)

    task = build_task(cfg, dist_info)
    loaders = task.build_loaders()
    model = task.build_model().to(device)
    if tcfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, tcfg)
    steps_per_epoch = math.ceil(len(loaders.train) / tcfg.accumulate) if tcfg.accumulate > 1 else len(loaders.train)
    total_steps = steps_per_epoch * tcfg.epochs
    scheduler = build_scheduler(optimizer, total_steps, tcfg)
    amp_dtype = resolve_amp(tcfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    state = LoopState()
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path)
        if ckpt.get("stage") != task.stage:
            raise TrainingError(f"{resume_path}: a {ckpt.get('stage')} checkpoint cannot resume a {task.stage} run")
        load_model_state(model, ckpt["model"], resume_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        _restore_rng(ckpt, dist_info, resume_path)
        state = LoopState(epoch=ckpt["epoch"], step=ckpt["step"], batch_in_epoch=ckpt["batch_in_epoch"],
                          best=ckpt.get("best"))
        log.info("resumed from %s: epoch %d, step %d, batch %d of the epoch", resume_path, state.epoch + 1,
                 state.step, state.batch_in_epoch)
        # An end-of-epoch checkpoint (earlier versions wrote no epoch_done) starts the next epoch; one written after
        # the last step but before the evaluation resumes with the evaluation.
        if state.batch_in_epoch >= len(loaders.train) and ckpt.get("epoch_done", True):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    if dist_info.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
            task.save_run_files(run_dir)
            if command is not None:
                record_command(run_dir, command)
        except OSError as e:
            raise write_error(Path(e.filename or run_dir), e, "the run folder") from None
        log.info("run folder %s; %d optimizer steps per epoch, %d in all", run_dir, steps_per_epoch, total_steps)

    model = D.convert_sync_batchnorm(model, tcfg.sync_bn, task.stage, dist_info, device)  # train.sync_bn
    train_model: nn.Module = model
    if dist_info.enabled:
        # A trainable segmenter's classifier only feeds an argmax in the classifier stage: it gets no gradient.
        unused = task.stage == "classifier" and cfg.model.segmenter.trainable
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=unused)
    if tcfg.compile:
        train_model = torch.compile(train_model)

    writer = None
    if dist_info.is_main and cfg.output.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=state.step or None)
    run = Run(cfg=cfg, task=task, model=train_model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
              device=device, amp_dtype=amp_dtype, dist=dist_info, manager=manager, writer=writer,
              jsonl=_JsonlLog(run_dir / "metrics.jsonl" if dist_info.is_main else None), state=state, stop=stop)

    metrics: dict = {}
    try:
        if state.epoch >= tcfg.epochs:
            log.info("%s already finished its %d epochs; nothing to do (raise train.epochs to go on, or --fresh)",
                     run_dir, tcfg.epochs)
            return metrics
        for epoch in range(state.epoch, tcfg.epochs):
            state.epoch = epoch
            if hasattr(model, "set_epoch"):  # epoch-seeded model settings (model.gnn.edges=shuffled)
                model.set_epoch(epoch)
            if state.batch_in_epoch < len(loaders.train):
                loaders.train_sampler.set_epoch(epoch)
                # Augmentation is seeded per item (SeededItems); this generator seeds the workers' own streams.
                loaders.train.generator.manual_seed(tcfg.seed + 1000 * epoch + dist_info.rank)
                loaders.train_sampler.set_start(state.batch_in_epoch * tcfg.batch_size)
                train_one_epoch(run, loaders.train, epoch)
                loaders.train_sampler.set_start(0)
            is_last = epoch + 1 == tcfg.epochs
            is_best = False
            if (epoch + 1) % cfg.eval.every_epochs == 0 or is_last:
                metrics = evaluate(train_model, task, loaders.val, device, amp_dtype)
                score = metrics.get(task.main_metric)
                if score is not None and not math.isnan(score) and (state.best is None or score > state.best):
                    state.best, is_best = score, True
                if dist_info.is_main:
                    log.info("epoch %d/%d: %s", epoch + 1, tcfg.epochs, task.summary(metrics))
                    run.jsonl.write(kind="eval", epoch=epoch, step=state.step,
                                    **{k: v for k, v in metrics.items() if isinstance(v, int | float)})
                    if writer is not None:
                        for k, v in metrics.items():
                            if isinstance(v, int | float):
                                writer.add_scalar(f"val/{k}", v, state.step)
            state.batch_in_epoch, state.epoch_done = len(loaders.train), True
            run.save_checkpoint(is_best=is_best)
            state.batch_in_epoch, state.epoch_done = 0, False
            if not is_last:
                run.preempt_if_asked(checkpointed=True)
        if dist_info.is_main:
            task.finish(run_dir, metrics)
    finally:
        if writer is not None:
            writer.close()
    return metrics


def _restore_rng(ckpt: dict, dist_info: D.DistInfo, source: Path) -> None:
    """This rank's random generators from the checkpoint (rank 0's when it was written by another number of ranks)."""
    ranks = ckpt.get("rng_ranks")
    saved_world = ckpt.get("world_size", len(ranks) if ranks else 1)
    if saved_world != dist_info.world_size and ckpt.get("batch_in_epoch", 0):
        log.warning("%s was written by %d process(es), resumed with %d: the data order inside this epoch and the "
                    "random streams differ from an uninterrupted run (resume with as many processes for an exact "
                    "continuation)", source, saved_world, dist_info.world_size)
    if ranks and len(ranks) == dist_info.world_size:
        restore_rng(ranks[dist_info.rank])
    elif ckpt.get("rng") is not None:
        restore_rng(ckpt["rng"])
