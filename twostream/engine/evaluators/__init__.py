"""Evaluation: one protocol (``reset`` / ``process`` / ``evaluate``), one loop, one way to reduce across ranks.

==================  ====================================================================================
``base``            :class:`Evaluator`, :class:`Evaluators`, :func:`inference_on_dataset`, :func:`sum_over_ranks`
``scenes``          :class:`SceneEvaluator`: top-1, top-k, mean class accuracy, per class, confusion matrix
``subsets``         :class:`SubsetEvaluator`: scene metrics of named subsets (``synthetic.json``, ``--subset``)
``semseg``          :class:`SemSegEvaluator`: mIoU, pixel accuracy, mean accuracy; :func:`evaluate_segmenter`
``panoptic``        :class:`PanopticEvaluator`: PQ / SQ / RQ, things and stuff
``scene_graphs``    :class:`SceneGraphEvaluator`: node and edge precision / recall / F1 against annotation graphs
``report``          ``metrics.json``, the per-class and subset tables, the confusion-matrix image
==================  ====================================================================================
"""

from twostream.engine.evaluators.base import (
    Evaluator,
    Evaluators,
    inference_on_dataset,
    run_classifier,
    run_segmenter,
    sum_over_ranks,
    to_device,
)
from twostream.engine.evaluators.panoptic import PanopticEvaluator
from twostream.engine.evaluators.report import (
    format_per_class_table,
    format_subset_table,
    save_confusion_png,
    write_metrics_json,
)
from twostream.engine.evaluators.scene_graphs import SceneGraphEvaluator
from twostream.engine.evaluators.scenes import SceneEvaluator
from twostream.engine.evaluators.semseg import SemSegEvaluator, evaluate_segmenter
from twostream.engine.evaluators.subsets import SubsetEvaluator, read_subsets

__all__ = [
    "Evaluator",
    "Evaluators",
    "PanopticEvaluator",
    "SceneEvaluator",
    "SceneGraphEvaluator",
    "SemSegEvaluator",
    "SubsetEvaluator",
    "evaluate_segmenter",
    "format_per_class_table",
    "format_subset_table",
    "inference_on_dataset",
    "read_subsets",
    "run_classifier",
    "run_segmenter",
    "save_confusion_png",
    "sum_over_ranks",
    "to_device",
    "write_metrics_json",
]
