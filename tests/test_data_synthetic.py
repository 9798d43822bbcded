"""Synthetic scenes: determinism, layout, scene-specific objects and spatial rules, relation-only pairs, instances."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twostream.data.classes import ade20k150
from twostream.data.synthetic import (
    RELATION_SCENES,
    SCENES,
    make_synthetic,
    read_instances,
    render_relation_pair,
    render_scene,
)

REPO = Path(__file__).resolve().parents[1]
T = ade20k150()


def cid(name: str) -> int:
    return {"chest of drawers": 45, "coffee table": 65, "swivel chair": 76}.get(name) or T.index(name)


def touching(label: np.ndarray) -> set[tuple[int, int]]:
    """Unordered class pairs with 4-neighbouring pixels (an independent, brute-force adjacency)."""
    pairs = set()
    for a, b in ((label[:, :-1], label[:, 1:]), (label[:-1], label[1:])):
        diff = a != b
        pairs |= {tuple(sorted(p)) for p in zip(a[diff].tolist(), b[diff].tolist())}
    return pairs


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    kw = {"train_per_scene": 2, "val_per_scene": 1, "size": 48, "instances": True}
    make_synthetic(tmp_path / "a", seed=3, workers=0, **kw)
    make_synthetic(tmp_path / "b", seed=3, workers=2, **kw)
    make_synthetic(tmp_path / "c", seed=4, workers=0, **kw)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(a) == 2 + 3 * 24 and a == b  # 24 images x (jpg, png, instance png) + scene file + synthetic.json
    differing = [k for k in a if k.endswith(".jpg") and a[k] != c[k]]
    assert len(differing) == 24  # another seed: every image differs


def test_layout_names_and_scene_file(tmp_path):
    meta = make_synthetic(tmp_path, train_per_scene=2, val_per_scene=1, size=(48, 64), seed=0)
    assert sorted(p.name for p in (tmp_path / "images/training").iterdir())[:2] == ["ADE_train_00000001.jpg",
                                                                                    "ADE_train_00000002.jpg"]
    assert len(list((tmp_path / "annotations/validation").glob("ADE_val_*.png"))) == 8
    lines = (tmp_path / "sceneCategories.txt").read_text().splitlines()
    assert lines[:2] == ["ADE_train_00000001 bedroom", "ADE_train_00000002 kitchen"]  # round-robin over scenes
    assert len(lines) == 24 and lines[-1].startswith("ADE_val_00000008 ")
    with Image.open(tmp_path / "images/training/ADE_train_00000001.jpg") as im:
        assert im.format == "JPEG" and im.size == (64, 48)
    with Image.open(tmp_path / "annotations/training/ADE_train_00000001.png") as im:
        assert im.mode == "L" and im.size == (64, 48)
    assert meta["counts"]["training"] == dict.fromkeys(SCENES, 2)
    again = make_synthetic(tmp_path, train_per_scene=2, val_per_scene=1, size=(48, 64), seed=0)
    assert again["seconds"] == 0.0  # the same set is already there: nothing is redrawn
    with pytest.raises(ValueError, match=r"other parameters \(seed\); pass --overwrite"):
        make_synthetic(tmp_path, train_per_scene=2, val_per_scene=1, size=(48, 64), seed=1)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "images").mkdir()
    with pytest.raises(ValueError, match="not a synthetic set"):
        make_synthetic(tmp_path / "real", overwrite=True)  # never clears a folder it did not write


def test_each_scene_has_its_own_objects_and_rules():
    signature = {"bedroom": "bed", "kitchen": "stove", "bathroom": "toilet", "living_room": "coffee table",
                 "dining_room": "chandelier", "office": "desk", "street": "building", "highway": "grass"}
    present = {s: set() for s in SCENES}
    for seed in range(6):
        for scene in SCENES:
            _, label, _ = render_scene(scene, seed, 64)
            present[scene] |= set(np.unique(label).tolist())
            ys = np.arange(64)[:, None].repeat(64, 1)
            mean_y = {c: ys[label == c].mean() for c in np.unique(label).tolist()}
            if scene == "street":  # sky above buildings above road
                assert mean_y[cid("sky")] < mean_y.get(cid("building"), mean_y.get(cid("skyscraper"))) < \
                    mean_y[cid("road")]
            if scene == "bedroom":  # floor below the bed; lamp on the chest of drawers beside the bed
                assert mean_y[cid("floor")] > mean_y[cid("bed")] > mean_y[cid("wall")]
                adj = touching(label)
                assert (cid("bed"), cid("chest of drawers")) in adj and (cid("lamp"), cid("chest of drawers")) in adj
            if scene == "dining_room":
                assert tuple(sorted((cid("chair"), cid("table")))) in touching(label)
    for scene, name in signature.items():
        others = set().union(*(present[s] for s in SCENES if s != scene))
        assert cid(name) in present[scene] and cid(name) not in others, f"{name} should mark {scene}"
    assert len(SCENES) >= 6


@pytest.mark.parametrize("seed", range(6))
def test_relation_only_scenes_differ_only_in_adjacency(seed):
    pair = render_relation_pair(seed, 96)
    (_, dining, _), (_, living, _) = pair["dining_room"], pair["living_room"]
    assert set(np.unique(dining)) == set(np.unique(living)) == {cid(n) for n in
                                                                ("wall", "ceiling", "floor", "painting", "table",
                                                                 "chair", "sofa")}
    np.testing.assert_array_equal(np.bincount(dining.ravel(), minlength=151),
                                  np.bincount(living.ravel(), minlength=151))  # same pixels per class
    chair_table = tuple(sorted((cid("chair"), cid("table"))))
    sofa_table = tuple(sorted((cid("sofa"), cid("table"))))
    assert touching(dining) ^ touching(living) == {chair_table, sofa_table}  # the only difference
    assert chair_table in touching(dining) and sofa_table in touching(living)


def test_relation_only_images_in_a_written_set(tmp_path):
    meta = make_synthetic(tmp_path, train_per_scene=8, val_per_scene=0, size=48, scenes=list(RELATION_SCENES),
                          relation_fraction=0.25)
    stored = json.loads((tmp_path / "synthetic.json").read_text())
    assert stored["relation_only"] == meta["relation_only"] and len(meta["relation_only"]) == 4  # 2 of 8 per scene
    sets = {frozenset(np.unique(np.asarray(Image.open(tmp_path / "annotations/training" / f"{s}.png"))).tolist())
            for s in meta["relation_only"]}
    assert len(sets) == 1


def test_instances_agree_with_the_semantic_map(tmp_path):
    make_synthetic(tmp_path, train_per_scene=1, val_per_scene=0, size=64, instances=True)
    stuff = np.asarray(T.stuff)
    for png in sorted((tmp_path / "annotations_instance/training").glob("*.png")):
        inst = read_instances(png)
        label = np.asarray(Image.open(tmp_path / "annotations/training" / png.name))
        m = len(inst["labels"])
        assert m > 0 and inst["masks"].shape == (m, 64, 64) and inst["boxes"].shape == (m, 4)
        assert not stuff[inst["labels"]].any()  # only "thing" classes have instances
        for k in range(m):
            assert (label[inst["masks"][k]] == inst["labels"][k]).all()
            ys, xs = np.nonzero(inst["masks"][k])
            np.testing.assert_array_equal(inst["boxes"][k], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        g = np.asarray(Image.open(png))[..., 1]
        assert sorted(np.unique(g[g > 0]).tolist()) == list(range(1, m + 1))  # indices 1..k, no gaps


def test_make_synthetic_tool(tmp_path):
    tool = runpy.run_path(str(REPO / "tools/make_synthetic.py"), run_name="tool")
    args = tool["get_args_parser"]().parse_args(["--out", str(tmp_path / "s"), "--train-per-scene", "1",
                                                 "--val-per-scene", "1", "--size", "40", "--seed", "2",
                                                 "--scenes", "street", "office"])
    tool["main"](args)
    assert (tmp_path / "s/sceneCategories.txt").read_text().split() == [
        "ADE_train_00000001", "street", "ADE_train_00000002", "office",
        "ADE_val_00000001", "street", "ADE_val_00000002", "office"]
    bad = tool["get_args_parser"]().parse_args(["--out", str(tmp_path / "t"), "--scenes", "moon_base"])
    with pytest.raises(SystemExit):
        tool["main"](bad)


def test_bad_parameters():
    with pytest.raises(ValueError, match="unknown scene 'moon_base'; choose from: bedroom, kitchen"):
        render_scene("moon_base")
    with pytest.raises(ValueError, match="has no relation-only variant"):
        render_scene("street", relation_only=True)
    with pytest.raises(ValueError, match="at least 32x32"):
        render_scene("street", size=16)
