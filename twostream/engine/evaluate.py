"""Evaluate a trained checkpoint on a dataset split: what ``tools/eval.py`` runs.

One pass over the split scores everything the checkpoint can be scored on:

- a **classifier**: scene top-1 / top-k / mean per-class accuracy, the per-class table and the confusion matrix; and,
  when its graphs come from its own segmenter, the segmenter's mIoU / pixel accuracy and the scene-graph quality
  (node and edge precision / recall / F1 against the graphs of the annotations);
- a **segmenter** (segmentation-stage checkpoint): mIoU / pixel accuracy and the scene-graph quality.

The segmenter segments at its own input size (``model.segmenter.input_size``, by default the size it was trained at;
``metrics["segmenter_input"]``), and both scores are taken against each image's annotation at its original size, as
mmsegmentation scores: logits upsampled to it for mIoU, the graph built at the segmenter's size matched against the
graph of the original annotation (:mod:`twostream.engine.evaluators.semseg`, docs/resolution.md).

A classifier is also scored on named subsets of the split (``subsets``: every list of the dataset's
``synthetic.json`` and any ``--subset NAME=FILE``). Each metric is an evaluator of :mod:`twostream.engine.evaluators`
fed by its one loop, :func:`~twostream.engine.evaluators.inference_on_dataset`; what the loop reads is
:func:`_split_loader`. Results are written to ``<out>/metrics.json`` (and ``confusion_matrix.png``, ``per_class.md``
for a classifier).
With ``explain``, a classifier's every image is also explained (:class:`twostream.explain.ExplanationEvaluator`):
``<out>/explanations.jsonl`` and ``metrics["explanation"]`` (hit rate on relation-only images, randomisation test,
deletion fidelity).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from twostream.config import Config, config_from_dict
from twostream.data.classes import ClassTable, dataset_class_table
from twostream.engine.checkpoint import CheckpointError, inference_config, load_model_state, load_trained
from twostream.engine.data import WithGraphs, collate
from twostream.engine.distributed import resolve_device
from twostream.engine.evaluators import (
    Evaluator,
    PanopticEvaluator,
    SceneEvaluator,
    SceneGraphEvaluator,
    SemSegEvaluator,
    SubsetEvaluator,
    format_per_class_table,
    format_subset_table,
    inference_on_dataset,
    read_subsets,
    run_classifier,
    run_segmenter,
    save_confusion_png,
    write_metrics_json,
)
from twostream.engine.graph_caches import graphs_only, store_available, store_items

log = logging.getLogger(__name__)

__all__ = ["GRAPH_SOURCES", "evaluate_checkpoint"]

# Where the classifier's graphs come from during evaluation (store: the graph store, no image read).
GRAPH_SOURCES = ("auto", "online", "gt", "store")


def _dataset(cfg: Config, split: str, vocabulary, instances: bool = False):
    """The split with validation transforms, read by the reader ``data.format`` names (as training reads it);
    annotations in the dataset's label set (ADE20K-150, or its own ``class_table.csv``) whatever the model predicts."""
    from twostream.data.ade20k import open_dataset
    from twostream.data.transforms import build_transforms

    if instances != cfg.data.instances:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, instances=instances))
    return open_dataset(cfg, split, vocabulary, build_transforms(cfg.data, train=False))


def _at_size(cfg: Config, size: tuple[int, int]) -> Config:
    """``cfg`` whose items are read at ``size`` (the model's input size) instead of ``data.image_size``."""
    if tuple(size) == tuple(cfg.data.image_size):
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=tuple(size)))


def _split_loader(cfg: Config, split: str, *, vocabulary=None, gt_graphs=None, instances: bool = False,
                  batch_size: int | None = None, store_cfg: Config | None = None, originals: bool = False):
    """What the evaluation reads, in order: the split's items (with ``gt_graphs``, a ``SceneGraphBuilder``, each item
    also carries the graph of its annotation; with ``instances``, its instance masks; with ``originals``, its
    annotation at the image's own size), batched. With ``store_cfg`` (a graph-only model, ``--graphs store``) the
    items are the split's graph store's graphs and scenes: no image or annotation is opened."""
    if store_cfg is not None:
        dataset = store_items(store_cfg, split, vocabulary, max_items=cfg.data.max_items)
    else:
        dataset = _dataset(cfg, split, vocabulary, instances=instances)
        # the annotation at the image's own size, which segmentation and graph quality are scored against
        # (evaluators/semseg.py): the reader keeps the label map it decoded before the transform resized it
        dataset.keep_original_labels = originals
    if gt_graphs is not None:
        dataset = WithGraphs(dataset, builder=gt_graphs)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size or cfg.eval.batch_size, shuffle=False,
                                       num_workers=cfg.data.num_workers, collate_fn=collate)


def _split_stems(cfg: Config, split: str, store_cfg: Config | None = None) -> list[str]:
    """Every item name of the split (before the vocabulary or ``max_items`` leave some out): what subset files are
    checked against. It opens what :func:`_split_loader` opens, with the reader ``data.format`` names (the graph
    store's names with ``store_cfg``), so the two change together."""
    if store_cfg is not None:
        from twostream.engine.graph_caches import open_store

        return list(open_store(store_cfg, split).names)
    from twostream.data.ade20k import open_dataset

    every = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_items=0, instances=False))
    return list(open_dataset(every, split, None).names)


def _store_config(model_cfg: Config, cfg: Config) -> Config:
    """Where a graph-only model's graphs of ``cfg``'s data are stored: the model's graph settings and segmenter,
    ``cfg``'s data (and its ``graph.cache_dir`` when set)."""
    graph = dataclasses.replace(model_cfg.graph, cache_dir=cfg.graph.cache_dir or model_cfg.graph.cache_dir)
    return dataclasses.replace(model_cfg, data=cfg.data, graph=graph)


def annotation_table(data) -> ClassTable | None:
    """The label set of ``data``'s annotations (a :class:`~twostream.config.DataConfig`): the ADEChallengeData2016
    layout's (ADE20K-150, or the dataset's own ``class_table.csv``), full ADE20K's (``data.full.labels``: ADE20K-150
    or its own table of every class), or ``None`` for Places365 and folder data, which have no annotations."""
    if data.format == "ade20k":
        return dataset_class_table(data)
    if data.format == "ade20k_full":
        if data.full.labels == "ade150":
            from twostream.data.classes import ade20k150

            return ade20k150()
        from twostream.data.ade20k_full import full_class_table, read_index

        return full_class_table(read_index(data.root)["classes"])
    return None


def _scores_segmentation(class_table: ClassTable, cfg: Config) -> bool:
    """Segmentation and graph quality are defined when the segmenter predicts the annotations' label set
    (:func:`annotation_table`); Places365 and folder data have no annotations (their scenes are scored)."""
    annotations = annotation_table(cfg.data)
    if annotations is None:
        log.info("data.format %s has no annotations: mIoU and graph quality are not scored", cfg.data.format)
        return False
    if tuple(class_table.names) == tuple(annotations.names):
        return True
    log.warning("the segmenter predicts '%s' labels, the annotations are '%s': mIoU and graph quality are "
                "not scored", class_table.name, annotations.name)
    return False


def evaluate_checkpoint(checkpoint: str | Path, *, cfg: Config | None = None, split: str | None = None,
                        graphs: str = "auto", out_dir: str | Path | None = None, device: str = "auto",
                        batch_size: int | None = None,
                        subsets: Mapping[str, str | Path] | Sequence[tuple[str, str | Path]] = (),
                        explain: bool = False, explain_method: str = "integrated_gradients") -> dict:
    """Score ``checkpoint`` (a run folder, a checkpoint file or an export folder) on ``split`` and write the results
    to ``out_dir``.

    Args:
        cfg: data settings to evaluate with (root, image size, ...); default: the checkpoint's own config. The model
            is always built from the checkpoint's config, so another architecture cannot slip in.
        split: dataset split; default ``cfg.data.val_split``.
        graphs: classifier only: ``online`` (from its segmenter, as at inference), ``gt`` (from the annotations:
            the oracle upper bound), ``store`` (a graph-only model: the split's graph store, no image opened),
            ``auto`` (store when the model is graph-only and its store exists, else online when the model has a
            segmenter, else gt).
        out_dir: where ``metrics.json`` and friends go; default ``<run folder>/eval-<split>``.
        subsets: classifier only: ``{name: file}`` (or pairs) of image-stem lists scored beside the whole split, in
            addition to the lists of the dataset's ``synthetic.json`` (:mod:`twostream.engine.evaluators.subsets`).
        explain: classifier only: explain every image (``explanations.jsonl``, ``metrics["explanation"]``) with
            ``explain_method`` (docs/explanations.md).
    """
    if graphs not in GRAPH_SOURCES:
        raise ValueError(f"graphs '{graphs}' is not one of {', '.join(GRAPH_SOURCES)}")
    ckpt = load_trained(checkpoint)
    path = ckpt["path"]
    model_cfg = config_from_dict(ckpt["config"], source=f"{path} (config)")
    cfg = cfg or model_cfg
    split = split or cfg.data.val_split
    out = Path(out_dir) if out_dir else path.parent / f"eval-{split}"
    class_table = ClassTable.from_dict(ckpt["class_table"])
    dev = resolve_device(device)
    if ckpt.get("stage") == "segmentation":
        if subsets:
            raise ValueError(f"--subset scores scene classification; {path} is a segmentation-stage checkpoint")
        if explain:
            raise ValueError(f"{path}: --explain explains a scene classifier; this is a segmentation checkpoint")
        metrics = _evaluate_segmenter(ckpt, cfg, model_cfg, split, class_table, dev, batch_size)
    elif ckpt.get("stage") == "classifier":
        explain_with = explain_method if explain else None
        metrics = _evaluate_classifier(ckpt, path, cfg, model_cfg, split, class_table, graphs, dev, batch_size, out,
                                       subsets, explain_with)
    else:
        raise CheckpointError(f"{path}: unknown stage {ckpt.get('stage')!r}")
    metrics.update(checkpoint=str(path), split=split, step=int(ckpt.get("step", 0)))
    write_metrics_json(metrics, out / "metrics.json")
    log.info("wrote %s", out / "metrics.json")
    return metrics


def _evaluate_segmenter(ckpt: dict, cfg: Config, model_cfg: Config, split: str, class_table: ClassTable,
                        device: torch.device, batch_size: int | None) -> dict:
    from twostream.engine.checkpoint import load_segmenter, trained_input_size
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.models.segmenter_input import ResizedSegmenter, segmenter_input

    path, raw_config = ckpt["path"], ckpt["config"]
    segmenter = load_segmenter(ckpt, device)  # the checkpoint read once
    if not _scores_segmentation(class_table, cfg):
        annotations = annotation_table(cfg.data)
        raise ValueError(f"{path}: a segmenter of '{class_table.name}' labels cannot be scored on "
                         + (f"the annotations of {cfg.data.root} ('{annotations.name}' labels)" if annotations else
                            f"{cfg.data.root}: data.format {cfg.data.format} has no annotations"))
    # it segments at the size it was trained at (or model.segmenter.input_size), whatever cfg.data.image_size is
    seg_cfg = model_cfg.model.segmenter
    if seg_cfg.input_size is None:
        seg_cfg = dataclasses.replace(seg_cfg, input_size=trained_input_size(raw_config))
    geometry = segmenter_input(seg_cfg, model_cfg.data, type(segmenter))
    model = ResizedSegmenter(segmenter, geometry)
    items = _at_size(cfg, geometry.resized(*cfg.data.image_size))
    log.info("%s: segmenting at %s (items read at %dx%d); scored against the annotations at their own size", path,
             geometry, *items.data.image_size)
    evaluators: dict[str, Evaluator] = {
        "segmentation": SemSegEvaluator(class_table, device=device),
        "graph_quality": SceneGraphEvaluator(SceneGraphBuilder.from_config(model_cfg.graph, class_table)),
    }
    # PQ when the checkpoint has the panoptic head and the data its instance annotations (data.instances)
    if cfg.data.instances:
        evaluators["panoptic"] = PanopticEvaluator(class_table, device=device)
    loader = _split_loader(items, split, instances=cfg.data.instances, batch_size=batch_size, originals=True)
    results = inference_on_dataset(model, loader, evaluators, forward=run_segmenter, device=device)
    metrics = {"stage": "segmentation", "segmentation": results["segmentation"],
               "graph_quality": results["graph_quality"], "segmenter_input": geometry.to_dict()}
    s, g = metrics["segmentation"], metrics["graph_quality"]["micro"]
    log.info("%s: mIoU %.1f%%, pixel accuracy %.1f%% on %d images; graph node F1 %.3f, edge F1 %.3f", split,
             100 * s["miou"], 100 * s["pixel_accuracy"], s["num_images"], g["node_f1"], g["edge_f1"])
    p = results.get("panoptic")
    if p is not None and p["num_images"]:
        s["panoptic"] = p
        log.info("%s: PQ %.1f (things %.1f, stuff %.1f), SQ %.1f, RQ %.1f", split, 100 * p["pq"],
                 100 * p["pq_things"], 100 * p["pq_stuff"], 100 * p["sq"], 100 * p["rq"])
    return metrics


def _evaluate_classifier(ckpt: dict, path: Path, cfg: Config, model_cfg: Config, split: str,
                         class_table: ClassTable, graphs: str, device: torch.device, batch_size: int | None,
                         out: Path, subsets: Mapping[str, str | Path] | Sequence[tuple[str, str | Path]],
                         explain_method: str | None = None) -> dict:
    from twostream.data.vocabulary import SceneVocabulary
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.models.two_stream import build_model

    vocabulary = SceneVocabulary.from_names(ckpt["vocabulary"])
    m = model_cfg.model
    has_segmenter = m.gnn.enabled and m.segmenter.kind != "none"
    store_cfg = _store_config(model_cfg, cfg)
    if not m.gnn.enabled:
        graphs = "none"  # an image-only model reads no graphs
    elif graphs == "auto":
        graphs = "store" if graphs_only(store_cfg) and store_available(store_cfg, split) else \
            "online" if has_segmenter else "gt"
    if graphs == "online" and not has_segmenter:
        raise ValueError(f"{path}: this model has no segmenter (model.segmenter.kind={m.segmenter.kind}, "
                         f"gnn enabled={m.gnn.enabled}); evaluate with --graphs gt")
    build_cfg = inference_config(model_cfg)
    if graphs == "gt" and m.gnn.enabled:
        build_cfg = dataclasses.replace(build_cfg, graph=dataclasses.replace(build_cfg.graph, source="gt"))
    model = build_model(build_cfg, num_scenes=len(vocabulary), class_table=class_table)
    load_model_state(model, ckpt["model"], path)
    model.to(device).eval()

    builder = SceneGraphBuilder.from_config(model_cfg.graph, class_table)
    stems_from = store_cfg if graphs == "store" else None
    subsets = read_subsets(cfg.data.root, split, lambda: _split_stems(cfg, split, stems_from), subsets)
    k = cfg.eval.topk
    evaluators: dict[str, Evaluator] = {"scenes": SceneEvaluator(vocabulary.names, topk=k, device=device)}
    if graphs == "online" and _scores_segmentation(class_table, cfg):
        evaluators["segmentation"] = SemSegEvaluator(class_table, device=device)
        evaluators["graph_quality"] = SceneGraphEvaluator(builder)
    if subsets:
        evaluators["subsets"] = SubsetEvaluator(subsets, vocabulary.names, topk=k, device=device)
    if explain_method is not None:
        from twostream.explain.evaluation import build_explanation_evaluator

        evaluators["explanation"] = build_explanation_evaluator(
            model, vocabulary.names, data_root=cfg.data.root, class_table=class_table,
            stream_means=ckpt.get("stream_means"), out_dir=out, method=explain_method)
    from twostream.models.segmenter_input import model_input_size

    # online: items at the segmenter's size when it is larger (the model shrinks a copy for the image encoder)
    size = model_input_size(cfg.data.image_size, model.segmenter_input if graphs == "online" else None)
    loader = _split_loader(_at_size(cfg, size), split, vocabulary=vocabulary, batch_size=batch_size,
                           gt_graphs=builder if graphs == "gt" and m.gnn.enabled else None,
                           store_cfg=store_cfg if graphs == "store" else None, originals="segmentation" in evaluators)
    results = inference_on_dataset(model, loader, evaluators, forward=run_classifier, device=device)
    metrics = {"stage": "classifier", "graphs": graphs, **results.pop("scenes"), **results}
    if graphs == "online":
        metrics["segmenter_input"] = model.segmenter_input.to_dict()
    if "explanation" in metrics:
        from twostream.explain.evaluation import format_explanation_metrics

        log.info("%s", format_explanation_metrics(metrics["explanation"]))
    out.mkdir(parents=True, exist_ok=True)
    table = format_per_class_table(metrics)
    if metrics.get("subsets"):
        table += "\n\n" + format_subset_table(metrics["subsets"])
    (out / "per_class.md").write_text(table + "\n")
    save_confusion_png(metrics, out / "confusion_matrix.png")
    kk = min(k, len(vocabulary))
    subset_text = "".join(f"; {name}: top-1 {100 * s['top1']:.1f}% on {s['num_images']} images"
                          for name, s in metrics.get("subsets", {}).items())
    log.info("%s (graphs: %s): top-1 %.1f%%, top-%d %.1f%%, mean class accuracy %.1f%% on %d images%s\n%s", split,
             graphs, 100 * metrics["top1"], kk, 100 * metrics[f"top{kk}"], 100 * metrics["mean_class_accuracy"],
             metrics["num_images"], subset_text, table)
    if "segmentation" in metrics:
        s, g = metrics["segmentation"], metrics["graph_quality"]["micro"]
        log.info("segmenter: mIoU %.1f%%, pixel accuracy %.1f%%; scene graphs vs annotations: node F1 %.3f, "
                 "edge F1 %.3f", 100 * s["miou"], 100 * s["pixel_accuracy"], g["node_f1"], g["edge_f1"])
    return metrics
