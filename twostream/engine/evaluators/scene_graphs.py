"""Scene-graph quality: each predicted graph against the graph the same builder makes from the annotation.

Node and edge precision / recall / F1 (micro and macro) of :class:`~twostream.graph.metrics.GraphMetrics`; the
matching rules are in :mod:`twostream.graph.metrics`. The predicted label map is the argmax of
``outputs["sem_logits"]``; padding (255) in the annotation belongs to no node.

At which size. With ``"sem_seg_original"`` in the batch (``tools/eval.py``), the predicted graph is built from the
map at the segmenter's own size (what the classifier's graphs are built from; the content only, without the
padding ``data.keep_ratio`` adds) and matched against the graph of the annotation at the image's original size: the
same reference whatever size the segmenter ran at. Without it, both maps at the batch's size.
"""

from __future__ import annotations

from twostream.engine.evaluators.base import Evaluator, sum_over_ranks
from twostream.engine.evaluators.semseg import content_logits, predicted_labels
from twostream.graph.metrics import GraphMetrics, compare_label_maps

__all__ = ["SceneGraphEvaluator"]


class SceneGraphEvaluator(Evaluator):
    """Graph quality of the segmenter's predicted maps; batches without ``"sem_logits"`` are passed over.

    Args:
        builder: the ``SceneGraphBuilder`` of the run (its granularity decides class or region matching).
        iou_threshold: region granularity: the mask IoU at which two nodes of one class match.

    ``evaluate()`` returns ``{"micro": {...}, "macro": {...}, "images": n, "counts": {...}}``
    (:meth:`GraphMetrics.compute`).
    """

    def __init__(self, builder, iou_threshold: float = 0.5) -> None:
        self.builder, self.iou_threshold = builder, iou_threshold
        self.reset()

    def reset(self) -> None:
        self.graph_metrics = GraphMetrics()

    def process(self, inputs: dict, outputs: dict) -> None:
        targets = inputs["sem_seg"]
        originals = inputs.get("sem_seg_original")
        if originals is not None:
            logits = outputs.get("sem_logits")
            if logits is None:
                return
            for i, original in enumerate(originals):
                pred_map = content_logits(logits[i], targets[i]).argmax(dim=0)  # at the segmenter's size
                self.graph_metrics.update(compare_label_maps(pred_map.cpu(), original.cpu(), self.builder,
                                                             self.iou_threshold))
            return
        pred = predicted_labels(outputs, tuple(targets.shape[-2:]))
        if pred is None:
            return
        for pred_map, target in zip(pred.cpu(), targets.cpu()):  # the builder's matching runs on the CPU
            self.graph_metrics.update(compare_label_maps(pred_map, target, self.builder, self.iou_threshold))

    def evaluate(self) -> dict:
        reduced = GraphMetrics()
        reduced.state = sum_over_ranks(self.graph_metrics.state)
        return reduced.compute()

