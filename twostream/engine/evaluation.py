"""Scene-classification metrics (torchmetrics) and their report: JSON, a per-class table, a confusion-matrix image.

States are sums (a confusion matrix and top-k hit counts), so they reduce across ranks exactly and need no padded
sampler: each rank evaluates its own shard once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

log = logging.getLogger(__name__)

__all__ = ["SceneMetrics", "format_per_class_table", "save_confusion_png", "write_metrics_json"]


class SceneMetrics:
    """Top-1, top-k, mean per-class accuracy, per-class accuracy and the confusion matrix of scene predictions.

    Args:
        names: scene names in class order.
        topk: the k of top-k accuracy (clipped to the number of classes).
    """

    def __init__(self, names: list[str], topk: int = 5, device: torch.device | str = "cpu") -> None:
        self.names = list(names)
        n = len(self.names)
        self.k = max(1, min(topk, n))
        self.confusion = MulticlassConfusionMatrix(num_classes=n).to(device)
        self.topk = MulticlassAccuracy(num_classes=n, top_k=self.k, average="micro").to(device) if n > 1 else None

    def update(self, logits: Tensor, target: Tensor) -> None:
        """``logits (B, S)``, ``target (B,)`` int64."""
        self.confusion.update(logits.argmax(dim=1), target)
        if self.topk is not None:
            self.topk.update(logits, target)

    def compute(self) -> dict:
        """Synchronised over ranks by torchmetrics. Accuracies are fractions in [0, 1]."""
        cm = self.confusion.compute().long().cpu()  # (S, S) rows = truth, columns = prediction
        total = int(cm.sum())
        support = cm.sum(dim=1)
        correct = cm.diag()
        per_class = torch.where(support > 0, correct.double() / support.clamp(min=1).double(), torch.nan)
        present = support > 0
        return {
            "num_images": total,
            "top1": float(correct.sum()) / total if total else float("nan"),
            f"top{self.k}": float(self.topk.compute()) if self.topk is not None else 1.0,
            "mean_class_accuracy": float(per_class[present].mean()) if present.any() else float("nan"),
            "per_class": {name: {"accuracy": None if torch.isnan(acc) else float(acc), "support": int(s)}
                          for name, acc, s in zip(self.names, per_class, support)},
            "confusion_matrix": cm.tolist(),
        }


def format_per_class_table(metrics: dict) -> str:
    """A markdown table: scene | images | accuracy, most frequent scene first."""
    rows = sorted(metrics["per_class"].items(), key=lambda kv: (-kv[1]["support"], kv[0]))
    lines = ["| scene | images | accuracy |", "|---|---:|---:|"]
    for name, row in rows:
        acc = "n/a" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        lines.append(f"| {name} | {row['support']} | {acc} |")
    return "\n".join(lines)


def save_confusion_png(metrics: dict, path: str | Path, normalize: bool = True) -> Path:
    """The confusion matrix as an image: rows = true scene, columns = predicted, row-normalised by default."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics["per_class"])
    cm = torch.tensor(metrics["confusion_matrix"], dtype=torch.float64)
    if normalize:
        cm = cm / cm.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(names)
    size = min(4 + 0.35 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(cm.numpy(), cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted scene")
    ax.set_ylabel("true scene")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                value = cm[i, j].item()
                if value > 0:
                    ax.text(j, i, f"{value:.2f}" if normalize else f"{int(value)}", ha="center", va="center",
                            fontsize=6, color="white" if value > 0.5 * float(cm.max()) else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(f"top-1 {100 * metrics['top1']:.1f}%, mean class acc {100 * metrics['mean_class_accuracy']:.1f}%")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_metrics_json(metrics: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=1, allow_nan=True))
    tmp.replace(path)
    return path
