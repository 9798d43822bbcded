"""Evaluate a trained checkpoint on a dataset split: what ``tools/eval.py`` runs.

One pass over the split scores everything the checkpoint can be scored on:

- a **classifier**: scene top-1 / top-k / mean per-class accuracy, the per-class table and the confusion matrix; and,
  when its graphs come from its own segmenter, the segmenter's mIoU / pixel accuracy and the scene-graph quality
  (node and edge precision / recall / F1 against the graphs of the annotations);
- a **segmenter** (segmentation-stage checkpoint): mIoU / pixel accuracy and the scene-graph quality.

Results are written to ``<out>/metrics.json`` (and ``confusion_matrix.png``, ``per_class.md`` for a classifier).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from twostream.config import Config, config_from_dict
from twostream.data.classes import ClassTable, dataset_class_table
from twostream.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state
from twostream.engine.data import WithGraphs, collate
from twostream.engine.distributed import resolve_device

log = logging.getLogger(__name__)

__all__ = ["GRAPH_SOURCES", "evaluate_checkpoint"]

# Where the classifier's graphs come from during evaluation.
GRAPH_SOURCES = ("auto", "online", "gt")


def _dataset(cfg: Config, split: str, vocabulary, instances: bool = False):
    """The split with validation transforms; annotations are ADE20K-150 whatever the model predicts."""
    from twostream.data.ade20k import ADE20KDataset
    from twostream.data.transforms import build_transforms

    return ADE20KDataset(cfg.data.root, split, vocabulary, transform=build_transforms(cfg.data, train=False),
                         skip_bad=cfg.data.skip_bad, max_items=cfg.data.max_items, instances=instances,
                         class_table=dataset_class_table(cfg.data))


def _scores_segmentation(class_table: ClassTable, cfg: Config) -> bool:
    """Segmentation and graph quality are defined when the segmenter predicts the annotations' label set (ADE20K-150,
    or the dataset's own class_table.csv)."""
    annotations = dataset_class_table(cfg.data)
    if tuple(class_table.names) == tuple(annotations.names):
        return True
    log.warning("the segmenter predicts '%s' labels, the annotations are '%s': mIoU and graph quality are "
                "not scored", class_table.name, annotations.name)
    return False


def _loader(dataset, cfg: Config, batch_size: int | None):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size or cfg.eval.batch_size, shuffle=False,
                                       num_workers=cfg.data.num_workers, collate_fn=collate)


def _graph_scores(builder, graphs, targets, metrics) -> None:
    """Add the match of each predicted graph against the graph of its annotation to ``metrics``."""
    from twostream.graph.metrics import compare_label_maps

    for pred_map, target in zip(graphs, targets):
        metrics.update(compare_label_maps(pred_map, target, builder))  # padding (255) belongs to no node


def evaluate_checkpoint(checkpoint: str | Path, *, cfg: Config | None = None, split: str | None = None,
                        graphs: str = "auto", out_dir: str | Path | None = None, device: str = "auto",
                        batch_size: int | None = None) -> dict:
    """Score ``checkpoint`` (a file or a run folder) on ``split`` and write the results to ``out_dir``.

    Args:
        cfg: data settings to evaluate with (root, image size, ...); default: the checkpoint's own config. The model
            is always built from the checkpoint's config, so another architecture cannot slip in.
        split: dataset split; default ``cfg.data.val_split``.
        graphs: classifier only: ``online`` (from its segmenter, as at inference), ``gt`` (from the annotations:
            the oracle upper bound), ``auto`` (online when the model has a segmenter, else gt).
        out_dir: where ``metrics.json`` and friends go; default ``<run folder>/eval-<split>``.
    """
    from twostream.inference import resolve_checkpoint

    if graphs not in GRAPH_SOURCES:
        raise ValueError(f"graphs '{graphs}' is not one of {', '.join(GRAPH_SOURCES)}")
    path = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    model_cfg = config_from_dict(ckpt["config"], source=f"{path} (config)")
    cfg = cfg or model_cfg
    split = split or cfg.data.val_split
    out = Path(out_dir) if out_dir else path.parent / f"eval-{split}"
    class_table = ClassTable.from_dict(ckpt["class_table"])
    dev = resolve_device(device)
    if ckpt.get("stage") == "segmentation":
        metrics = _evaluate_segmenter(path, cfg, model_cfg, split, class_table, dev, batch_size)
    elif ckpt.get("stage") == "classifier":
        metrics = _evaluate_classifier(ckpt, path, cfg, model_cfg, split, class_table, graphs, dev, batch_size, out)
    else:
        raise CheckpointError(f"{path}: unknown stage {ckpt.get('stage')!r}")
    metrics.update(checkpoint=str(path), split=split, step=int(ckpt.get("step", 0)))
    from twostream.engine.evaluation import write_metrics_json

    write_metrics_json(metrics, out / "metrics.json")
    log.info("wrote %s", out / "metrics.json")
    return metrics


def _evaluate_segmenter(path: Path, cfg: Config, model_cfg: Config, split: str, class_table: ClassTable,
                        device: torch.device, batch_size: int | None) -> dict:
    from twostream.engine.checkpoint import load_segmenter
    from twostream.engine.pq_eval import PanopticMetrics
    from twostream.engine.seg_eval import SegMetrics
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.graph.metrics import GraphMetrics

    segmenter = load_segmenter(path, device)
    if not _scores_segmentation(class_table, cfg):
        raise ValueError(f"{path}: a segmenter of '{class_table.name}' labels cannot be scored on the annotations of "
                         f"{cfg.data.root} ('{dataset_class_table(cfg.data).name}' labels)")
    seg, graph = SegMetrics(class_table, device=device), GraphMetrics()
    # PQ when the checkpoint has the panoptic head and the data its instance annotations (data.instances)
    panoptic = PanopticMetrics(class_table, device=device) if cfg.data.instances else None
    builder = SceneGraphBuilder.from_config(model_cfg.graph, class_table)
    loader = _loader(_dataset(cfg, split, None, instances=panoptic is not None), cfg, batch_size)
    with torch.no_grad():
        for batch in loader:
            if batch is None:
                continue
            out = segmenter(batch["image"].to(device))
            pred = out["sem_logits"].argmax(dim=1)
            seg.update(pred, batch["sem_seg"])
            _graph_scores(builder, pred.cpu(), batch["sem_seg"], graph)
            if panoptic is not None and "panoptic" in out:
                panoptic.update(out["panoptic"], batch["sem_seg"], batch["instances"])
    metrics = {"stage": "segmentation", "segmentation": seg.compute(), "graph_quality": graph.compute()}
    s, g = metrics["segmentation"], metrics["graph_quality"]["micro"]
    log.info("%s: mIoU %.1f%%, pixel accuracy %.1f%% on %d images; graph node F1 %.3f, edge F1 %.3f", split,
             100 * s["miou"], 100 * s["pixel_accuracy"], s["num_images"], g["node_f1"], g["edge_f1"])
    p = panoptic.compute() if panoptic is not None else None
    if p is not None and p["num_images"]:
        s["panoptic"] = p
        log.info("%s: PQ %.1f (things %.1f, stuff %.1f), SQ %.1f, RQ %.1f", split, 100 * p["pq"],
                 100 * p["pq_things"], 100 * p["pq_stuff"], 100 * p["sq"], 100 * p["rq"])
    return metrics


def _evaluate_classifier(ckpt: dict, path: Path, cfg: Config, model_cfg: Config, split: str,
                         class_table: ClassTable, graphs: str, device: torch.device, batch_size: int | None,
                         out: Path) -> dict:
    from twostream.data.vocabulary import SceneVocabulary
    from twostream.engine.evaluation import (
        SceneMetrics,
        format_per_class_table,
        save_confusion_png,
    )
    from twostream.engine.seg_eval import SegMetrics
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.graph.metrics import GraphMetrics
    from twostream.inference import _inference_config
    from twostream.models.two_stream import build_model

    vocabulary = SceneVocabulary.from_names(ckpt["vocabulary"])
    m = model_cfg.model
    has_segmenter = m.gnn.enabled and m.segmenter.kind != "none"
    if not m.gnn.enabled:
        graphs = "none"  # an image-only model reads no graphs
    elif graphs == "auto":
        graphs = "online" if has_segmenter else "gt"
    if graphs == "online" and not has_segmenter:
        raise ValueError(f"{path}: this model has no segmenter (model.segmenter.kind={m.segmenter.kind}, "
                         f"gnn enabled={m.gnn.enabled}); evaluate with --graphs gt")
    build_cfg = _inference_config(model_cfg)
    if graphs == "gt" and m.gnn.enabled:
        build_cfg = dataclasses.replace(build_cfg, graph=dataclasses.replace(build_cfg.graph, source="gt"))
    model = build_model(build_cfg, num_scenes=len(vocabulary), class_table=class_table)
    load_model_state(model, ckpt["model"], path)
    model.to(device).eval()

    builder = SceneGraphBuilder.from_config(model_cfg.graph, class_table)
    dataset = _dataset(cfg, split, vocabulary)
    if graphs == "gt" and m.gnn.enabled:
        dataset = WithGraphs(dataset, builder=builder)
    scenes = SceneMetrics(vocabulary.names, topk=cfg.eval.topk, device=device)
    scored = graphs == "online" and _scores_segmentation(class_table, cfg)
    seg = SegMetrics(class_table, device=device) if scored else None
    graph_quality = GraphMetrics() if scored else None
    with torch.no_grad():
        for batch in _loader(dataset, cfg, batch_size):
            if batch is None:
                continue
            given = batch["graph"].to(device) if "graph" in batch else None
            result = model(batch["image"].to(device), given)
            scenes.update(result["logits"].float(), batch["scene"].to(device))
            if seg is not None and "sem_logits" in result:
                pred = result["sem_logits"].argmax(dim=1)
                seg.update(pred, batch["sem_seg"])
                _graph_scores(builder, pred.cpu(), batch["sem_seg"], graph_quality)
    metrics = {"stage": "classifier", "graphs": graphs, **scenes.compute()}
    if seg is not None:
        metrics["segmentation"] = seg.compute()
        metrics["graph_quality"] = graph_quality.compute()
    out.mkdir(parents=True, exist_ok=True)
    table = format_per_class_table(metrics)
    (out / "per_class.md").write_text(table + "\n")
    save_confusion_png(metrics, out / "confusion_matrix.png")
    k = cfg.eval.topk
    topk = metrics.get(f"top{min(k, len(vocabulary))}")
    log.info("%s (graphs: %s): top-1 %.1f%%, top-%d %.1f%%, mean class accuracy %.1f%% on %d images\n%s", split,
             graphs, 100 * metrics["top1"], min(k, len(vocabulary)), 100 * topk, 100 * metrics["mean_class_accuracy"],
             metrics["num_images"], table)
    if seg is not None:
        s, g = metrics["segmentation"], metrics["graph_quality"]["micro"]
        log.info("segmenter: mIoU %.1f%%, pixel accuracy %.1f%%; scene graphs vs annotations: node F1 %.3f, "
                 "edge F1 %.3f", 100 * s["miou"], 100 * s["pixel_accuracy"], g["node_f1"], g["edge_f1"])
    return metrics
