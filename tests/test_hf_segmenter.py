"""Hugging Face segmenters: SegFormer, UperNet and Mask2Former built tiny from their configs, saved with
``save_pretrained`` and loaded back by path through the same code a hub name takes; label alignment on real ADE20K
names (checkpoint channel i = project label i + 1); a COCO-labelled model keeps its own table; bad inputs."""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twostream.config import SegmenterConfig
from twostream.data.classes import IGNORE_INDEX, ade20k150
from twostream.models.label_alignment import LOW_LOGIT, align_labels, match_names
from twostream.models.segmenter import build_segmenter

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install 'twostream[hf]')")

from twostream.models.hf_segmenter import (  # noqa: E402  (after the skip: needs transformers)
    HFSegmenter,
    hf_segmenter_from_pretrained,
    mask_classification_scores,
    preprocessor_from_hf,
)

ADE_DIR = Path(__file__).resolve().parents[2] / "shared" / "ade20k"

# id2label of every ADE20K checkpoint on the hub (huggingface/label-files ade20k-id2label.json): 0 = wall.
HF_ADE20K_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# COCO panoptic (133 classes, as Mask2Former COCO checkpoints name them).
COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "banner",
    "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood", "flower", "fruit", "gravel",
    "house", "light", "mirror-stuff", "net", "pillow", "platform", "playingfield", "railroad", "river", "road",
    "roof", "sand", "sea", "shelf", "snow", "stairs", "tent", "towel", "wall-brick", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "window-blind", "window-other", "tree-merged", "fence-merged", "ceiling-merged",
    "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged", "pavement-merged", "mountain-merged",
    "grass-merged", "dirt-merged", "paper-merged", "food-other-merged", "building-other-merged", "rock-merged",
    "wall-other-merged", "rug-merged",
)
assert len(HF_ADE20K_NAMES) == 150 and len(COCO_NAMES) == 133


def _objectinfo150() -> dict[str, list[str]]:
    """The real class names in the two spellings of ADE20K's objectInfo150 files: ``.csv`` joins every word with ``;``
    (``chest;of;drawers;chest;...``), ``.txt`` separates synonyms with ``, ``. Derived from the package's own copy of
    the table, so these tests run on a fresh clone; tests/test_classes.py checks that the derivation reproduces the real
    files (../shared/ade20k) exactly."""
    names = ade20k150().names[1:]
    return {"csv": [n.replace(" ", ";") for n in names], "txt": [n.replace(";", ", ") for n in names]}


def _labels(names) -> dict:
    id2label = dict(enumerate(names))
    return {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


def _save_segformer(folder: Path, names, processor_size: int = 64) -> Path:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    config = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 16, 32], num_attention_heads=[1, 1, 2, 2],
                             decoder_hidden_size=32, **_labels(names))
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": processor_size, "width": processor_size}).save_pretrained(folder)
    return folder


def _save_upernet(folder: Path, names) -> Path:
    from transformers import ConvNextConfig, SegformerImageProcessor, UperNetConfig, UperNetForSemanticSegmentation

    torch.manual_seed(0)
    backbone = ConvNextConfig(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_in_channels=16, auxiliary_channels=8,
                           **_labels(names))
    UperNetForSemanticSegmentation(config).save_pretrained(folder)
    # openmmlab/upernet-* ship a SegformerImageProcessor (512 x 512, ImageNet mean/std)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def _save_mask2former(folder: Path, names) -> Path:
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    backbone = SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    # widths are multiples of 32: the pixel decoder uses GroupNorm(32, .)
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=32, dim_feedforward=32, encoder_layers=1, decoder_layers=2,
                               num_attention_heads=2, num_queries=10, **_labels(names))
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, do_reduce_labels=True,
                              ignore_index=255).save_pretrained(folder)
    return folder


SAVERS = {"segformer": _save_segformer, "upernet": _save_upernet, "mask2former": _save_mask2former}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Each architecture saved with the hub's ADE20K names, plus a COCO-labelled SegFormer."""
    root = tmp_path_factory.mktemp("hf")
    folders = {arch: save(root / arch, HF_ADE20K_NAMES) for arch, save in SAVERS.items()}
    folders["segformer_coco"] = _save_segformer(root / "segformer_coco", COCO_NAMES)
    return folders


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Two real photographs (skimage.data) as a (2, 3, 64, 80) batch in [0, 1]."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    images = [torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None] / 255
              for img in (data.astronaut(), data.coffee())]
    return torch.cat([F.interpolate(x, size=(64, 80), mode="bilinear", antialias=True) for x in images])


# ---- label alignment on real ADE20K names ----------------------------------------------------------------------------


NAME_SETS = ["hub id2label", "objectInfo150.txt", "objectInfo150.txt first names", "objectInfo150.csv"]


def _name_set(source: str) -> list[str]:
    if source == "hub id2label":
        return list(HF_ADE20K_NAMES)
    real = _objectinfo150()
    if source == "objectInfo150.txt first names":
        return [n.split(",")[0] for n in real["txt"]]
    return real["txt"] if source == "objectInfo150.txt" else real["csv"]


@pytest.mark.parametrize("source", NAME_SETS)
def test_ade_names_map_to_label_plus_one(source):
    mapping = match_names(_name_set(source), ade20k150())
    assert mapping == list(range(1, 151))  # every one of the 150: checkpoint channel i -> project label i + 1


@pytest.mark.parametrize("source", NAME_SETS)
def test_ade_names_match_by_name_not_position(source):
    names, table = _name_set(source), ade20k150()
    order = np.random.default_rng(0).permutation(150)
    assert match_names([names[i] for i in order], table) == [int(i) + 1 for i in order]


def test_names_a_synonym_lookup_would_confuse():
    table = ade20k150()
    mapping = match_names(HF_ADE20K_NAMES, table)
    for name, label in [("wall", 1), ("building", 2), ("screen door", 59), ("screen", 131), ("crt screen", 142),
                        ("stool", 111), ("pot", 126), ("television receiver", 90), ("chest of drawers", 45)]:
        assert mapping[HF_ADE20K_NAMES.index(name)] == label, name
        assert name in table.names[label].split(";")  # one of the project's own names for it


def test_aligned_logits_shift_by_one_and_other_is_low():
    alignment = align_labels(HF_ADE20K_NAMES, ade20k150(), table_name="hf:test")
    assert alignment.aligned and alignment.unmatched == () and alignment.table is ade20k150()
    logits = torch.randn(2, 150, 3, 4)
    out = alignment.to_table(logits)
    assert out.shape == (2, 151, 3, 4)
    assert torch.equal(out[:, 1:], logits)
    assert torch.all(out[:, 0] == LOW_LOGIT)
    assert torch.equal(out.argmax(1), logits.argmax(1) + 1)
    target = torch.tensor([[[0, 1, 150, IGNORE_INDEX]]])
    assert alignment.table_targets(target).tolist() == [[[IGNORE_INDEX, 1, 150, IGNORE_INDEX]]]  # 'other': no loss


def test_unmatched_names_fold_into_other_and_are_logged(caplog):
    names = list(HF_ADE20K_NAMES)
    names[0], names[5] = "zzz unknown", "qqq mystery"  # wall and ceiling lose their names
    with caplog.at_level(logging.WARNING):
        alignment = align_labels(names, ade20k150(), table_name="hf:partial")
    assert alignment.aligned and alignment.unmatched == ("zzz unknown", "qqq mystery")
    assert "zzz unknown" in caplog.text and "qqq mystery" in caplog.text
    logits = torch.randn(1, 150, 2, 2)
    out = alignment.to_table(logits)
    assert torch.allclose(out[:, 0], torch.logsumexp(logits[:, [0, 5]], dim=1))  # their mass is 'other'
    assert torch.all(out[:, 1] == LOW_LOGIT) and torch.all(out[:, 6] == LOW_LOGIT)  # wall, ceiling: no source
    assert torch.equal(out[:, 2], logits[:, 1])
    assert alignment.table_targets(torch.tensor([[[0, 1, 2, 6]]])).tolist() == [[[IGNORE_INDEX, IGNORE_INDEX, 2,
                                                                                 IGNORE_INDEX]]]
    probs = torch.rand(3, 150)
    table_probs = alignment.to_table_probs(probs)  # Mask2Former maps class probabilities: folded ones add up
    assert torch.allclose(table_probs[:, 0], probs[:, [0, 5]].sum(1)) and torch.all(table_probs[:, [1, 6]] == 0)
    assert torch.equal(table_probs[:, 2], probs[:, 1])


def test_coco_names_keep_their_own_table(caplog):
    with caplog.at_level(logging.INFO):
        alignment = align_labels(COCO_NAMES, ade20k150(), table_name="hf:coco")
    assert not alignment.aligned and alignment.matched_fraction < 0.9
    table = alignment.table
    assert table.names == ("other", *COCO_NAMES) and table.background == 0 and table.name == "hf:coco"
    assert alignment.mapping == tuple(range(1, 134))
    assert table.stuff[COCO_NAMES.index("sea") + 1] and not table.stuff[COCO_NAMES.index("person") + 1]
    assert len({tuple(c) for c in table.palette.tolist()}) > 100  # a generated, mostly distinct palette
    assert "giraffe" in caplog.text and "own table" in caplog.text


# ---- preprocessing: the processor's own settings as tensor ops ----------------------------------------------------


@pytest.mark.parametrize("arch", ["segformer", "mask2former"])
def test_preprocessing_matches_the_image_processor(saved, arch):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(saved[arch])
    preprocess = preprocessor_from_hf(processor)
    rng = np.random.default_rng(0)
    for h, w in [(50, 70), (120, 40), (64, 64)]:
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        expected = processor(images=[image], return_tensors="pt")["pixel_values"]
        got = preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
        assert got.shape == expected.shape, (h, w)
        # the processor resizes uint8 pixels (rounding to 1/255); normalised by std ~0.225 that is < 0.02
        assert torch.allclose(got, expected, atol=0.03), (h, w, (got - expected).abs().max())


# ---- each architecture from a saved folder ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["segformer", "upernet", "mask2former"])
def test_segmenter_from_saved_folder(saved, photos, arch):
    segmenter = build_segmenter(SegmenterConfig(kind="hf", hf_model=str(saved[arch])), ade20k150())
    assert isinstance(segmenter, HFSegmenter) and segmenter.class_table is ade20k150()
    out = segmenter(photos)
    assert out["sem_logits"].shape == (2, 151, 64, 80) and torch.isfinite(out["sem_logits"]).all()
    assert out["features"].shape[0] == 2 and out["features"].shape[-2:] == (16, 20)
    # the declared width is the returned one where the architecture's classifier tells it (mask models: unknown)
    assert segmenter.feature_dim == (None if arch == "mask2former" else out["features"].shape[1])
    labels = segmenter.predict(photos)
    assert labels.shape == (2, 64, 80) and labels.dtype == torch.int64
    assert int(labels.min()) >= 1 and int(labels.max()) <= 150  # an ADE checkpoint never predicts 'other'
    assert not any(p.requires_grad for p in segmenter.parameters())  # frozen by default
    segmenter.train()
    assert not segmenter.model.training


def test_semantic_postprocess_agrees_with_transformers(saved, photos):
    segmenter = hf_segmenter_from_pretrained(str(saved["segformer"]))
    with torch.no_grad():
        outputs = segmenter.model(pixel_values=segmenter.preprocess(photos))
    processor = transformers.AutoImageProcessor.from_pretrained(saved["segformer"])
    theirs = torch.stack(processor.post_process_semantic_segmentation(outputs, target_sizes=[(64, 80)] * 2))
    assert torch.equal(segmenter.predict(photos), theirs + 1)


def test_mask_classification_scores_agree_with_transformers(saved, photos):
    processor = transformers.AutoImageProcessor.from_pretrained(saved["mask2former"])
    if "return_segmentation_scores" not in inspect.signature(processor.post_process_semantic_segmentation).parameters:
        pytest.skip(f"transformers {transformers.__version__} post-processing returns no scores to compare")
    segmenter = hf_segmenter_from_pretrained(str(saved["mask2former"]))
    with torch.no_grad():
        outputs = segmenter.model(pixel_values=segmenter.preprocess(photos[:1]))
    # at 384 x 384 transformers' two resizes (to 384, then to the target) are one: the scores must agree
    theirs = processor.post_process_semantic_segmentation(outputs, target_sizes=[(384, 384)],
                                                          return_segmentation_scores=True)[0]
    ours = mask_classification_scores(outputs.class_queries_logits, outputs.masks_queries_logits, (384, 384))[0]
    assert torch.allclose(ours, theirs["segmentation_scores"], atol=1e-5)
    assert torch.equal(ours.argmax(0), theirs["segmentation"])


def test_trainable_segmenter_returns_ce_loss_and_gradients(saved, photos):
    segmenter = hf_segmenter_from_pretrained(str(saved["segformer"]), trainable=True)
    target = torch.randint(0, 151, (2, 64, 80))
    target[:, :4] = IGNORE_INDEX
    segmenter.eval()  # no dropout, so the loss can be checked against an independent cross-entropy
    out = segmenter(photos, {"sem_seg": target})
    with torch.no_grad():
        logits = F.interpolate(segmenter.model(pixel_values=segmenter.preprocess(photos)).logits, size=(64, 80),
                               mode="bilinear", align_corners=False)
    # in the checkpoint's channels: label l -> channel l - 1; 'other' (0) and 255 unsupervised
    shifted = torch.where((target == 0) | (target == IGNORE_INDEX), IGNORE_INDEX, target - 1)
    expected = F.cross_entropy(logits, shifted, ignore_index=IGNORE_INDEX)
    assert torch.allclose(out["losses"]["loss_sem"], expected, atol=1e-5)
    out["losses"]["loss_sem"].backward()
    assert all(p.grad is not None for p in segmenter.parameters())  # every parameter is fine-tuned
    segmenter.train()
    assert segmenter.model.training
    frozen = hf_segmenter_from_pretrained(str(saved["segformer"]))
    assert "losses" not in frozen(photos, {"sem_seg": target})


# ---- a COCO-labelled checkpoint: its own names reach the scene graph -------------------------------------------------


def test_coco_checkpoint_names_reach_the_scene_graph(saved, photos):
    segmenter = build_segmenter(SegmenterConfig(kind="hf", hf_model=str(saved["segformer_coco"])), ade20k150())
    table = segmenter.class_table
    assert table.names == ("other", *COCO_NAMES)
    labels = segmenter.predict(photos)
    assert labels.shape == (2, 64, 80) and int(labels.min()) >= 1 and int(labels.max()) <= 133
    try:
        from twostream.graph.builder import SceneGraphBuilder
    except ImportError:
        pytest.skip("twostream.graph.builder is not there yet")
    graph = SceneGraphBuilder(class_table=table)(labels[0])
    present = sorted(set(labels[0].unique().tolist()))
    assert graph.labels.tolist() == present and graph.class_table is table
    if hasattr(graph, "to_json"):
        doc = graph.to_json()
        assert [n["name"] for n in doc["nodes"]] == [COCO_NAMES[label - 1] for label in present]
        assert doc["class_table"]["names"][1:] == list(COCO_NAMES)  # the own table travels inside the JSON


# ---- bad inputs ------------------------------------------------------------------------------------------------------


def test_unreachable_hub_name_says_weights_download_on_first_use(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as offline here, without retries
    with pytest.raises(OSError, match="nvidia/segformer-b0-finetuned-ade-512-512") as info:
        hf_segmenter_from_pretrained("nvidia/segformer-b0-finetuned-ade-512-512")
    message = str(info.value)
    assert "\n" not in message and "download on first use" in message and "HF_HUB_OFFLINE" in message


def test_classification_checkpoint_is_refused(tmp_path):
    from transformers import SegformerConfig, SegformerForImageClassification, SegformerImageProcessor

    config = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 16, 32], num_attention_heads=[1, 1, 2, 2])
    SegformerForImageClassification(config).save_pretrained(tmp_path / "mit")
    SegformerImageProcessor().save_pretrained(tmp_path / "mit")
    with pytest.raises(ValueError, match=r"not a segmentation checkpoint; supported architectures: .*segformer"):
        hf_segmenter_from_pretrained(str(tmp_path / "mit"))


def test_bad_names_and_folders(tmp_path, saved):
    with pytest.raises(ValueError, match="hf_model is empty"):
        build_segmenter(SegmenterConfig(kind="hf"), ade20k150())
    with pytest.raises(ValueError, match="does not exist"):
        hf_segmenter_from_pretrained(str(tmp_path / "no" / "such" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"has no config\.json"):
        hf_segmenter_from_pretrained(str(tmp_path / "empty"))
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((saved["segformer"] / name).read_bytes())
    with pytest.raises(ValueError, match="image processor"):
        hf_segmenter_from_pretrained(str(bare))
    segmenter = hf_segmenter_from_pretrained(str(saved["segformer"]))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        segmenter(torch.rand(3, 64, 64))


def test_missing_transformers_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'twostream\[hf\]'"):
        hf_segmenter_from_pretrained("nvidia/segformer-b0-finetuned-ade-512-512")


# ---- segmentation evaluation: the same code for any segmenter --------------------------------------------------------


def test_evaluate_segmenter_on_real_ade20k_pairs(saved):
    from PIL import Image

    from twostream.engine.evaluators import evaluate_segmenter

    sample = ADE_DIR / "sample"
    if not (sample / "annotations" / "validation").is_dir():
        pytest.skip(f"real ADE20K sample pairs not found at {sample}")
    images, targets = [], []
    for ann in sorted((sample / "annotations" / "validation").glob("*.png")):
        image = Image.open(sample / "images" / "validation" / f"{ann.stem}.jpg").convert("RGB").resize((128, 96))
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
        targets.append(torch.from_numpy(np.array(Image.open(ann).resize((128, 96), Image.NEAREST))).long())
    batch = {"image": torch.stack(images), "sem_seg": torch.stack(targets)}
    segmenter = hf_segmenter_from_pretrained(str(saved["segformer"]))
    metrics = evaluate_segmenter(segmenter, [batch], ade20k150())
    # independently: pixels annotated 1..150 are scored; accuracy = share predicted right
    pred, gt = segmenter.predict(batch["image"]), batch["sem_seg"]
    scored = (gt != 0) & (gt != IGNORE_INDEX)
    assert metrics["num_images"] == 2 and int(scored.sum()) > 0
    assert metrics["pixel_accuracy"] == pytest.approx(float((pred == gt)[scored].float().mean()), abs=1e-6)
    present = sorted(set(gt[scored].tolist()) | set(pred[scored].tolist()))
    ious = [float(((pred == c) & (gt == c) & scored).sum() / (((pred == c) | (gt == c)) & scored).sum())
            for c in present]
    assert metrics["miou"] == pytest.approx(float(np.mean(ious)), abs=1e-6)
