"""Reports of evaluation results: ``metrics.json``, the per-class and per-subset tables, a confusion-matrix image."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from twostream.atomic import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["format_per_class_table", "format_subset_table", "save_confusion_png", "write_metrics_json"]


def format_per_class_table(metrics: dict) -> str:
    """A markdown table: scene | images | accuracy, most frequent scene first."""
    rows = sorted(metrics["per_class"].items(), key=lambda kv: (-kv[1]["support"], kv[0]))
    lines = ["| scene | images | accuracy |", "|---|---:|---:|"]
    for name, row in rows:
        acc = "n/a" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        lines.append(f"| {name} | {row['support']} | {acc} |")
    return "\n".join(lines)


def format_subset_table(subsets: dict) -> str:
    """``metrics["subsets"]`` as a markdown table: subset | images | top-1 | top-k | mean class accuracy."""
    def pct(value) -> str:
        return "n/a" if value is None or value != value else f"{100 * value:.1f}%"

    k = next((key for m in subsets.values() for key in m if key.startswith("top") and key != "top1"), "top1")
    lines = [f"| subset | images | top-1 | top-{k[3:]} | mean class accuracy |", "|---|---:|---:|---:|---:|"]
    for name, m in subsets.items():
        lines.append(f"| {name} | {m['num_images']} | {pct(m['top1'])} | {pct(m.get(k))} | "
                     f"{pct(m['mean_class_accuracy'])} |")
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
    return atomic_write_text(path, json.dumps(metrics, indent=1, allow_nan=True))
