"""The training loop for both stages: segmentation (UPSNet or a trainable published segmenter) and the two-stream
scene classifier.

Read it top to bottom like torchvision's reference script: ``train_one_epoch`` -> ``evaluate`` -> ``train``.
What differs between the stages (model, loss, metrics, data) lives in a small task object
(:mod:`twostream.engine.tasks`); the loop itself is shared: AdamW, warmup + cosine/poly schedule, gradient clipping and
accumulation, AMP, optional ``torch.compile`` and channels_last, DDP through torchrun, atomic resumable checkpoints,
TensorBoard scalars, a progress bar, and ``metrics.jsonl`` (one line per logged step and per evaluation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from twostream.config import Config, ConfigError, config_from_dict, config_to_dict, save_config
from twostream.engine import distributed as D
from twostream.engine.checkpoint import (
    FORMAT,
    CheckpointManager,
    capture_rng,
    load_checkpoint,
    load_model_state,
    restore_rng,
)
from twostream.engine.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

__all__ = ["TrainingError", "resolve_amp", "seed_everything", "train"]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, an inconsistent run folder). The message is one line."""


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
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _check_run_folder(cfg: Config, run_dir: Path, resuming: bool) -> None:
    """A run folder holds one experiment: refuse to mix a different config into it."""
    saved = run_dir / "config.yaml"
    if not resuming or not saved.exists():
        return
    from twostream.config import load_config

    old = load_config(saved)
    # Extending a run (more epochs) or changing how often it logs or checkpoints is fine; anything else is another run.
    free = {"epochs", "checkpoint_every", "keep_last", "log_every"}
    old_d, new_d = config_to_dict(old), config_to_dict(cfg)
    for key in free:
        old_d["train"].pop(key), new_d["train"].pop(key)
    old_d["data"].pop("num_workers"), new_d["data"].pop("num_workers")
    if old_d != new_d:
        diff = [f"{s}.{k}" for s in new_d for k in (new_d[s] if isinstance(new_d[s], dict) else {})
                if old_d.get(s, {}).get(k) != new_d[s].get(k)]
        raise TrainingError(f"{run_dir} holds a run with another config (differs in {', '.join(diff[:5])}); "
                            "pass --fresh to start it over, or set output.dir to a new folder")


def train_one_epoch(model, task, loader, optimizer, scheduler, scaler, *, epoch: int, state: dict, cfg: Config,
                    device: torch.device, amp_dtype, dist_info: D.DistInfo, manager: CheckpointManager | None,
                    writer, jsonl: _JsonlLog, batches_per_epoch: int, checkpoint_state) -> None:
    """One pass over the (rest of the) epoch. ``state`` holds ``step`` and ``batch_in_epoch`` and is updated."""
    model.train()
    task.train_mode(_unwrap(model))
    tcfg = cfg.train
    accumulate = tcfg.accumulate
    first_batch = state["batch_in_epoch"]
    # The bar is for terminals; logs and CI get the per-epoch lines and metrics.jsonl instead.
    show_bar = dist_info.is_main and sys.stderr.isatty()
    bar = tqdm(loader, total=len(loader), initial=0, disable=not show_bar, dynamic_ncols=True,
               desc=f"epoch {epoch + 1}/{tcfg.epochs}", mininterval=1.0, leave=False)
    running_loss, running_items, t0 = 0.0, 0, time.perf_counter()
    micro = 0
    optimizer.zero_grad(set_to_none=True)
    for batch_idx, batch in enumerate(bar, start=first_batch):
        if batch is None:  # every item of this batch failed to load; the dataset logged why
            continue
        batch = task.to_device(batch, device)
        sync = (micro + 1) % accumulate == 0 or batch_idx + 1 == batches_per_epoch
        no_sync = model.no_sync() if (dist_info.enabled and not sync) else contextlib.nullcontext()
        with no_sync:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, n_items = task.loss(model, batch)
            if not torch.isfinite(loss):
                names = ", ".join(batch.get("name", [])[:4])
                raise TrainingError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, optimizer step {state['step']}, batch {batch_idx} "
                    f"(images {names}, ...); the last good checkpoint is {manager.last if manager else 'not written'}"
                    "; lower train.lr, enable train.grad_clip, or check this batch's data")
            scaler.scale(loss / accumulate).backward()
        micro += 1
        running_loss += loss.item() * n_items
        running_items += n_items
        state["batch_in_epoch"] = batch_idx + 1
        if not sync:
            continue
        if tcfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        step = state["step"]
        if step % tcfg.log_every == 0 or step == 1 or state["batch_in_epoch"] == batches_per_epoch:
            stats = torch.tensor([running_loss, running_items], dtype=torch.float64, device=device)
            stats = D.all_reduce_sum(stats)
            mean_loss = (stats[0] / stats[1].clamp(min=1)).item()
            elapsed = time.perf_counter() - t0
            images_per_s = stats[1].item() / max(elapsed, 1e-9)
            lr = optimizer.param_groups[0]["lr"]
            if dist_info.is_main:
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
                jsonl.write(kind="train", epoch=epoch, step=step, loss=mean_loss, lr=lr, images_per_s=images_per_s)
                if writer is not None:
                    writer.add_scalar("train/loss", mean_loss, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/images_per_s", images_per_s, step)
            running_loss, running_items, t0 = 0.0, 0, time.perf_counter()
        if tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0:
            if manager is not None:
                manager.save(checkpoint_state(epoch=epoch), epoch=epoch, step=step)
            D.barrier()
    bar.close()


@torch.no_grad()
def evaluate(model, task, loader, device: torch.device, amp_dtype) -> dict:
    model.eval()
    return task.evaluate(_unwrap(model), loader, device, amp_dtype)


def train(cfg: Config, *, resume: str | None = None, fresh: bool = False) -> dict:
    """Run one training stage as ``cfg.train.stage`` says; returns the final metrics.

    Args:
        resume: a checkpoint to continue from; ``None`` continues from ``<output.dir>/last.pth`` when it exists.
        fresh: start over even if the run folder holds checkpoints (they are kept until overwritten).
    """
    from twostream.engine.tasks import build_task

    tcfg = cfg.train
    device = D.resolve_device(tcfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist_info = D.init_distributed(device)
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

    state = {"epoch": 0, "step": 0, "batch_in_epoch": 0, "best": None}
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path)
        if ckpt.get("stage") != task.stage:
            raise TrainingError(f"{resume_path}: a {ckpt.get('stage')} checkpoint cannot resume a {task.stage} run")
        load_model_state(model, ckpt["model"], resume_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("rng") is not None:
            restore_rng(ckpt["rng"])
        state.update(epoch=ckpt["epoch"], step=ckpt["step"], batch_in_epoch=ckpt["batch_in_epoch"],
                     best=ckpt.get("best"))
        log.info("resumed from %s: epoch %d, step %d, batch %d of the epoch", resume_path, state["epoch"] + 1,
                 state["step"], state["batch_in_epoch"])
        if state["batch_in_epoch"] >= len(loaders.train):
            state.update(epoch=state["epoch"] + 1, batch_in_epoch=0)

    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        task.save_run_files(run_dir)
        log.info("run folder %s; %d optimizer steps per epoch, %d in all", run_dir, steps_per_epoch, total_steps)

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

        writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=state["step"] or None)
    jsonl = _JsonlLog(run_dir / "metrics.jsonl" if dist_info.is_main else None)

    def checkpoint_state(epoch: int) -> dict:
        return {
            "format": FORMAT,
            "stage": task.stage,
            "model": _unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step": state["step"],
            "batch_in_epoch": state["batch_in_epoch"],
            "best": state["best"],
            "config": config_to_dict(cfg),
            **task.checkpoint_extras(),
            "rng": capture_rng(),
        }

    metrics: dict = {}
    if state["epoch"] >= tcfg.epochs:
        log.info("%s already finished its %d epochs; nothing to do (raise train.epochs to go on, or --fresh)",
                 run_dir, tcfg.epochs)
        if writer is not None:
            writer.close()
        D.cleanup()
        return metrics
    try:
        for epoch in range(state["epoch"], tcfg.epochs):
            loaders.train_sampler.set_epoch(epoch)
            # Worker seeds depend on the epoch only, so a resumed epoch augments as the interrupted one did.
            loaders.train.generator.manual_seed(tcfg.seed + 1000 * epoch + dist_info.rank)
            loaders.train_sampler.set_start(state["batch_in_epoch"] * tcfg.batch_size)
            if hasattr(model, "set_epoch"):  # epoch-seeded model settings (model.gnn.edges=shuffled)
                model.set_epoch(epoch)
            train_one_epoch(train_model, task, loaders.train, optimizer, scheduler, scaler, epoch=epoch, state=state,
                            cfg=cfg, device=device, amp_dtype=amp_dtype, dist_info=dist_info, manager=manager,
                            writer=writer, jsonl=jsonl, batches_per_epoch=len(loaders.train),
                            checkpoint_state=checkpoint_state)
            loaders.train_sampler.set_start(0)
            is_last = epoch + 1 == tcfg.epochs
            is_best = False
            if (epoch + 1) % cfg.eval.every_epochs == 0 or is_last:
                metrics = evaluate(train_model, task, loaders.val, device, amp_dtype)
                score = metrics.get(task.main_metric)
                if score is not None and not math.isnan(score) and (state["best"] is None or score > state["best"]):
                    state["best"], is_best = score, True
                if dist_info.is_main:
                    log.info("epoch %d/%d: %s", epoch + 1, tcfg.epochs, task.summary(metrics))
                    jsonl.write(kind="eval", epoch=epoch, step=state["step"],
                                **{k: v for k, v in metrics.items() if isinstance(v, int | float)})
                    if writer is not None:
                        for k, v in metrics.items():
                            if isinstance(v, int | float):
                                writer.add_scalar(f"val/{k}", v, state["step"])
            state["batch_in_epoch"] = len(loaders.train)
            if manager is not None:
                manager.save(checkpoint_state(epoch=epoch), epoch=epoch, step=state["step"], is_best=is_best)
            state["batch_in_epoch"] = 0
            D.barrier()
        if dist_info.is_main:
            task.finish(run_dir, metrics)
    finally:
        if writer is not None:
            writer.close()
        D.cleanup()
    return metrics


def config_from_checkpoint(ckpt: dict, source: str) -> Config:
    """The config a checkpoint was trained with (validated against today's schema)."""
    try:
        return config_from_dict(ckpt["config"], source=f"{source} (config)")
    except ConfigError as e:
        raise ConfigError(f"{e}; the checkpoint was written by another version of twostream") from None
