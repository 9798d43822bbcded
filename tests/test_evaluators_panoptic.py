"""Panoptic quality: the project's formats -> (category, instance) pairs, and PQ / SQ / RQ on a hand-made case whose
values are worked out by hand below."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twostream.data.classes import IGNORE_INDEX, ClassTable
from twostream.engine.evaluators.panoptic import VOID, PanopticEvaluator, panoptic_prediction, panoptic_target

OTHER, WALL, PERSON, CAR = range(4)
TABLE = ClassTable(name="toy", names=("other", "wall", "person", "car"), palette=np.zeros((4, 3), np.uint8),
                   stuff=(False, True, False, False), background=OTHER)


def hand_case():
    """8x8 image. Ground truth: wall in rows 0-3; person instance A rows 4-7 x cols 0-3; car instance B rows 4-7 x
    cols 4-7; void: pixel (0, 0) is 255 and pixel (3, 7) is labelled person but no instance claims it.

    Prediction: segment 1 wall on rows 0-3 (all 32 pixels); segment 2 person on rows 4-7 x cols 0-2; segment 3 car on
    rows 4-5 x cols 3-7; the rest (rows 6-7 x cols 3-7) id 0 = void.
    """
    sem = torch.full((8, 8), WALL)
    sem[4:, :4], sem[4:, 4:] = PERSON, CAR
    sem[0, 0], sem[3, 7] = IGNORE_INDEX, PERSON
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 4:, :4] = True
    masks[1, 4:, 4:] = True
    instances = {"labels": torch.tensor([PERSON, CAR]), "masks": masks}
    pan = torch.zeros(8, 8, dtype=torch.int32)
    pan[:4] = 1
    pan[4:, :3] = 2
    pan[4:6, 3:] = 3
    segments = [{"id": 1, "category_id": WALL, "isthing": False}, {"id": 2, "category_id": PERSON, "isthing": True},
                {"id": 3, "category_id": CAR, "isthing": True}]
    return sem, instances, pan, segments


def test_target_pairs_void_and_instances():
    sem, instances, _, _ = hand_case()
    sem[0, 1] = OTHER
    target = panoptic_target(sem, instances, TABLE)
    assert target.shape == (8, 8, 2) and target.dtype == torch.int64
    assert target[1, 1].tolist() == [WALL, 0]                       # stuff: its class, no instance
    assert target[5, 1].tolist() == [PERSON, 1] and target[5, 5].tolist() == [CAR, 2]
    assert target[3, 7, 0] == VOID                                   # a thing pixel no instance claims
    assert target[0, 0, 0] == IGNORE_INDEX and target[0, 1, 0] == OTHER  # not in the sets: void for torchmetrics
    # overlapping masks: the later instance owns the pixel
    instances["masks"][1, 4, 0] = True
    assert panoptic_target(sem, instances, TABLE)[4, 0].tolist() == [CAR, 2]
    # no instance annotations: every thing pixel is void
    assert (panoptic_target(sem, None, TABLE)[4:, :, 0] == VOID).all()


def test_prediction_pairs():
    _, _, pan, segments = hand_case()
    pred = panoptic_prediction(pan, segments)
    assert pred[0, 0].tolist() == [WALL, 1] and pred[4, 0].tolist() == [PERSON, 2] and pred[4, 7].tolist() == [CAR, 3]
    assert pred[7, 7, 0] == VOID


def test_pq_on_the_hand_case():
    sem, instances, pan, segments = hand_case()
    metrics = PanopticEvaluator(TABLE)
    metrics.update([(pan, segments)], sem[None], [instances])
    m = metrics.evaluate()
    # wall: 30 annotated pixels, all inside the 32-pixel prediction; its 2 other pixels lie on void, which leaves the
    #   union -> IoU 30 / 30 = 1, TP.
    # person: 12 of A's 16 pixels, nothing else -> IoU 0.75 > 0.5, TP.
    # car: segment 3 (10 px) meets B (16 px) on 8 -> IoU 8 / 18 < 0.5: one FP and one FN.
    pq = {"wall": 1.0, "person": 0.75, "car": 0.0}
    sq = {"wall": 1.0, "person": 0.75, "car": 0.0}
    rq = {"wall": 1.0, "person": 1.0, "car": 1 / (0 + 0.5 + 0.5) * 0}
    assert m["per_class_pq"] == pytest.approx(pq)
    assert m["pq"] == pytest.approx(sum(pq.values()) / 3)
    assert m["sq"] == pytest.approx(sum(sq.values()) / 3)
    assert m["rq"] == pytest.approx(sum(rq.values()) / 3)
    assert m["pq_things"] == pytest.approx(0.375) and m["pq_stuff"] == pytest.approx(1.0)
    assert m["num_images"] == 1


def test_pq_perfect_prediction_and_void_heavy_false_positive():
    sem, instances, _, _ = hand_case()
    target = panoptic_target(sem, instances, TABLE)
    # the ground truth itself as a prediction: PQ 1; plus a segment that lies on void pixels only (not an FP)
    pan = torch.zeros(8, 8, dtype=torch.int32)
    pan[sem == WALL] = 1
    pan[instances["masks"][0]] = 2
    pan[instances["masks"][1]] = 3
    pan[0, 0], pan[3, 7] = 4, 4
    segments = [{"id": 1, "category_id": WALL, "isthing": False}, {"id": 2, "category_id": PERSON, "isthing": True},
                {"id": 3, "category_id": CAR, "isthing": True}, {"id": 4, "category_id": CAR, "isthing": True}]
    assert target.shape == (8, 8, 2)
    metrics = PanopticEvaluator(TABLE)
    metrics.update([(pan, segments)] * 2, torch.stack([sem, sem]), [instances, instances])
    m = metrics.evaluate()
    assert m["pq"] == pytest.approx(1.0) and m["rq"] == pytest.approx(1.0) and m["num_images"] == 2


def test_a_segment_left_unknown_is_a_false_negative():
    """COCO's rule: ground truth the prediction leaves void (UPSNet's unknown channel) is missed, not forgiven; the
    void-predicted pixels stay in the union of a partly found segment."""
    sem, instances, _, _ = hand_case()
    pan = torch.zeros(8, 8, dtype=torch.int32)
    pan[:4] = 1
    pan[4:, :3] = 2  # person: 12 of 16 pixels; its column 3 and the whole car are unknown (0)
    segments = [{"id": 1, "category_id": WALL, "isthing": False}, {"id": 2, "category_id": PERSON, "isthing": True}]
    metrics = PanopticEvaluator(TABLE)
    metrics.update([(pan, segments)], sem[None], [instances])
    m = metrics.evaluate()
    assert m["per_class_pq"] == pytest.approx({"wall": 1.0, "person": 0.75, "car": 0.0})


def test_absent_classes_are_not_averaged_and_errors():
    sem = torch.full((4, 4), WALL)
    pan = torch.ones(4, 4, dtype=torch.int32)
    metrics = PanopticEvaluator(TABLE)
    metrics.update([(pan, [{"id": 1, "category_id": WALL, "isthing": False}])], sem[None], [None])
    m = metrics.evaluate()
    assert m["pq"] == 1.0 and m["per_class_pq"] == {"wall": 1.0, "person": None, "car": None}
    assert math.isnan(m["pq_things"])
    with pytest.raises(ValueError, match="one of each per image"):
        metrics.update([(pan, [])], torch.stack([sem, sem]), [None])
    with pytest.raises(ValueError, match=r"a panoptic map of \(4, 4\) pixels for an annotation of \(8, 8\)"):
        metrics.update([(pan, [])], torch.zeros(1, 8, 8, dtype=torch.long), [None])
