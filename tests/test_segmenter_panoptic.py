"""UPSNet's parameter-free panoptic head on hand-made logits: known semantic + instance logits -> known panoptic map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twostream.data.classes import IGNORE_INDEX, ClassTable
from twostream.models.panoptic import PanopticHead, box_masks, paste_mask_logits, stuff_and_thing_ids

# A five-class table: 0 other (background), 1 wall and 2 sky (stuff), 3 person and 4 car (things).
TABLE = ClassTable(
    name="toy",
    names=("other", "wall", "sky", "person", "car"),
    palette=np.arange(15, dtype=np.uint8).reshape(5, 3),
    stuff=(False, True, True, False, False),
    background=0,
)
OTHER, WALL, SKY, PERSON, CAR = range(5)
H = W = 8


def make_head(**kw) -> PanopticHead:
    stuff, things = stuff_and_thing_ids(TABLE)
    kw = {"score_thresh": 0.5, **kw}
    return PanopticHead(stuff_ids=stuff, thing_ids=things, background=TABLE.background, **kw)


def sem(**regions) -> torch.Tensor:
    """``(5, 8, 8)`` semantic logits: wall 2 everywhere, other classes 0, plus ``class=(y0, y1, x0, x1, value)``."""
    x = torch.zeros(5, H, W)
    x[WALL] = 2.0
    for name, (y0, y1, x0, x1, v) in regions.items():
        x[TABLE.index(name), y0:y1, x0:x1] = v
    return x


def test_stuff_and_thing_split():
    stuff, things = stuff_and_thing_ids(TABLE)
    assert stuff == [OTHER, WALL, SKY] and things == [PERSON, CAR]


def test_box_masks_use_pixel_centres():
    m = box_masks(torch.tensor([[1.0, 2.0, 3.0, 5.0], [0.4, 0.0, 0.6, 1.0]]), (6, 4))
    expected = torch.zeros(2, 6, 4, dtype=torch.bool)
    expected[0, 2:5, 1:3] = True  # columns 1..2, rows 2..4
    expected[1, 0, 0] = True  # centre 0.5 lies in [0.4, 0.6)
    assert torch.equal(m, expected)


def test_paste_mask_logits_is_exact_on_the_grid_and_bilinear_when_scaled():
    torch.manual_seed(0)
    mask = torch.randn(1, 4, 4)
    pasted = paste_mask_logits(mask, torch.tensor([[2.0, 3.0, 6.0, 7.0]]), (10, 10))
    expected = torch.zeros(10, 10)
    expected[3:7, 2:6] = mask[0]  # a 4x4 box of a 4x4 mask: the mask itself, 0 elsewhere
    torch.testing.assert_close(pasted[0], expected)
    pasted = paste_mask_logits(mask, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), (8, 8))
    upsampled = F.interpolate(mask[None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(pasted[0], upsampled)
    assert paste_mask_logits(mask[:0], torch.zeros(0, 4), (5, 5)).shape == (0, 5, 5)


def test_panoptic_logits_follow_the_upsnet_definition():
    head = make_head()
    x = sem(person=(0, 4, 0, 4, 5.0), car=(4, 8, 4, 8, 6.0))
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]])  # one person instance in the top-left quarter
    mask = torch.full((1, 2, 2), 3.0)
    z = head.panoptic_logits(x, boxes, torch.tensor([PERSON]), mask)
    assert z.shape == (3 + 1 + 1, H, W)
    torch.testing.assert_close(z[:3], x[[OTHER, WALL, SKY]])  # stuff channels: the semantic logits
    inst = torch.zeros(H, W)
    inst[:4, :4] = 5.0 + 3.0  # X_person cropped to the box + the mask logits pasted in it; 0 outside
    torch.testing.assert_close(z[3], inst)
    # unknown = max over thing logits - max over instances of the cropped semantic logit
    unknown = torch.maximum(x[PERSON], x[CAR]) - torch.where(box_masks(boxes, (H, W))[0], x[PERSON], 0.0)
    torch.testing.assert_close(z[4], unknown)
    assert z[4, 6, 6] == 6.0 and z[4, 1, 1] == 0.0  # the undetected car is "unknown"; the detected person is not


def test_panoptic_map_instances_stuff_and_unknown():
    head = make_head()
    # person (semantic 5) in the top-left quarter, detected; car (semantic 6) bottom-right, not detected;
    # sky across the top-right corner.
    x = sem(person=(0, 4, 0, 4, 5.0), car=(4, 8, 4, 8, 6.0), sky=(0, 2, 6, 8, 4.0))
    pan, segments = head(x, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([PERSON]), torch.tensor([0.9]),
                         torch.full((1, 2, 2), 3.0))
    assert pan.dtype == torch.int32 and pan.shape == (H, W)
    by_category = {s["category_id"]: s for s in segments}
    wall, sky, person = by_category[WALL]["id"], by_category[SKY]["id"], by_category[PERSON]["id"]
    expected = torch.full((H, W), wall, dtype=torch.int32)
    expected[:4, :4] = person
    expected[0:2, 6:8] = sky
    expected[4:8, 4:8] = 0  # thing pixels no instance explains: unknown -> void
    assert torch.equal(pan, expected)
    assert [s["id"] for s in segments] == [1, 2, 3]  # stuff (by label id) first, then instances
    assert by_category[PERSON] == {"id": person, "category_id": PERSON, "isthing": True, "area": 16,
                                   "score": pytest.approx(0.9)}
    assert by_category[WALL]["area"] == int((expected == wall).sum()) and not by_category[WALL]["isthing"]
    assert CAR not in by_category


def test_instance_whose_class_the_semantic_head_disputes_becomes_unknown():
    head = make_head()
    x = sem(person=(0, 4, 4, 8, 5.0))  # the semantic head sees a person in the top-right quarter ...
    box = torch.tensor([[4.0, 0.0, 8.0, 4.0]])
    mask = torch.full((1, 2, 2), 3.0)
    # ... the instance head calls it a car: instance logit 0 (X_car) + 3 < unknown 5 - 0 -> void
    pan, segments = head(x, box, torch.tensor([CAR]), torch.tensor([0.9]), mask)
    assert (pan[:4, 4:] == 0).all() and not any(s["isthing"] for s in segments)
    # the same detection labelled person agrees with the semantic head and wins its box
    pan, segments = head(x, box, torch.tensor([PERSON]), torch.tensor([0.9]), mask)
    person = next(s for s in segments if s["isthing"])
    assert (pan[:4, 4:] == person["id"]).all() and person["area"] == 16


def test_background_and_small_stuff_are_void_and_no_instances_is_fine():
    x = sem(other=(0, 2, 0, 8, 9.0), sky=(6, 8, 0, 1, 9.0))
    pan, segments = make_head(stuff_area_limit=3)(x, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                                                  torch.zeros(0), torch.zeros(0, 2, 2))
    assert (pan[:2] == 0).all()  # 'other' is void in the panoptic map
    assert (pan[6:8, 0] == 0).all()  # a 2-pixel sky segment is below stuff_area_limit
    assert [s["category_id"] for s in segments] == [WALL] and (pan[2:6] == 1).all()


def test_select_thresholds_nms_and_mask_removal():
    head = make_head(score_thresh=0.5, nms_thresh=0.5, overlap_thresh=0.3)
    boxes = torch.tensor([
        [0.0, 0.0, 4.0, 4.0],  # 0: person, best
        [0.0, 0.0, 4.0, 4.2],  # 1: near-duplicate of 0 (IoU > 0.5): NMS removes it
        [0.0, 0.0, 8.0, 8.0],  # 2: person whose mask lies inside 0's (overlap 16/16 > 0.3): mask removal
        [0.0, 0.0, 3.0, 8.0],  # 3: car (IoU < 0.5 with all) overlapping 0's mask: another class, kept
        [4.0, 4.0, 8.0, 8.0],  # 4: below the score threshold
    ])
    labels = torch.tensor([PERSON, PERSON, PERSON, CAR, CAR])
    scores = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.3])
    masks = torch.full((5, 4, 4), 4.0)
    masks[2] = -4.0
    masks[2, :2, :2] = 4.0  # the top-left quarter of its 8x8 box: exactly the pixels of instance 0
    assert head.select(boxes, labels, scores, masks, (H, W)).tolist() == [0, 3]


def test_training_targets_and_loss():
    head = make_head(box_keep_fraction=0.5)
    sem_seg = torch.full((H, W), WALL)
    sem_seg[:, 6:] = SKY
    sem_seg[0, 0] = IGNORE_INDEX
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 5:7, 1:4] = True
    sem_seg[masks.any(0)] = PERSON
    sem_seg[7, 7] = CAR  # a thing pixel no instance owns
    keep = torch.tensor([1])  # instance 0 dropped: its pixels teach "unknown"
    target = head.targets(sem_seg, masks, keep)
    expected = torch.full((H, W), 1)  # wall = stuff channel 1 (other 0, wall 1, sky 2)
    expected[:, 6:] = 2
    expected[0, 0] = IGNORE_INDEX
    expected[7, 7] = IGNORE_INDEX
    expected[5:7, 1:4] = 3  # kept instance -> S + 0
    expected[1:3, 1:3] = 4  # dropped instance -> unknown (S + 1)
    assert torch.equal(target, expected)

    x = sem(person=(5, 7, 1, 4, 3.0)).requires_grad_(True)
    mask_logits = torch.zeros(1, 2, 2, requires_grad=True)
    boxes = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 5.0, 4.0, 7.0]])
    labels = torch.tensor([PERSON, PERSON])
    loss = head.loss(x, sem_seg, boxes, labels, masks, mask_logits, keep)
    z = head.panoptic_logits(x, boxes[keep], labels[keep], mask_logits)
    valid = expected != IGNORE_INDEX
    reference = F.cross_entropy(z.permute(1, 2, 0)[valid], expected[valid])
    torch.testing.assert_close(loss, reference)
    loss.backward()
    assert x.grad.abs().sum() > 0 and mask_logits.grad.abs().sum() > 0  # both heads learn through it
    kept = head.sample_kept(10).tolist()
    assert kept == sorted(set(kept)) and len(kept) == 5 and all(0 <= k < 10 for k in kept)
    assert len(head.sample_kept(1)) == 1 and len(head.sample_kept(0)) == 0


def test_constructor_errors():
    with pytest.raises(ValueError, match="no thing classes"):
        PanopticHead(stuff_ids=[0, 1], thing_ids=[])
    with pytest.raises(ValueError, match=r"ids \[1\] are both stuff and thing"):
        PanopticHead(stuff_ids=[0, 1], thing_ids=[1, 2])
    with pytest.raises(ValueError, match="box_keep_fraction"):
        make_head(box_keep_fraction=0.0)
