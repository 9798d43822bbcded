"""UPSNet with its Mask R-CNN instance head and panoptic head: training losses and gradients on instance targets,
inference outputs (detections and panoptic maps) and the input checks."""

from __future__ import annotations

import pytest
import torch

from twostream.config import SegmenterConfig
from twostream.data.classes import ade20k150
from twostream.models.backbones import build_backbone
from twostream.models.panoptic import PanopticHead, stuff_and_thing_ids
from twostream.models.upsnet import UPSNet, build_upsnet
from twostream.models.upsnet_heads import InstanceHead

TABLE = ade20k150()
STUFF, THINGS = stuff_and_thing_ids(TABLE)
PERSON, CAR, CHAIR, WALL, FLOOR = (TABLE.index(n) for n in ("person", "car", "chair", "wall", "floor"))


def tiny_panoptic_upsnet(score_thresh: float = 0.05) -> UPSNet:
    torch.manual_seed(0)
    backbone = build_backbone("resnet10t", channels=(16, 32, 64, 128), stem_width=16, zero_init_last=False)
    instance = InstanceHead(32, len(THINGS) + 1, rpn_pre_nms_top_n=(200, 100), rpn_post_nms_top_n=(100, 50),
                            rpn_batch_size=64, box_batch_size=64, box_head_dim=64, mask_head_dim=16,
                            mask_head_layers=2, score_thresh=score_thresh, detections_per_img=20)
    panoptic = PanopticHead(stuff_ids=STUFF, thing_ids=THINGS, background=TABLE.background, score_thresh=0.0)
    return UPSNet(backbone=backbone, class_table=TABLE, fpn_channels=32, head_channels=16, head_layers=2,
                  deformable=False, instance_head=instance, panoptic_head=panoptic)


def scene() -> tuple[torch.Tensor, dict]:
    """Two 96x128 images: wall above floor, with a person and a car (image 0) and one chair (image 1)."""
    sem = torch.full((2, 96, 128), WALL)
    sem[:, 64:] = FLOOR
    masks0 = torch.zeros(2, 96, 128, dtype=torch.bool)
    masks0[0, 10:70, 20:44] = True  # person
    masks0[1, 50:90, 70:120] = True  # car
    masks1 = torch.zeros(1, 96, 128, dtype=torch.bool)
    masks1[0, 40:80, 30:60] = True  # chair
    masks1[0, 40:50, 30:40] = False  # not a rectangle: the box comes from the mask's extent
    for b, (masks, labels) in enumerate(((masks0, (PERSON, CAR)), (masks1, (CHAIR,)))):
        for m, label in zip(masks, labels):
            sem[b][m] = label
    images = torch.rand(2, 3, 96, 128)
    instances = [
        {"masks": masks0, "labels": torch.tensor([PERSON, CAR])},
        {"masks": masks1.to(torch.uint8), "labels": torch.tensor([CHAIR]),
         "boxes": torch.tensor([[30.0, 40.0, 60.0, 80.0]])},
    ]
    return images, {"sem_seg": sem, "instances": instances}


def test_training_losses_and_gradients():
    model = tiny_panoptic_upsnet().train()
    images, targets = scene()
    out = model(images, targets)
    losses = out["losses"]
    assert set(losses) == {"loss_sem", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
                           "loss_mask", "loss_panoptic"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_classifier"] > 1.0  # ~log(116) classes at initialisation: the labels reached the head
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    for part in ("instance_head.rpn", "instance_head.roi_heads.box_predictor", "instance_head.roi_heads.mask_head"):
        assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith(part)), part


def test_panoptic_loss_trains_semantic_and_mask_heads_alone():
    model = tiny_panoptic_upsnet().train()
    images, targets = scene()
    model(images, targets)["losses"]["loss_panoptic"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("semantic_head.classifier") for n in grads)
    assert any(n.startswith("instance_head.roi_heads.mask_predictor") for n in grads)
    assert not any(n.startswith("instance_head.roi_heads.box_predictor") for n in grads)  # gt boxes, no box loss


def test_inference_gives_detections_and_consistent_panoptic_maps():
    model = tiny_panoptic_upsnet(score_thresh=0.0).eval()  # untrained: keep every detection so instances appear
    images, _ = scene()
    with torch.no_grad():
        out = model(images)
    assert out["sem_logits"].shape == (2, len(TABLE), 96, 128) and "losses" not in out
    assert len(out["instances"]) == len(out["panoptic"]) == 2
    for inst, (pan, segments) in zip(out["instances"], out["panoptic"]):
        assert inst["boxes"].shape[1] == 4 and len(inst["boxes"]) == len(inst["labels"]) == len(inst["scores"])
        assert all(int(label) in THINGS for label in inst["labels"])  # detector classes map back to label ids
        assert pan.shape == (96, 128) and pan.dtype == torch.int32
        ids = [s["id"] for s in segments]
        assert ids == list(range(1, len(segments) + 1))
        assert set(pan.unique().tolist()) - {0} == set(ids)
        for s in segments:
            assert s["area"] == int((pan == s["id"]).sum())
            assert s["isthing"] == (s["category_id"] in THINGS)
    assert any(s["isthing"] for _, segs in out["panoptic"] for s in segs)  # instances do reach the panoptic map


def test_instance_target_errors():
    model = tiny_panoptic_upsnet().train()
    images, targets = scene()
    with pytest.raises(ValueError, match=r"needs targets\['instances'\]"):
        model(images, {"sem_seg": targets["sem_seg"]})
    bad = [dict(targets["instances"][0], labels=torch.tensor([PERSON, WALL])), targets["instances"][1]]
    with pytest.raises(ValueError, match=r"instances\[0\] has label 1 \(wall\), not a thing class of ade20k150"):
        model(images, {"sem_seg": targets["sem_seg"], "instances": bad})
    with pytest.raises(ValueError, match=r"\['masks'\] has shape \(2, 48, 64\), expected \(M, 96, 128\)"):
        model(images, {"sem_seg": targets["sem_seg"],
                       "instances": [{"masks": torch.zeros(2, 48, 64), "labels": torch.tensor([PERSON, CAR])}] * 2})
    # a frozen segmenter in train mode without targets still segments
    with torch.no_grad():
        assert set(model(images)) == {"sem_logits", "features"}


def test_builder_wires_instance_and_panoptic_heads():
    cfg = SegmenterConfig(backbone="resnet18", fpn_channels=32, head_channels=8, instance_head=True,
                          panoptic_head=True)
    model = build_upsnet(cfg, TABLE)
    assert model.instance_head.num_classes == len(THINGS) + 1 == 116
    assert model.panoptic_head.stuff_ids == STUFF and len(STUFF) == 36  # 35 stuff classes + 'other'
    with pytest.raises(ValueError, match="instance head has 5 classes"):
        UPSNet(backbone=model.backbone, class_table=TABLE, instance_head=InstanceHead(32, 5))


def test_synthetic_instance_annotations_train_the_instance_head(tmp_path):
    """The data side's instance PNGs (R = class, G = index), read by the real readers, drive every head."""
    from twostream.data.io import load_image, load_label, read_instances
    from twostream.data.synthetic import make_synthetic

    make_synthetic(tmp_path, train_per_scene=1, val_per_scene=0, size=(96, 128), instances=True,
                   scenes=["street", "living_room"])
    stems = sorted(p.stem for p in (tmp_path / "images" / "training").glob("*.jpg"))
    assert len(stems) == 2
    images, sems, instances = [], [], []
    for stem in stems:
        images.append(torch.from_numpy(load_image(tmp_path / "images" / "training" / f"{stem}.jpg")))
        sems.append(torch.from_numpy(load_label(tmp_path / "annotations" / "training" / f"{stem}.png")).long())
        inst = read_instances(tmp_path / "annotations_instance" / "training" / f"{stem}.png")
        instances.append({k: torch.from_numpy(v) for k, v in inst.items()})
    images = torch.stack(images).permute(0, 3, 1, 2).float() / 255  # (2, 96, 128, 3) uint8 -> (2, 3, 96, 128)
    assert all(len(i["labels"]) > 0 for i in instances)
    model = tiny_panoptic_upsnet().train()
    losses = model(images, {"sem_seg": torch.stack(sems), "instances": instances})["losses"]
    assert len(losses) == 7 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.instance_head.parameters())
