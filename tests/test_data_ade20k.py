"""ADE20K reader: synthetic and real files through the real reader, the data contract, and every kind of bad input."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twostream.config import load_config
from twostream.data.ade20k import ADE20KDataset, build_datasets
from twostream.data.io import DataError, read_scene_categories
from twostream.data.synthetic import make_synthetic
from twostream.data.vocabulary import SceneVocabulary

ADE = Path(__file__).resolve().parents[2] / "shared" / "ade20k"
SAMPLE = ADE / "sample"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, train_per_scene=3, val_per_scene=2, size=64, seed=1)
    return root


@pytest.fixture
def broken(synthetic, tmp_path) -> Path:
    """A private copy of the synthetic set to break."""
    return Path(shutil.copytree(synthetic, tmp_path / "broken"))


def _config(root: Path, *opts: str):
    return load_config(None, [f"data.root={root}", "data.image_size=[64, 64]", *opts])


def test_synthetic_set_through_the_reader(synthetic):
    train, val, vocab = build_datasets(_config(synthetic, "data.scenes.mode=all"))
    assert len(train) == 24 and len(val) == 16 and len(vocab) == 8
    assert vocab.names == sorted(vocab.names)  # equal counts: ties broken by name
    scenes = read_scene_categories(synthetic / "sceneCategories.txt")
    for ds in (train, val):
        for i in range(0, len(ds), 5):
            item = ds[i]
            assert set(item) == {"image", "sem_seg", "scene", "name"}
            assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
            assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0
            assert item["sem_seg"].shape == (64, 64) and item["sem_seg"].dtype == torch.int64
            assert item["sem_seg"].min() >= 0 and item["sem_seg"].max() <= 150
            assert vocab.names[item["scene"]] == scenes[item["name"]]
    raw_image, raw_label = val.load(0)  # untransformed: exactly the files' pixels
    np.testing.assert_array_equal(raw_label, np.asarray(Image.open(synthetic / "annotations/validation" /
                                                                   f"{val.names[0]}.png")))
    assert raw_image.shape == (64, 64, 3) and raw_image.dtype == np.uint8
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=5)))  # the default collate works
    assert batch["image"].shape == (5, 3, 64, 64) and batch["scene"].shape == (5,) and len(batch["name"]) == 5


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real ADE20K sample absent: {SAMPLE}")
def test_original_labels_are_the_file_at_its_own_size(synthetic):
    _, val, _ = build_datasets(_config(synthetic, "data.scenes.mode=all", "data.image_size=[40, 48]"))
    assert "sem_seg_original" not in val[0]  # off unless evaluation asks
    val.keep_original_labels = True
    item = val[3]
    assert item["sem_seg"].shape == (40, 48)
    original = np.asarray(Image.open(synthetic / "annotations/validation" / f"{item['name']}.png"))
    assert item["sem_seg_original"].dtype == torch.int64 and item["sem_seg_original"].shape == (64, 64)
    np.testing.assert_array_equal(item["sem_seg_original"].numpy(), original)


def test_real_sample_pair():
    ds = ADE20KDataset(SAMPLE, "validation", SceneVocabulary(["abbey"]))
    assert ds.names == ["ADE_val_00000001", "ADE_val_00000002"]
    sizes = []
    for i in range(2):
        item = ds[i]
        sizes.append(tuple(item["sem_seg"].shape))
        assert item["image"].shape[1:] == item["sem_seg"].shape
        assert int(item["sem_seg"].max()) <= 150 and item["scene"] == 0
    assert sizes == [(512, 683), (364, 500)]  # (H, W): 683x512 and 500x364
    assert sorted(ds[0]["sem_seg"].unique().tolist()) == [0, 1, 2, 3, 5, 7, 10, 18]
    unlabelled = ADE20KDataset(SAMPLE, "validation", None)  # no vocabulary: every image, scene -1
    assert [unlabelled[i]["scene"] for i in range(2)] == [-1, -1]


def test_vocabulary_drop_other_and_max_items(synthetic):
    train, _, vocab = build_datasets(_config(synthetic, "data.scenes.mode=list",
                                             "data.scenes.names=[street, bedroom]"))
    assert vocab.names == ["street", "bedroom"] and len(train) == 6 and train.dropped == 18
    assert {train[i]["scene"] for i in range(len(train))} == {0, 1}
    train, _, vocab = build_datasets(_config(synthetic, "data.scenes.mode=list", "data.scenes.names=[street]",
                                             "data.scenes.unlisted=other", "data.max_items=10"))
    assert vocab.names == ["street", "other"] and len(train) == 10
    assert sorted(train.scenes) == [0] + [1] * 9  # round-robin files: the first 10 hold one street image


def test_ignore_label_255_is_allowed(broken):
    name = "ADE_train_00000001"
    label = np.asarray(Image.open(broken / "annotations/training" / f"{name}.png")).copy()
    label[:4] = 255
    Image.fromarray(label).save(broken / "annotations/training" / f"{name}.png")
    ds = ADE20KDataset(broken, "training", None, skip_bad=False)
    assert (ds[0]["sem_seg"][:4] == 255).all() and ds.skipped == 0


# ------------------------------------------------------------------------------------------------------- bad input


def test_missing_folders_and_files(tmp_path, broken):
    with pytest.raises(DataError, match="dataset folder not found"):
        ADE20KDataset(tmp_path / "nowhere", "training", None)
    with pytest.raises(DataError, match=r"images/test: folder not found \(found splits: training, validation\)"):
        ADE20KDataset(broken, "test", None)
    shutil.rmtree(broken / "annotations" / "validation")
    with pytest.raises(DataError, match=r"annotations/validation: folder not found"):
        ADE20KDataset(broken, "validation", None)
    (broken / "sceneCategories.txt").unlink()
    ADE20KDataset(broken, "training", None)  # scenes are optional without a vocabulary
    with pytest.raises(DataError, match=r"sceneCategories\.txt: scene-label file not found"):
        ADE20KDataset(broken, "training", SceneVocabulary(["street"]))


def test_image_without_annotation(broken, caplog):
    orphan = broken / "annotations/training/ADE_train_00000005.png"
    orphan.unlink()
    with caplog.at_level(logging.WARNING):
        ds = ADE20KDataset(broken, "training", None)
    assert len(ds) == 23 and "ADE_train_00000005" not in ds.names
    assert "images/training/ADE_train_00000005.jpg: image has no annotation (left out)" in caplog.text
    with pytest.raises(DataError, match=r"ADE_train_00000005.jpg: image has no annotation \(1 incomplete"):
        ADE20KDataset(broken, "training", None, skip_bad=False)


def _break(broken: Path, how: str) -> str:
    """Break item 2 of the training split (ADE_train_00000003) one way; return the expected message part."""
    name = "ADE_train_00000003"
    ann = broken / "annotations/training" / f"{name}.png"
    img = broken / "images/training" / f"{name}.jpg"
    if how == "size":
        Image.fromarray(np.zeros((32, 48), np.uint8)).save(ann)
        return f"{name}.png: annotation is 48x32 but its image {name}.jpg is 64x64"
    if how == "label":
        label = np.asarray(Image.open(ann)).copy()
        label[0, 0], label[5, 5] = 200, 151
        Image.fromarray(label).save(ann)
        return f"{name}.png: label value(s) 151, 200 outside 0..150"
    if how == "truncated":
        data = img.read_bytes()
        img.write_bytes(data[: len(data) * 2 // 3])
        return f"{name}.jpg: image is truncated or corrupt"
    if how == "not-an-image":
        img.write_text("<html>404</html>")
        return f"{name}.jpg: image is not an image PIL can read"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["size", "label", "truncated", "not-an-image"])
def test_bad_item_is_skipped_logged_and_counted(broken, caplog, how):
    expected = _break(broken, how)
    ds = ADE20KDataset(broken, "training", None, skip_bad=True)
    with caplog.at_level(logging.WARNING):
        item = ds[2]
    assert item["name"] == "ADE_train_00000004"  # replaced by the next good item; the batch keeps its size
    assert ds.skipped == 1 and expected in ds.bad[2] and expected in caplog.text
    ds[2]
    assert ds.skipped == 1  # a known bad item is not read (nor logged) again
    strict = ADE20KDataset(broken, "training", None, skip_bad=False)
    with pytest.raises(DataError) as e:
        strict[2]
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_scene_line_for_unknown_image_is_named(broken, caplog):
    with (broken / "sceneCategories.txt").open("a") as f:
        f.write("ADE_train_00099999 bedroom\n")
    with caplog.at_level(logging.WARNING):
        train, _, _ = build_datasets(_config(broken, "data.scenes.mode=all"))
    assert "line for ADE_train_00099999 names no image in training/validation" in caplog.text
    assert len(train) == 24


def test_image_without_scene_line_is_left_out_with_a_vocabulary(broken, caplog):
    lines = (broken / "sceneCategories.txt").read_text().splitlines()
    (broken / "sceneCategories.txt").write_text("\n".join(line for line in lines if "ADE_train_00000002" not in line))
    with caplog.at_level(logging.WARNING):
        ds = ADE20KDataset(broken, "training", SceneVocabulary(["kitchen", "street"]))
    assert "ADE_train_00000002" not in ds.names and ds.unlabelled[0].endswith("ADE_train_00000002.jpg")
    assert "ADE_train_00000002.jpg: image has no line in" in caplog.text


def test_a_wholly_broken_split_fails_instead_of_looping(broken):
    for p in (broken / "images/validation").iterdir():
        p.write_bytes(b"")
    ds = ADE20KDataset(broken, "validation", None)
    with pytest.raises(DataError, match=r"consecutive items from index 0 are unreadable; run "
                                        r"tools/prepare_ade20k\.py --check"):
        ds[0]
