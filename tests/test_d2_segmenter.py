"""detectron2 segmenter: Panoptic FPN on the CPU without weights (tiny widths, ~128x160 input) gives a semantic map
and panoptic segments in its own COCO table; a semantic model with ADE20K names aligns to the project table; bad
inputs and a missing detectron2 give one-line errors."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twostream.config import SegmenterConfig, load_config
from twostream.data.classes import ade20k150
from twostream.models.label_alignment import LOW_LOGIT, match_names
from twostream.models.segmenter import build_segmenter

needs_d2 = pytest.mark.skipif(importlib.util.find_spec("detectron2") is None,
                              reason="detectron2 is not installed (pip install "
                                     "'git+https://github.com/facebookresearch/detectron2.git')")

PANOPTIC_FPN = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
# The same architecture at tiny widths (ResNet-18 stem widths, 32-channel FPN and heads), fed at input size.
TINY = ["INPUT.MIN_SIZE_TEST", "0", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST",
        "50", "TEST.DETECTIONS_PER_IMAGE", "10"]


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Two real photographs (skimage.data) as a (2, 3, 128, 160) batch in [0, 1]."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    images = [torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None] / 255
              for img in (data.chelsea(), data.coffee())]
    return torch.cat([F.interpolate(x, size=(128, 160), mode="bilinear", antialias=True) for x in images])


@needs_d2
def test_panoptic_fpn_semantic_map_and_segments(photos):
    from detectron2.data import MetadataCatalog

    from twostream.models.d2_segmenter import detectron2_segmenter_from_config

    torch.manual_seed(0)
    segmenter = detectron2_segmenter_from_config(PANOPTIC_FPN, "none", opts=TINY)
    meta = MetadataCatalog.get("coco_2017_val_panoptic_separated")
    table = segmenter.class_table
    assert table.names == ("other", *meta.thing_classes, *meta.stuff_classes[1:]) and len(table) == 134
    assert not table.stuff[1] and table.stuff[81]  # person is a thing, banner (first stuff) is stuff

    out = segmenter(photos)
    assert out["sem_logits"].shape == (2, 134, 128, 160) and torch.isfinite(out["sem_logits"]).all()
    labels = out["sem_logits"].argmax(1)

    # independently, from the raw detectron2 outputs: stuff channel c -> label 80 + c ('things' channel 0 ->
    # other), then every panoptic segment paints its class (thing t -> 1 + t, stuff c -> 80 + c)
    raw = segmenter.model([{"image": (photos[i] * 255).flip(0), "height": 128, "width": 160} for i in range(2)])
    for b, ((pmap, segments), r) in enumerate(zip(out["panoptic"], raw)):
        sem = r["sem_seg"].argmax(0)
        expected = torch.where(sem == 0, 0, 80 + sem)
        raw_map, raw_segments = r["panoptic_seg"]
        for seg in raw_segments:
            label = 1 + seg["category_id"] if seg["isthing"] else 80 + seg["category_id"]
            expected[raw_map == seg["id"]] = label
        assert torch.equal(labels[b], expected)
        assert pmap.dtype == torch.int32 and pmap.shape == (128, 160) and torch.equal(pmap, raw_map.int())
        assert len(segments) == len(raw_segments) >= 1
        for seg in segments:  # segments carry table labels, exact areas, and their pixels carry their class
            mask = pmap == seg["id"]
            assert seg["area"] == int(mask.sum()) and torch.all(labels[b][mask] == seg["category_id"])
            assert table.stuff[seg["category_id"]] == (not seg["isthing"])


@needs_d2
def test_semantic_model_with_ade_names_aligns(photos):
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    from twostream.models.d2_segmenter import detectron2_segmenter_from_config

    # detectron2's own ADE20K names ("rock, stone", "window ", "tub") -> project label i + 1, all 150
    assert match_names(ADE20K_SEM_SEG_CATEGORIES, ade20k150()) == list(range(1, 151))
    segmenter = detectron2_segmenter_from_config(
        "Misc/semantic_R_50_FPN_1x.yaml", "none",
        opts=[*TINY[:8], "DATASETS.TEST", "('ade20k_sem_seg_val',)", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "150",
              "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32"])
    assert segmenter.class_table is ade20k150()
    out = segmenter(photos[:1])
    assert "panoptic" not in out and out["sem_logits"].shape == (1, 151, 128, 160)
    assert torch.all(out["sem_logits"][:, 0] == LOW_LOGIT)
    raw = segmenter.model([{"image": (photos[0] * 255).flip(0), "height": 128, "width": 160}])[0]["sem_seg"]
    assert torch.equal(out["sem_logits"].argmax(1)[0], raw.argmax(0) + 1)


@needs_d2
def test_built_from_config_section_and_bad_inputs(tmp_path):
    cfg = SegmenterConfig(kind="detectron2", d2_config=PANOPTIC_FPN, d2_weights="none")
    segmenter = build_segmenter(cfg, ade20k150())  # the path tools take; the zoo's test-time resize is kept
    assert len(segmenter.class_table) == 134 and (segmenter.min_size, segmenter.max_size) == (800, 1333)
    assert segmenter.model_size(128, 160) == (800, 1000)
    segmenter.train()
    assert not segmenter.model.training  # stays frozen in eval mode
    # model.segmenter.d2_opts: detectron2's own overrides, numbers given as YAML numbers
    tuned = build_segmenter(load_config(None, [
        "model.segmenter.kind=detectron2", f"model.segmenter.d2_config={PANOPTIC_FPN}",
        "model.segmenter.d2_weights=none",
        "model.segmenter.d2_opts=[INPUT.MIN_SIZE_TEST, 512, "
        "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH, 0.9]",
    ]).model.segmenter, ade20k150())
    assert tuned.min_size == 512 and tuned.model.combine_instances_score_thresh == pytest.approx(0.9)
    with pytest.raises(ValueError, match=r"d2_opts: expected KEY, VALUE pairs .* got 1"):
        build_segmenter(SegmenterConfig(kind="detectron2", d2_config=PANOPTIC_FPN, d2_opts=["INPUT.MIN_SIZE_TEST"]),
                        ade20k150())

    from twostream.models.d2_segmenter import detectron2_segmenter_from_config

    with pytest.raises(ValueError, match="trainable=true is not supported"):
        build_segmenter(SegmenterConfig(kind="detectron2", d2_config=PANOPTIC_FPN, trainable=True), ade20k150())
    with pytest.raises(ValueError, match="neither a config file nor a detectron2 model-zoo config"):
        detectron2_segmenter_from_config("COCO-PanopticSegmentation/no_such_model.yaml", "none")
    with pytest.raises(ValueError, match="d2_config is empty"):
        detectron2_segmenter_from_config("", "none")
    with pytest.raises(ValueError, match="instances only"):
        detectron2_segmenter_from_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "none")
    with pytest.raises(ValueError, match="LazyConfig"):
        detectron2_segmenter_from_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py", "none")
    with pytest.raises(ValueError, match=r"weights file .* not found"):
        detectron2_segmenter_from_config(PANOPTIC_FPN, str(tmp_path / "missing.pkl"), opts=TINY)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        segmenter(torch.rand(3, 64, 64))


def test_missing_detectron2_names_the_install_command(monkeypatch):
    from twostream.models.d2_segmenter import detectron2_segmenter_from_config

    monkeypatch.setitem(sys.modules, "detectron2", None)  # import detectron2 -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'git\+https://github.com/facebookresearch/detectron2.git'"):
        detectron2_segmenter_from_config(PANOPTIC_FPN)
    with pytest.raises(ImportError, match="not on PyPI"):
        build_segmenter(SegmenterConfig(kind="detectron2", d2_config=PANOPTIC_FPN), ade20k150())
