"""parse_segmenter_spec: the --segmenter strings of the tools -> SegmenterConfig."""

from __future__ import annotations

import pytest

from twostream.config import SegmenterConfig
from twostream.models.segmenter import parse_segmenter_spec


@pytest.mark.parametrize("spec, fields", [
    ("hf:nvidia/segformer-b0-finetuned-ade-512-512",
     {"kind": "hf", "hf_model": "nvidia/segformer-b0-finetuned-ade-512-512"}),
    ("hf:/data/models/my-upernet", {"kind": "hf", "hf_model": "/data/models/my-upernet"}),
    ("detectron2:COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
     {"kind": "detectron2", "d2_config": "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", "d2_weights": ""}),
    ("detectron2:configs/pfpn.yaml@https://dl.fbaipublicfiles.com/x/model_final.pkl",
     {"kind": "detectron2", "d2_config": "configs/pfpn.yaml",
      "d2_weights": "https://dl.fbaipublicfiles.com/x/model_final.pkl"}),
    ("detectron2:configs/pfpn.yaml@none", {"kind": "detectron2", "d2_weights": "none"}),
    ("upsnet:runs/seg/best.pt", {"kind": "upsnet", "checkpoint": "runs/seg/best.pt"}),
    ("none", {"kind": "none"}),
])
def test_specs(spec, fields):
    cfg = parse_segmenter_spec(spec)
    for key, value in fields.items():
        assert getattr(cfg, key) == value, key


def test_other_fields_come_from_the_base():
    base = SegmenterConfig(trainable=True, backbone="swin_tiny_patch4_window7_224")
    cfg = parse_segmenter_spec("hf:openmmlab/upernet-swin-tiny", base)
    assert cfg.trainable and cfg.backbone == base.backbone and cfg.hf_model == "openmmlab/upernet-swin-tiny"
    assert base.kind == "upsnet"  # the base is not modified


@pytest.mark.parametrize("spec", ["segformer", "hf:", "torchhub:x", "detectron2", ""])
def test_bad_specs_list_the_forms(spec):
    with pytest.raises(ValueError, match=r"expected upsnet:CHECKPOINT, hf:NAME, detectron2:CONFIG\[@WEIGHTS\] or none"):
        parse_segmenter_spec(spec)
