"""Instance annotations through the real training path: the dataset reads annotations_instance/ PNGs, the joint
transforms keep masks, boxes and the semantic map consistent, collate keeps per-image instances as a list, and the
segmentation stage trains UPSNet's instance and panoptic heads from them end to end."""

from __future__ import annotations

import functools
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from twostream.config import Config, ConfigError, load_config
from twostream.data.ade20k import ADE20KDataset
from twostream.data.classes import IGNORE_INDEX, ade20k150
from twostream.data.io import DataError
from twostream.data.transforms import InstanceMasks, instance_targets, make_transforms
from twostream.engine.data import collate
from twostream.engine.distributed import DistInfo
from twostream.engine.tasks import SegmentationTask
from twostream.models.panoptic import stuff_and_thing_ids

TABLE = ade20k150()
THINGS = torch.tensor(stuff_and_thing_ids(TABLE)[1])
SCENES = ["street", "living_room", "bedroom", "kitchen"]
INSTANCE_LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask",
                   "loss_panoptic"}


@pytest.fixture(scope="module")
def instance_root(tmp_path_factory):
    """12 training + 4 validation synthetic images, 64x96 (H x W), with instance PNGs."""
    from twostream.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("instances") / "ade"
    make_synthetic(root, train_per_scene=3, val_per_scene=1, size=(64, 96), seed=1, instances=True, scenes=SCENES)
    return root


def check_consistent(item: dict) -> None:
    """Boxes are the masks' pixel-edge extents, every instance pixel has the instance's class in the semantic map,
    and (synthetic data: every visible object of a thing class is an instance) the instances tile the thing pixels."""
    inst, sem = item["instances"], item["sem_seg"]
    masks, labels, boxes = inst["masks"], inst["labels"], inst["boxes"]
    m = len(labels)
    assert masks.dtype == torch.bool and masks.shape == (m, *sem.shape)
    assert labels.dtype == torch.int64 and boxes.dtype == torch.float32 and boxes.shape == (m, 4)
    assert masks.flatten(1).any(dim=1).all(), "an empty instance was kept"
    if m:
        # masks_to_boxes gives the last pixel's index; our boxes are pixel edges (x1, y1 exclusive)
        assert torch.equal(boxes, masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0]))
    for mask, label in zip(masks, labels):
        assert (sem[mask] == label).all(), f"instance of class {int(label)} covers other labels"
    cover = masks.sum(dim=0)  # (H, W) instances per pixel
    assert (cover <= 1).all(), "instances overlap"
    assert torch.equal(cover.bool(), torch.isin(sem, THINGS)), "thing pixels without an instance (or vice versa)"


# --------------------------------------------------------------------------------------------------------------------
# Dataset + transforms
# --------------------------------------------------------------------------------------------------------------------


def test_train_crop_flip_resize_keep_instances_consistent(instance_root):
    raw = ADE20KDataset(instance_root, "training", None, skip_bad=False, instances=True)
    t = make_transforms((48, 48), train=True, hflip=0.5, scale=(0.2, 1.0), color_jitter=0.0)
    ds = ADE20KDataset(instance_root, "training", None, transform=t, skip_bad=False, instances=True)
    assert len(ds) == 12
    full = [len(raw[i]["instances"]["labels"]) for i in range(len(raw))]
    assert all(n > 0 for n in full)
    check_consistent(raw[0])
    dropped = 0
    for seed in range(3):
        torch.manual_seed(seed)
        for i in range(len(ds)):
            item = ds[i]
            assert item["image"].shape == (3, 48, 48)
            check_consistent(item)
            dropped += full[i] - len(item["instances"]["labels"])
    assert dropped > 0  # crops did remove instances, and those were dropped rather than kept empty


def test_keep_ratio_padding_holds_no_instance(instance_root):
    t = make_transforms((64, 64), train=False, keep_ratio=True)
    ds = ADE20KDataset(instance_root, "validation", None, transform=t, skip_bad=False, instances=True)
    for i in range(len(ds)):
        item = ds[i]
        pad = item["sem_seg"] == IGNORE_INDEX
        assert pad[:5].all() and pad[-5:].all()  # 64x96 fitted into 64x64: 43 rows, padding above and below
        assert not (item["instances"]["masks"] & pad).any()
        check_consistent(item)
        rows = (~pad).any(dim=1).nonzero()[:, 0]
        boxes = item["instances"]["boxes"]
        assert (boxes[:, 1] >= rows.min()).all() and (boxes[:, 3] <= rows.max() + 1).all()


def test_resize_drops_vanished_instances_and_boxes_are_exact():
    """64 -> 16 px: NEAREST_EXACT takes source pixel 4i + 2 for output pixel i (hand-computed below)."""
    masks = torch.zeros(3, 64, 64, dtype=torch.uint8)
    masks[0, 1, 1] = 1  # one pixel no output pixel samples: dropped
    masks[1, 2, 2] = 1  # the source of output pixel (0, 0)
    masks[2, 8:20, 30:41] = 1  # rows 10, 14, 18 -> 2..4; columns 30, 34, 38 -> 7..9
    sem = torch.zeros(64, 64, dtype=torch.int64)
    t = make_transforms((16, 16), train=False)
    _, sem_out, masks_out = t(tv_tensors.Image(torch.zeros(3, 64, 64, dtype=torch.uint8)), tv_tensors.Mask(sem),
                              InstanceMasks(masks))
    assert isinstance(masks_out, InstanceMasks) and masks_out.dtype == torch.uint8 and sem_out.dtype == torch.int64
    out = instance_targets(masks_out, torch.tensor([12, 13, 20]))
    assert out["labels"].tolist() == [13, 20]
    assert out["boxes"].tolist() == [[0.0, 0.0, 1.0, 1.0], [7.0, 2.0, 10.0, 5.0]]
    assert int(out["masks"][1].sum()) == 9
    empty = instance_targets(torch.zeros(0, 16, 16, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 16, 16)


def test_bad_instance_files_are_data_errors(instance_root, tmp_path):
    root = tmp_path / "ade"
    shutil.copytree(instance_root, root)
    inst_dir = root / "annotations_instance" / "training"
    (inst_dir / "ADE_train_00000002.png").unlink()
    strict = ADE20KDataset(root, "training", None, skip_bad=False, instances=True)
    missing = (r"ADE_train_00000002\.png: instance annotation not found \(one PNG per image in "
               r"annotations_instance/training/ is needed with data\.instances=true\)")
    with pytest.raises(DataError, match=missing):
        strict[1]
    lenient = ADE20KDataset(root, "training", None, skip_bad=True, instances=True)
    assert lenient[1]["name"] == "ADE_train_00000003" and lenient.skipped == 1
    assert "instances" not in ADE20KDataset(root, "training", None, skip_bad=False)[1]  # not asked for: not read

    Image.fromarray(np.zeros((32, 32, 3), np.uint8), "RGB").save(inst_dir / "ADE_train_00000003.png")
    with pytest.raises(DataError, match=r"00003\.png: instance annotation is 32x32 but its image is 96x64"):
        strict[2]
    bad = np.zeros((64, 96, 3), np.uint8)
    bad[:4, :4] = (200, 1, 0)  # class id 200: not an ADE20K-150 class
    Image.fromarray(bad, "RGB").save(inst_dir / "ADE_train_00000004.png")
    with pytest.raises(DataError, match=r"ADE_train_00000004\.png: instance class id\(s\) 200 outside 1\.\.150"):
        strict[3]

    shutil.rmtree(root / "annotations_instance" / "validation")
    with pytest.raises(DataError, match=r"annotations_instance/validation: folder not found.*data\.instances=false"):
        ADE20KDataset(root, "validation", None, instances=True)


# --------------------------------------------------------------------------------------------------------------------
# Engine: collate, device, config guard
# --------------------------------------------------------------------------------------------------------------------


def test_collate_keeps_instances_per_image_and_to_device_moves_them(instance_root):
    ds = ADE20KDataset(instance_root, "training", None, transform=make_transforms((64, 64), train=False),
                       skip_bad=False, instances=True)
    items = [ds[0], None, ds[3]]  # None: an item that failed to load
    counts = [len(items[0]["instances"]["labels"]), len(items[2]["instances"]["labels"])]
    assert counts[0] != counts[1]  # variable M: stacking would fail
    batch = collate(items)
    assert batch["image"].shape == (2, 3, 64, 64) and batch["sem_seg"].shape == (2, 64, 64)
    assert isinstance(batch["instances"], list) and len(batch["instances"]) == 2
    assert batch["instances"][1]["masks"] is items[2]["instances"]["masks"]
    moved = SegmentationTask(Config(), DistInfo()).to_device(batch, torch.device("meta"))
    assert moved["image"].device.type == "meta" and moved["name"] == batch["name"]
    for inst, n in zip(moved["instances"], counts):
        assert all(v.device.type == "meta" for v in inst.values()) and inst["masks"].shape == (n, 64, 64)


def test_instance_head_without_instance_data_is_one_config_error():
    with pytest.raises(ConfigError, match=r"instance_head=true trains on instance masks: set data\.instances=true"):
        load_config(None, ["train.stage=segmentation", "model.segmenter.instance_head=true"])
    load_config(None, ["train.stage=segmentation", "model.segmenter.instance_head=true", "data.instances=true"])
    # the classifier stage only runs a trained segmenter: its architecture may include the head
    load_config(None, ["model.segmenter.instance_head=true"])


# --------------------------------------------------------------------------------------------------------------------
# End to end: segmentation stage with the instance and panoptic heads
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_widths(monkeypatch):
    """The config names the architecture (resnet10t); widths shrink here so a CPU step takes well under a second.
    The engine path under test (data -> collate -> device -> loss -> checkpoint -> load) does not depend on them."""
    import twostream.models.upsnet as upsnet
    from twostream.models.backbones import build_backbone
    from twostream.models.upsnet_heads import InstanceHead

    def backbone(name, **kwargs):
        return build_backbone(name, channels=(16, 32, 64, 128), stem_width=16, zero_init_last=False, **kwargs)

    monkeypatch.setattr(upsnet, "build_backbone", backbone)
    monkeypatch.setattr(upsnet, "InstanceHead", functools.partial(
        InstanceHead, rpn_pre_nms_top_n=(200, 100), rpn_post_nms_top_n=(100, 50), rpn_batch_size=64,
        box_batch_size=64, box_head_dim=64, mask_head_dim=16, mask_head_layers=2, detections_per_img=20))


def test_segmentation_stage_trains_instance_and_panoptic_heads(instance_root, tmp_path, tiny_widths):
    from twostream.engine.checkpoint import load_segmenter
    from twostream.engine.trainer import train

    out = tmp_path / "run"
    cfg = load_config(None, [
        f"data.root={instance_root}", "data.image_size=[64, 64]", "data.scenes.mode=all", "data.num_workers=0",
        "data.instances=true", "data.max_items=4", "data.augment.color_jitter=0",
        "model.segmenter.kind=upsnet", "model.segmenter.backbone=resnet10t", "model.segmenter.fpn_channels=16",
        "model.segmenter.head_channels=8", "model.segmenter.deformable=false",
        "model.segmenter.instance_head=true", "model.segmenter.panoptic_head=true",
        "train.stage=segmentation", "train.epochs=1", "train.batch_size=2", "train.lr=1e-3", "train.warmup_steps=1",
        "train.device=cpu", "train.amp=fp32", "train.log_every=1", "eval.batch_size=2",
        f"output.dir={out}", "output.tensorboard=false",
    ])

    # The stage's loss on one real batch: every head's loss is there and finite, and the total is their sum.
    task = SegmentationTask(cfg, DistInfo())
    loaders = task.build_loaders()
    model = task.build_model().train()
    seen: dict = {}
    model.register_forward_hook(lambda module, args, output: seen.update(output["losses"]))
    batch = task.to_device(next(iter(loaders.train)), torch.device("cpu"))
    assert len(batch["instances"]) == 2 and all(len(i["labels"]) for i in batch["instances"])
    loss, n = task.loss(model, batch)
    assert n == 2 and set(seen) == INSTANCE_LOSSES | {"loss_sem"}
    assert all(torch.isfinite(v) for v in seen.values())
    assert torch.allclose(loss, sum(seen.values()))
    assert seen["loss_classifier"] > 1.0 and seen["loss_mask"] > 0  # the batch's instances reached the heads

    metrics = train(cfg)  # 2 steps, then mIoU with the panoptic head in eval mode
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert 0.0 <= metrics["miou"] <= 1.0
    # validation also scores the panoptic output against the instance annotations (PQ)
    assert metrics["panoptic"]["num_images"] == metrics["num_images"] > 0
    assert 0.0 <= metrics["pq"] <= 1.0 and 0.0 <= metrics["rq"] <= 1.0
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert evals[-1]["pq"] == metrics["pq"]
    from twostream.engine.evaluate import evaluate_checkpoint

    scored = evaluate_checkpoint(out / "last.pth", out_dir=tmp_path / "eval")["segmentation"]
    assert scored["panoptic"]["num_images"] == scored["num_images"] and 0.0 <= scored["panoptic"]["pq"] <= 1.0

    segmenter = load_segmenter(out / "last.pth")
    assert not segmenter.training and segmenter.panoptic_head is not None
    with torch.no_grad():
        result = segmenter(torch.rand(2, 3, 64, 64))
    assert len(result["panoptic"]) == 2
    for pan, segments in result["panoptic"]:
        assert pan.shape == (64, 64) and pan.dtype == torch.int32
        assert set(pan.unique().tolist()) - {0} == {s["id"] for s in segments}
