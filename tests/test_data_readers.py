"""The readers past ADEChallengeData2016, each on a tiny set written in its real layout: Places365-Standard (file
lists; a 1 M-line list opens without a stat per image), a folder per scene, full ADE20K 2021 (per-image JSON,
RGB-coded _seg.png, class table from the data, ADE20K-150 mapping); bad input named, skipped and counted; the
data.format dispatch in build_datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from twostream.config import load_config
from twostream.data.ade20k import build_datasets
from twostream.data.io import DataError
from twostream.data.vocabulary import SceneVocabulary

CATEGORIES = "/a/airfield 0\n/b/bedroom 1\n/a/apartment_building/outdoor 2\n"


def _jpg(path: Path, value: int, size: tuple[int, int] = (24, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def _places(root: Path) -> Path:
    (root).mkdir(parents=True)
    (root / "categories_places365.txt").write_text(CATEGORIES)
    train = ["/a/airfield/00000001.jpg 0", "/a/airfield/00000002.jpg 0", "/b/bedroom/00000001.jpg 1",
             "/a/apartment_building/outdoor/00000001.jpg 2", "/b/bedroom/00000002.jpg 7",  # no such class
             "/b/bedroom/00000003.jpg 1"]  # listed, but the image is missing
    (root / "places365_train_standard.txt").write_text("\n".join(train) + "\n")
    (root / "places365_val.txt").write_text("Places365_val_00000001.jpg 1\nPlaces365_val_00000002.jpg 0\n")
    for i, line in enumerate(train[:5]):
        _jpg(root / "data_256" / line.split()[0].lstrip("/"), 40 * i)
    for name in ("Places365_val_00000001.jpg", "Places365_val_00000002.jpg"):
        _jpg(root / "val_256" / name, 100)
    return root


def test_places365_reader(tmp_path, caplog):
    from twostream.data.places365 import Places365Dataset

    root = _places(tmp_path / "places")
    every = Places365Dataset(root, "training", None)
    assert every.bad_lines == 1 and "places365_train_standard.txt:5" in caplog.text  # class 7: named, left out
    assert every.names == ["a/airfield/00000001", "a/airfield/00000002", "b/bedroom/00000001",
                           "a/apartment_building/outdoor/00000001", "b/bedroom/00000003"]
    assert every.scene_names["b/bedroom/00000001"] == "bedroom"
    assert every.raw_scenes() == ["airfield", "airfield", "bedroom", "apartment_building/outdoor", "bedroom"]
    vocab = SceneVocabulary.from_names(["airfield", "bedroom"])
    ds = every.with_vocabulary(vocab)
    assert len(ds) == 4 and ds.scenes == [0, 0, 1, 1] and ds.dropped == 1
    item = ds[0]
    assert set(item) == {"image", "scene", "name"} and item["image"].shape == (3, 24, 32)
    assert item["image"].dtype == torch.float32 and item["name"] == "a/airfield/00000001"
    missing = ds[3]  # b/bedroom/00000003.jpg does not exist: named, counted, replaced by the next good item
    assert ds.skipped == 1 and missing["name"] == "a/airfield/00000001" and "00000003.jpg: image not found" in \
        caplog.text
    val = Places365Dataset(root, "validation", vocab)
    assert val.names == ["Places365_val_00000001", "Places365_val_00000002"] and val.scenes == [1, 0]
    with pytest.raises(DataError, match=r"places365_train_standard.txt:5: class index outside 0..2"):
        Places365Dataset(root, "training", None, skip_bad=False)
    with pytest.raises(DataError, match="unknown split 'test'"):
        Places365Dataset(root, "test", None)


def test_places365_opens_a_million_line_list_without_a_stat_per_image(tmp_path, monkeypatch):
    from twostream.data.places365 import Places365Dataset

    root = tmp_path / "places"
    (root / "data_256").mkdir(parents=True)
    (root / "categories_places365.txt").write_text(CATEGORIES)
    lines = b"\n".join(b"/a/airfield/%08d.jpg %d" % (i, i % 3) for i in range(1_000_000))
    (root / "places365_train_standard.txt").write_bytes(lines + b"\n")
    calls = {"stat": 0}
    real_stat = os.stat

    def counting_stat(*args, **kwargs):
        calls["stat"] += 1
        return real_stat(*args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    ds = Places365Dataset(root, "training", None)
    assert len(ds) == 1_000_000 and calls["stat"] < 10  # the folders, not the images
    assert ds.names[-1] == "a/airfield/00999999" and ds.raw_scenes()[:3] == ["airfield", "bedroom",
                                                                             "apartment_building/outdoor"]


def test_scene_folder_reader(tmp_path):
    from twostream.data.folder import SceneFolderDataset

    for rel, value in (("train/kitchen/a.jpg", 10), ("train/kitchen/b.JPG", 20), ("train/street/c.png", 30),
                       ("val/street/d.jpg", 40)):
        _jpg(tmp_path / rel, value)
    (tmp_path / "train" / "street" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "street" / ".hidden.jpg").write_bytes(b"")
    ds = SceneFolderDataset(tmp_path, "train", SceneVocabulary.from_names(["street", "kitchen"]))
    assert ds.names == ["kitchen/a", "kitchen/b", "street/c"] and ds.scenes == [1, 1, 0]
    assert ds[2]["name"] == "street/c" and ds[2]["image"].shape == (3, 24, 32)
    with pytest.raises(DataError, match=r"folder not found .*found: train, val"):
        SceneFolderDataset(tmp_path, "test", None)
    cfg = load_config(None, [f"data.root={tmp_path}", "data.format=folder", "data.train_split=train",
                             "data.val_split=val", "data.scenes.mode=all", "graph.source=pred",
                             "model.segmenter.kind=hf", "model.segmenter.hf_model=x", "data.image_size=[32, 32]"])
    train, val, vocab = build_datasets(cfg)
    assert vocab.names == ["kitchen", "street"] and len(train) == 3 and val.scenes == [1]
    with pytest.raises(Exception, match="no label maps, so there are no ground-truth graphs"):
        load_config(None, ["data.format=folder", "graph.source=gt"])


# --------------------------------------------------------------------------------------------------------------------
# Full ADE20K
# --------------------------------------------------------------------------------------------------------------------

CLASSES = {2978: "wall", 312: "building, edifice", 1831: "person, individual, someone, somebody, mortal, soul",
           2855: "tree", 1279: "housing"}  # housing: a part (part_level 1) of the building


def _seg_png(path: Path, classes: np.ndarray) -> None:
    rgb = np.zeros((*classes.shape, 3), np.uint8)
    rgb[..., 0] = classes // 256 * 10
    rgb[..., 1] = classes % 256
    rgb[..., 2] = 1
    Image.fromarray(rgb).save(path)


def _ade_image(split_dir: Path, rel: str, stem: str, classes: np.ndarray, scene: list[str] | None,
               bad_ndx: bool = False) -> None:
    folder = split_dir / rel
    folder.mkdir(parents=True, exist_ok=True)
    _jpg(folder / f"{stem}.jpg", 90, classes.shape)
    _seg_png(folder / f"{stem}_seg.png", classes)
    (folder / stem).mkdir(exist_ok=True)  # the instance masks' folder: not an image folder
    _jpg(folder / stem / f"instance_000_{stem}.jpg", 255, classes.shape)
    present = sorted(set(classes.flat) - {0})
    objects = [{"id": i, "name": CLASSES[c], "name_ndx": int(c) if not bad_ndx else "oops",
                "parts": {"ispartof": [], "hasparts": [], "part_level": 0}} for i, c in enumerate(present)]
    objects.append({"id": len(objects), "name": "housing", "name_ndx": 1279,
                    "parts": {"ispartof": 0, "hasparts": [], "part_level": 1}})
    annotation = {"filename": f"{stem}.jpg", "imsize": [*classes.shape, 3], "object": objects}
    if scene is not None:
        annotation["scene"] = scene
    (folder / f"{stem}.json").write_text(json.dumps({"annotation": annotation}))


def _ade_full(root: Path) -> Path:
    base = root / "images" / "ADE"
    street = np.zeros((8, 12), np.int64)
    street[:4] = 312
    street[4:, :6] = 1831
    street[4:, 6:] = 2855
    room = np.full((8, 12), 2978)
    room[2:6, 3:9] = 1831
    _ade_image(base / "training", "urban/street", "ADE_train_00000001", street, ["outdoor", "urban", "street"])
    _ade_image(base / "training", "urban/street", "ADE_train_00000002", street[:, ::-1].copy(),
               ["outdoor", "urban", "street"])
    _ade_image(base / "training", "home/bedroom", "ADE_train_00000003", room, ["indoor", "home", "bedroom"])
    _ade_image(base / "training", "home/bedroom", "ADE_train_00000004", room, None)  # no scene
    _ade_image(base / "training", "home/bedroom", "ADE_train_00000005", room, ["indoor", "home", "bedroom"],
               bad_ndx=True)
    _jpg(base / "training" / "home" / "bedroom" / "ADE_train_00000006.jpg", 5)  # no json, no _seg.png
    _ade_image(base / "validation", "urban/street", "ADE_val_00000001", street, ["outdoor", "urban", "street"])
    return root


def test_ade20k_full_reader(tmp_path, caplog, monkeypatch):
    import twostream.data.ade20k_full as full
    from twostream.data.classes import ade20k150

    root = _ade_full(tmp_path / "ADE20K_2021_17_01")
    ds = full.ADE20KFullDataset(root, "training", None)
    assert ds.names == ["ADE_train_00000003", "ADE_train_00000001", "ADE_train_00000002"]  # folder order
    assert ds.bad_json == 2 and "no scene" in caplog.text and "unknown class index" in caplog.text
    assert "ADE_train_00000006.jpg: image without its .json or _seg.png" in caplog.text
    assert ds.raw_scenes() == ["bedroom", "street", "street"]
    table = ds.class_table
    assert table.name == "ade20k_full" and len(table) == 2979 and table.names[312] == "building;edifice"
    assert table.names[1279] == "housing" and table.names[5].startswith("unused_")  # parts are classes too
    item = ds[1]
    expected = np.zeros((8, 12), np.int64)
    expected[:4], expected[4:, :6], expected[4:, 6:] = 312, 1831, 2855
    assert set(item) == {"image", "sem_seg", "scene", "name"} and torch.equal(item["sem_seg"],
                                                                             torch.from_numpy(expected))
    # ADE20K-150 labels by synonym list: building;edifice = 2, person;... = 13, tree = 5, wall = 1
    mapped = full.ADE20KFullDataset(root, "training", None, labels="ade150")
    assert mapped.class_table == ade20k150()
    lut = np.zeros(2979, np.int64)
    lut[[312, 1831, 2855, 2978]] = [2, 13, 5, 1]
    assert torch.equal(mapped[1]["sem_seg"], torch.from_numpy(lut[expected]))
    mapped.keep_original_labels = True  # what evaluation asks for; without a transform it equals sem_seg
    assert torch.equal(mapped[1]["sem_seg_original"], torch.from_numpy(lut[expected]))
    label_map = tmp_path / "mapFromADE.txt"
    label_map.write_text("2\t312\n13 1831\n")
    only_two = full.ADE20KFullDataset(root, "training", None, labels="ade150", label_map=str(label_map))
    assert sorted(only_two[1]["sem_seg"].unique().tolist()) == [0, 2, 13]
    top = full.ADE20KFullDataset(root, "training", SceneVocabulary.from_names(["indoor", "outdoor"]), scene_level=0)
    assert top.scenes == [0, 1, 1]
    # the index is read once: a later open reads no JSON
    assert (root / "twostream_index.json").is_file()
    monkeypatch.setattr(full, "_read_annotation", lambda path: pytest.fail(f"{path} read again"))
    assert full.ADE20KFullDataset(root, "validation", None).names == ["ADE_val_00000001"]
    # a _seg.png class no JSON names: a bad item at load
    seg = root / "images/ADE/training/urban/street/ADE_train_00000002_seg.png"
    _seg_png(seg, np.full((8, 12), 7))
    with pytest.raises(DataError, match=r"_seg.png: class index\(es\) 7 used by no annotation JSON"):
        full.ADE20KFullDataset(root, "training", None).load(2)  # (skip_bad would replace the item and count it)


def test_ade20k_full_through_build_datasets_and_a_gt_store(tmp_path):
    from twostream.engine.graph_caches import build_split_caches

    root = _ade_full(tmp_path / "ADE20K_2021_17_01")
    cfg = load_config(None, [f"data.root={root}", "data.format=ade20k_full", "data.scenes.mode=all",
                             "data.image_size=[8, 12]", "data.num_workers=0", "graph.source=gt",
                             "model.segmenter.kind=none"])
    train, val, vocab = build_datasets(cfg)
    assert vocab.names == ["street", "bedroom"] and len(train) == 3 and len(val) == 1
    [store] = build_split_caches(cfg, source="gt", splits=["training"], progress=False)
    assert store.class_table.name == "ade20k_full" and store.scenes() == ["bedroom", "street", "street"]
    assert sorted(set(store.get("ADE_train_00000001").labels.tolist())) == [312, 1831, 2855]
