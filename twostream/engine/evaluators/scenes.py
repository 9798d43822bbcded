"""Scene-classification metrics: top-1, top-k, mean per-class accuracy, per-class accuracy, the confusion matrix.

The state is sums (a confusion matrix and a top-k hit count), so it reduces across ranks exactly. The ratios are
computed as torchmetrics' ``MulticlassAccuracy`` computes them (earlier versions of this module used it), so numbers
match earlier runs digit for digit.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor

from twostream.engine.evaluators.base import Evaluator, sum_over_ranks

__all__ = ["SceneEvaluator", "scene_metrics"]


def scene_metrics(confusion: Tensor, topk_hits: int, names: Sequence[str], k: int) -> dict:
    """Metrics from summed state: ``confusion (S, S)`` int64 (rows = truth, columns = top-1 prediction) and the
    number of images whose truth is among the top ``k`` scores. Accuracies are fractions in ``[0, 1]``.

    Returns ``{"num_images", "top1", "top{k}", "mean_class_accuracy", "per_class": {name: {"accuracy", "support"}},
    "confusion_matrix"}``; ``top{k}`` is 1.0 with a single class, a class without images has accuracy ``None`` and
    is left out of the mean.
    """
    cm = confusion.long().cpu()
    total = int(cm.sum())
    support = cm.sum(dim=1)
    correct = cm.diag()
    per_class = torch.where(support > 0, correct.double() / support.clamp(min=1).double(), torch.nan)
    present = support > 0
    if len(names) > 1:  # float32 division, as torchmetrics' micro accuracy (0 when there is no image)
        topk = float(torch.tensor(topk_hits).float() / torch.tensor(total).float()) if total else 0.0
    else:
        topk = 1.0
    return {
        "num_images": total,
        "top1": float(correct.sum()) / total if total else float("nan"),
        f"top{k}": topk,
        "mean_class_accuracy": float(per_class[present].mean()) if present.any() else float("nan"),
        "per_class": {name: {"accuracy": None if torch.isnan(acc) else float(acc), "support": int(s)}
                      for name, acc, s in zip(names, per_class, support)},
        "confusion_matrix": cm.tolist(),
    }


class SceneEvaluator(Evaluator):
    """Scene metrics of ``outputs["logits"] (B, S)`` against ``inputs["scene"] (B,)`` (:func:`scene_metrics`).

    Args:
        names: scene names in class order.
        topk: the k of top-k accuracy (clipped to the number of classes).
        device: where the state lives (the model's device).
        images: score only the images with these names (``inputs["name"]``); ``None`` = all.
    """

    def __init__(self, names: Sequence[str], topk: int = 5, device: torch.device | str = "cpu",
                 images: Collection[str] | None = None) -> None:
        self.names = list(names)
        self.k = max(1, min(topk, len(self.names)))
        self.device = torch.device(device)
        self.images = frozenset(images) if images is not None else None
        self.reset()

    def reset(self) -> None:
        n = len(self.names)
        self.confusion = torch.zeros(n, n, dtype=torch.long, device=self.device)
        self.topk_hits = torch.zeros(1, dtype=torch.long, device=self.device)

    def update(self, logits: Tensor, target: Tensor) -> None:
        """``logits (B, S)``, ``target (B,)`` int64."""
        logits, target = logits.float().to(self.device), target.to(self.device).long()
        n = len(self.names)
        pred = logits.argmax(dim=1)
        self.confusion += torch.bincount(target * n + pred, minlength=n * n).view(n, n)
        hits = pred == target if self.k == 1 else (logits.topk(self.k, dim=1).indices == target[:, None]).any(dim=1)
        self.topk_hits += hits.sum()

    def process(self, inputs: dict, outputs: dict) -> None:
        logits, target = outputs["logits"], inputs["scene"]
        if self.images is not None:
            keep = [i for i, name in enumerate(inputs["name"]) if name in self.images]
            if not keep:
                return
            index = torch.tensor(keep, device=logits.device)
            logits, target = logits[index], target.to(logits.device)[index]
        self.update(logits, target)

    def state(self) -> Tensor:
        """The summable state as one tensor: the flattened confusion matrix, then the top-k hits."""
        return torch.cat([self.confusion.flatten(), self.topk_hits])

    def metrics(self, state: Tensor) -> dict:
        """:func:`scene_metrics` of a (reduced) :meth:`state`."""
        n = len(self.names)
        return scene_metrics(state[: n * n].view(n, n), int(state[n * n]), self.names, self.k)

    def evaluate(self) -> dict:
        return self.metrics(sum_over_ranks(self.state()))
