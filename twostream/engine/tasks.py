"""What differs between the two training stages: data, model, loss, metrics and the files a run keeps.

A task is a small object the shared loop in :mod:`twostream.engine.trainer` calls; it never owns the loop.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twostream.config import Config
from twostream.data.classes import ClassTable, dataset_class_table
from twostream.engine.data import Loaders, WithGraphs, make_loaders
from twostream.engine.distributed import DistInfo

log = logging.getLogger(__name__)

__all__ = ["ClassificationTask", "SegmentationTask", "build_task"]


def _move(value, device: torch.device):
    """Tensors (and PyG batches) to ``device``, inside lists and dicts too (per-image instance targets)."""
    if isinstance(value, list | tuple):
        return type(value)(_move(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value.to(device, non_blocking=True) if hasattr(value, "to") and not isinstance(value, str) else value


def _to_device(batch: dict, device: torch.device) -> dict:
    return {key: _move(value, device) for key, value in batch.items()}


class _Task:
    stage: str
    main_metric: str

    def __init__(self, cfg: Config, dist_info: DistInfo) -> None:
        self.cfg, self.dist = cfg, dist_info
        self.class_table: ClassTable = dataset_class_table(cfg.data)  # a dataset's own class_table.csv, or ADE20K-150

    def to_device(self, batch: dict, device: torch.device) -> dict:
        return _to_device(batch, device)

    def train_mode(self, model: nn.Module) -> None:
        """Hook run after ``model.train()`` each epoch (e.g. keep a frozen segmenter in eval mode)."""

    def _loaders(self, train_set, val_set) -> Loaders:
        c = self.cfg
        return make_loaders(train_set, val_set, batch_size=c.train.batch_size, eval_batch_size=c.eval.batch_size,
                            num_workers=c.data.num_workers, rank=self.dist.rank, world_size=self.dist.world_size,
                            seed=c.train.seed)

    def checkpoint_extras(self) -> dict:
        return {"class_table": self.class_table.to_dict()}

    def save_run_files(self, run_dir: Path) -> None:
        (run_dir / "class_table.json").write_text(json.dumps(self.class_table.to_dict()))

    def finish(self, run_dir: Path, metrics: dict) -> None:
        from twostream.engine.evaluation import write_metrics_json

        write_metrics_json(metrics, run_dir / "final_metrics.json")


class ClassificationTask(_Task):
    """Stage 3: the two-stream scene classifier. Loss: cross-entropy over the scene vocabulary."""

    stage = "classifier"
    main_metric = "top1"

    def build_loaders(self) -> Loaders:
        from twostream.data.ade20k import build_datasets

        cfg = self.cfg
        train_set, val_set, self.vocabulary = build_datasets(cfg)
        if cfg.model.gnn.enabled and cfg.graph.source != "online":
            train_set, val_set = (self._attach_graphs(train_set, cfg.data.train_split),
                                  self._attach_graphs(val_set, cfg.data.val_split))
        return self._loaders(train_set, val_set)

    def _attach_graphs(self, dataset, split: str) -> WithGraphs:
        from twostream.graph.builder import SceneGraphBuilder

        cfg = self.cfg
        builder = SceneGraphBuilder.from_config(cfg.graph, self.class_table)
        if cfg.graph.source == "gt":
            return WithGraphs(dataset, builder=builder)
        from twostream.graph.cache import GraphCache, default_cache_dir

        cache_dir = cfg.graph.cache_dir or default_cache_dir(cfg, split)
        # settings: a cache built with another granularity/connectivity/... is refused, not silently used
        return WithGraphs(dataset, cache=GraphCache(cache_dir, settings=builder.settings()))

    def build_model(self) -> nn.Module:
        from twostream.engine.checkpoint import load_segmenter
        from twostream.models.two_stream import build_model

        cfg = self.cfg
        seg_ckpt = cfg.model.segmenter.checkpoint
        if seg_ckpt and cfg.model.segmenter.kind == "upsnet":
            trained = load_segmenter(seg_ckpt)
            self.class_table = trained.class_table
        model = build_model(cfg, num_scenes=len(self.vocabulary), class_table=self.class_table)
        if seg_ckpt and cfg.model.segmenter.kind == "upsnet" and getattr(model, "segmenter", None) is not None:
            model.segmenter.load_state_dict(trained.state_dict())
            log.info("segmenter weights from %s", seg_ckpt)
        if getattr(model, "segmenter", None) is not None:
            self.class_table = model.segmenter.class_table
        return model

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, int]:
        out = model(batch["image"], batch.get("graph"))
        loss = F.cross_entropy(out["logits"].float(), batch["scene"], label_smoothing=self.cfg.train.label_smoothing)
        return loss, int(batch["scene"].shape[0])

    def evaluate(self, model: nn.Module, loader, device: torch.device, amp_dtype) -> dict:
        from twostream.engine.evaluation import SceneMetrics

        metrics = SceneMetrics(self.vocabulary.names, topk=self.cfg.eval.topk, device=device)
        for batch in loader:
            if batch is None:
                continue
            batch = self.to_device(batch, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(batch["image"], batch.get("graph"))["logits"]
            metrics.update(logits.float(), batch["scene"])
        return metrics.compute()

    def summary(self, m: dict) -> str:
        k = self.cfg.eval.topk
        topk = next((v for key, v in m.items() if key.startswith("top") and key != "top1"), float("nan"))
        return (f"top-1 {100 * m['top1']:.1f}%, top-{k} {100 * topk:.1f}%, "
                f"mean class acc {100 * m['mean_class_accuracy']:.1f}% on {m['num_images']} images")

    def checkpoint_extras(self) -> dict:
        return {**super().checkpoint_extras(), "vocabulary": list(self.vocabulary.names)}

    def save_run_files(self, run_dir: Path) -> None:
        super().save_run_files(run_dir)
        self.vocabulary.save(run_dir / "vocabulary.json")

    def finish(self, run_dir: Path, metrics: dict) -> None:
        super().finish(run_dir, metrics)
        if metrics:
            from twostream.engine.evaluation import format_per_class_table

            log.info("per-class accuracy on %s:\n%s", self.cfg.data.val_split, format_per_class_table(metrics))


class SegmentationTask(_Task):
    """Stage 1: the segmenter alone. Loss: what the segmenter returns for its targets (CE with ignore 255, ...)."""

    stage = "segmentation"
    main_metric = "miou"

    def build_loaders(self) -> Loaders:
        from twostream.data.ade20k import build_datasets

        # Every image with an annotation teaches segmentation; seg configs use data.scenes.mode=all.
        train_set, val_set, self.vocabulary = build_datasets(self.cfg)
        return self._loaders(train_set, val_set)

    def build_model(self) -> nn.Module:
        from twostream.models.segmenter import build_segmenter

        model = build_segmenter(self.cfg.model.segmenter, self.class_table)
        self.class_table = model.class_table
        return model

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, int]:
        targets = {"sem_seg": batch["sem_seg"]}
        if "instances" in batch:  # data.instances: per-image boxes, labels, masks for an instance head
            targets["instances"] = batch["instances"]
        out = model(batch["image"], targets)
        losses = out["losses"]
        return sum(losses.values()), int(batch["image"].shape[0])

    def evaluate(self, model: nn.Module, loader, device: torch.device, amp_dtype) -> dict:
        from twostream.engine.seg_eval import evaluate_segmenter

        metrics = evaluate_segmenter(model, loader, self.class_table, device=device, amp_dtype=amp_dtype)
        # PQ's scalars at the top level, where metrics.jsonl and TensorBoard take numbers from
        metrics.update({k: v for k, v in metrics.get("panoptic", {}).items() if isinstance(v, float)})
        return metrics

    def summary(self, m: dict) -> str:
        text = f"mIoU {100 * m['miou']:.1f}%, pixel accuracy {100 * m['pixel_accuracy']:.1f}%"
        if "pq" in m:
            text += f", PQ {100 * m['pq']:.1f} (things {100 * m['pq_things']:.1f}, stuff {100 * m['pq_stuff']:.1f})"
        return text


TASKS = {"classifier": ClassificationTask, "segmentation": SegmentationTask}


def build_task(cfg: Config, dist_info: DistInfo) -> _Task:
    return TASKS[cfg.train.stage](cfg, dist_info)
