"""evaluate_segmenter: mIoU / pixel accuracy against an independent confusion-matrix computation; background and
ignore handling; a segmenter with another label set is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from twostream.data.classes import IGNORE_INDEX, ade20k150
from twostream.engine.evaluators import evaluate_segmenter
from twostream.models.label_alignment import own_class_table
from twostream.models.segmenter_base import Segmenter


class _Scripted(Segmenter):
    """Predicts the label written in the image's red channel (label / 255): a segmenter whose output we choose."""

    def __init__(self, class_table) -> None:
        super().__init__()
        self.class_table = class_table
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images: Tensor, targets: dict | None = None) -> dict:
        labels = (images[:, 0] * 255).round().long()  # (B, H, W)
        return {"sem_logits": F.one_hot(labels, len(self.class_table)).permute(0, 3, 1, 2).float()}


def _batches(rng: np.random.Generator, n: int = 3, labels=(0, 1, 2, 3, 5, 17)):
    out = []
    for _ in range(n):
        target = rng.choice(labels, size=(2, 12, 16))
        pred = np.where(rng.random(target.shape) < 0.7, target, rng.choice(labels, size=target.shape))
        target[:, :2] = IGNORE_INDEX
        image = torch.zeros(2, 3, 12, 16)
        image[:, 0] = torch.from_numpy(pred).float() / 255
        out.append({"image": image, "sem_seg": torch.from_numpy(target).long()})
    return out


def _reference(batches, k: int) -> dict:
    """Confusion matrix over pixels annotated 1..k-1 (0 = other and 255 unscored), then the ADE20K formulas."""
    conf = np.zeros((k, k), dtype=np.int64)
    for b in batches:
        pred = (b["image"][:, 0] * 255).round().long().numpy().ravel()
        gt = b["sem_seg"].numpy().ravel()
        keep = (gt != IGNORE_INDEX) & (gt != 0)
        conf += np.bincount(gt[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    classes = [c for c in range(1, k) if union[c] > 0]
    annotated = [c for c in range(1, k) if conf[c].sum() > 0]
    return {"miou": np.mean([tp[c] / union[c] for c in classes]), "pixel_accuracy": tp.sum() / conf.sum(),
            "mean_accuracy": np.mean([tp[c] / conf[c].sum() for c in annotated]),
            "iou": {c: tp[c] / union[c] for c in classes}}


def test_metrics_match_confusion_matrix():
    table = ade20k150()
    batches = _batches(np.random.default_rng(0))
    metrics = evaluate_segmenter(_Scripted(table), [batches[0], None, *batches[1:]], table)
    expected = _reference(batches, len(table))
    assert metrics["num_images"] == 6
    for key in ("miou", "pixel_accuracy", "mean_accuracy"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert sorted(expected["iou"]) == [1, 2, 3, 5, 17]
    for c, iou in expected["iou"].items():
        assert metrics["per_class_iou"][table.short_name(c)] == pytest.approx(iou, abs=1e-6)
    assert metrics["per_class_iou"]["flag"] is None  # never annotated, never predicted: not in the mean
    assert "other" not in metrics["per_class_iou"]


def test_predicting_other_on_annotated_pixels_is_a_miss():
    table = ade20k150()
    image = torch.zeros(1, 3, 2, 2)  # predicts 0 'other' everywhere
    target = torch.tensor([[[1, 1], [0, IGNORE_INDEX]]])
    metrics = evaluate_segmenter(_Scripted(table), [{"image": image, "sem_seg": target}], table)
    assert metrics["pixel_accuracy"] == 0.0 and metrics["miou"] == 0.0  # wall: 2 annotated pixels, none found


def test_other_label_set_is_refused():
    coco = own_class_table("hf:coco", ["person", "car"])
    with pytest.raises(ValueError, match="undefined for another label set"):
        evaluate_segmenter(_Scripted(coco), _batches(np.random.default_rng(1), n=1), ade20k150())
