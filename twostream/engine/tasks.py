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

from twostream.atomic import atomic_write_text
from twostream.config import Config
from twostream.data.classes import ClassTable, dataset_class_table
from twostream.engine.data import Loaders, WithGraphs, make_loaders
from twostream.engine.distributed import DistInfo
from twostream.engine.evaluators.base import to_device as _to_device

log = logging.getLogger(__name__)

__all__ = ["ClassificationTask", "SegmentationTask", "build_task", "items_config"]


class _Task:
    stage: str
    main_metric: str

    def __init__(self, cfg: Config, dist_info: DistInfo) -> None:
        self.cfg, self.dist = cfg, dist_info
        self.class_table: ClassTable = dataset_class_table(cfg.data)  # a dataset's own class_table.csv, or ADE20K-150

    def to_device(self, batch: dict, device: torch.device) -> dict:
        return _to_device(batch, device)

    def _loaders(self, train_set, val_set) -> Loaders:
        c = self.cfg
        return make_loaders(train_set, val_set, batch_size=c.train.batch_size, eval_batch_size=c.eval.batch_size,
                            num_workers=c.data.num_workers, rank=self.dist.rank, world_size=self.dist.world_size,
                            seed=c.train.seed)

    def checkpoint_extras(self) -> dict:
        return {"class_table": self.class_table.to_dict()}

    def save_run_files(self, run_dir: Path) -> None:
        atomic_write_text(run_dir / "class_table.json", json.dumps(self.class_table.to_dict()))

    def finish(self, run_dir: Path, metrics: dict) -> None:
        from twostream.engine.evaluators import write_metrics_json

        write_metrics_json(metrics, run_dir / "final_metrics.json")


class ClassificationTask(_Task):
    """Stage 3: the two-stream scene classifier. Loss: cross-entropy over the scene vocabulary."""

    stage = "classifier"
    main_metric = "top1"

    def build_loaders(self) -> Loaders:
        from twostream.data.ade20k import build_datasets
        from twostream.engine.graph_caches import graphs_only_datasets

        cfg = self.cfg
        stored = graphs_only_datasets(cfg)  # a graph-only model of stored graphs reads no image
        if stored is not None:
            train_set, val_set, self.vocabulary, self.class_table = stored
            loaders = self._loaders(train_set, val_set)
            self.train_loader = loaders.train  # the graph stream's mean too (finish())
            return loaders
        train_set, val_set, self.vocabulary = build_datasets(items_config(cfg, segmenter_runs=cfg.graph.source ==
                                                                          "online" or cfg.model.shared_backbone))
        if cfg.graph.source == "gt":  # graphs from the annotations: the dataset's label set (full ADE20K: 3,688)
            self.class_table = getattr(train_set, "class_table", self.class_table)
        if cfg.model.gnn.enabled and cfg.graph.source != "online":
            train_set, val_set = (self._attach_graphs(train_set, cfg.data.train_split),
                                  self._attach_graphs(val_set, cfg.data.val_split))
        loaders = self._loaders(train_set, val_set)
        self.train_loader = loaders.train  # for the stream means in finish()
        return loaders

    def _attach_graphs(self, dataset, split: str) -> WithGraphs:
        from twostream.graph.builder import SceneGraphBuilder

        cfg = self.cfg
        builder = SceneGraphBuilder.from_config(cfg.graph, self.class_table)
        if cfg.graph.source == "gt":
            return WithGraphs(dataset, builder=builder)
        from twostream.engine.graph_caches import open_store

        # settings: a store built with another granularity/connectivity/... is refused, not silently used
        return WithGraphs(dataset, cache=open_store(cfg, split, settings=builder.settings()))

    def build_model(self) -> nn.Module:
        """The classifier; a trained UPSNet (``model.segmenter.checkpoint``) is built from its checkpoint's own config
        (:func:`~twostream.engine.checkpoint.load_segmenter`) and handed to ``build_model``, which builds no second
        one. The trainer has already checked that the config's architecture keys agree with the checkpoint."""
        from twostream.config import segmenter_needed
        from twostream.engine.checkpoint import load_segmenter
        from twostream.models.segmenter import segmenter_class
        from twostream.models.two_stream import build_model

        cfg = self.cfg
        seg = cfg.model.segmenter
        trained = None
        if segmenter_needed(cfg) and seg.kind != "none" and segmenter_class(seg.kind).weights_from_checkpoint:
            if seg.checkpoint:
                trained = load_segmenter(seg.checkpoint)
                self.class_table = trained.class_table
                log.info("segmenter: %s %s from %s", seg.kind, seg.backbone, seg.checkpoint)
            elif not seg.trainable:
                log.warning("model.segmenter.checkpoint is empty: the classifier's frozen segmenter keeps random "
                            "weights, so its graphs at inference mean nothing; train one with configs/seg/*.yaml and "
                            "name it")
        model = build_model(cfg, num_scenes=len(self.vocabulary), class_table=self.class_table, segmenter=trained)
        if getattr(model, "segmenter", None) is not None:
            self.class_table = model.segmenter.class_table
        self.model = model  # the unwrapped model, for the stream means in finish()
        return model

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, int]:
        out = model(batch.get("image"), batch.get("graph"))  # graphs-only batches carry no image
        loss = F.cross_entropy(out["logits"].float(), batch["scene"], label_smoothing=self.cfg.train.label_smoothing)
        return loss, int(batch["scene"].shape[0])

    def evaluate(self, model: nn.Module, loader, device: torch.device, amp_dtype) -> dict:
        from twostream.engine.evaluators import SceneEvaluator, inference_on_dataset, run_classifier

        scenes = SceneEvaluator(self.vocabulary.names, topk=self.cfg.eval.topk, device=device)
        return inference_on_dataset(model, loader, scenes, forward=run_classifier, device=device, amp_dtype=amp_dtype)

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
            from twostream.engine.evaluators import format_per_class_table

            log.info("per-class accuracy on %s:\n%s", self.cfg.data.val_split, format_per_class_table(metrics))
        # each stream's training-set mean embedding, the baseline of explanations' stream contributions
        from twostream.explain.streams import record_stream_means

        record_stream_means(run_dir, self.model, getattr(self, "train_loader", None),
                            max_images=self.cfg.train.stream_means_images)


class SegmentationTask(_Task):
    """Stage 1: the segmenter alone. Loss: what the segmenter returns for its targets (CE with ignore 255, ...)."""

    stage = "segmentation"
    main_metric = "miou"

    def build_loaders(self) -> Loaders:
        from twostream.data.ade20k import build_datasets

        # Every image with an annotation teaches segmentation; seg configs use data.scenes.mode=all.
        train_set, val_set, self.vocabulary = build_datasets(self.cfg)
        self.class_table = getattr(train_set, "class_table", self.class_table)  # the annotations' label set
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
        from twostream.engine.evaluators import evaluate_segmenter

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


def items_config(cfg: Config, segmenter_runs: bool) -> Config:
    """``cfg`` with ``data.image_size`` set to the size a classifier's items are read at
    (:func:`~twostream.models.two_stream.classifier_input_size`): the segmenter's input size when it runs inside the
    model on them and is larger (the model shrinks a copy for the image encoder), else ``data.image_size``."""
    import dataclasses

    from twostream.models.two_stream import classifier_input_size

    size = classifier_input_size(cfg, segmenter_runs)
    if size == tuple(cfg.data.image_size):
        return cfg
    log.info("items are read at %dx%d, the segmenter's input size; the image encoder sees them at %dx%d",
             *size, *cfg.data.image_size)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=size))


def build_task(cfg: Config, dist_info: DistInfo) -> _Task:
    return TASKS[cfg.train.stage](cfg, dist_info)
