"""Scene vocabulary on the real ADE20K scene distribution: modes, tie-breaking, other, JSON round trip, table."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from twostream.config import SceneVocabConfig
from twostream.data.io import read_scene_categories
from twostream.data.vocabulary import OTHER, SceneVocabulary, build_vocabulary

ADE = Path(__file__).resolve().parents[2] / "shared" / "ade20k"
SCENE_FILE = ADE / "sceneCategories.txt"
pytestmark = pytest.mark.skipif(not SCENE_FILE.is_file(), reason=f"real ADE20K reference files absent: {ADE}")

TOP10 = [("street", 2038), ("misc", 1516), ("bedroom", 1389), ("living_room", 697), ("bathroom", 671),
         ("kitchen", 661), ("dining_room", 412), ("skyscraper", 320), ("highway", 295), ("building_facade", 228)]


@pytest.fixture(scope="module")
def scenes() -> dict[str, str]:
    return read_scene_categories(SCENE_FILE)


@pytest.fixture(scope="module")
def train(scenes) -> list[str]:
    return [s for stem, s in scenes.items() if stem.startswith("ADE_train_")]


@pytest.fixture(scope="module")
def val(scenes) -> list[str]:
    return [s for stem, s in scenes.items() if stem.startswith("ADE_val_")]


def test_real_file_shape(scenes, train, val):
    assert len(scenes) == 22210 and len(train) == 20210 and len(val) == 2000
    assert len(set(train)) == 1040


def test_top_n_matches_published_counts(train):
    v = SceneVocabulary.build(train, mode="top_n", top_n=10)
    assert v.names == [n for n, _ in TOP10]
    assert [v.train_counts[n] for n in v.names] == [c for _, c in TOP10]
    assert v.index("street") == 0 and v.index("building_facade") == 9 and v.index("abbey") is None


def test_ties_broken_by_name(train):
    counts = Counter(train)
    assert counts["mountain_snowy"] == counts["office"] == 132  # ranks 13 and 14 tie
    v13 = SceneVocabulary.build(train, mode="top_n", top_n=13)
    assert v13.names[-1] == "mountain_snowy" and "office" not in v13.names
    shuffled = list(train)
    random.Random(0).shuffle(shuffled)  # input order must not matter
    assert SceneVocabulary.build(shuffled, mode="top_n", top_n=13).names == v13.names


def test_min_count_and_all(train, scenes):
    v = SceneVocabulary.build(train, mode="min_count", min_count=100)
    counts = Counter(train)
    assert len(v) == 16 and all(counts[n] >= 100 for n in v.names)  # 16 in training alone
    assert min(counts[n] for n in v.names) == 107 and "game_room" not in v.names  # game_room has 99
    both = Counter(scenes.values())
    assert sum(1 for c in both.values() if c >= 100) == 20  # docs/data.md's 20 counts both splits
    assert len(SceneVocabulary.build(train, mode="all")) == 1040
    with pytest.raises(ValueError, match="no scene has at least min_count=5000 training images; the most "
                                         "frequent has 2038"):
        SceneVocabulary.build(train, mode="min_count", min_count=5000)


def test_list_mode_keeps_order_and_other_collects_the_rest(train, val, caplog):
    v = SceneVocabulary.build(train, mode="list", names=["kitchen", "bedroom", "no_such_scene"], unlisted="other")
    assert v.names == ["kitchen", "bedroom", "no_such_scene", OTHER]
    assert v.index("kitchen") == 0 and v.index("street") == 3 and v.index(OTHER) == 3
    assert "no_such_scene" in caplog.text  # listed but never seen in training: warned
    table = v.table({"training": train, "validation": val}).splitlines()
    row = {line.split()[1]: line.split()[2:] for line in table[1:-1]}
    assert row["kitchen"][0] == "661" and row["bedroom"][0] == "1,389"
    assert row[OTHER][0] == f"{20210 - 661 - 1389:,}"  # everything else
    assert table[-1].split()[1:] == ["20,210", "2,000"]


def test_drop_table_counts_dropped_images(train, val):
    v = SceneVocabulary.build(train, mode="top_n", top_n=3)
    lines = v.table({"training": train, "validation": val}).splitlines()
    dropped = next(line for line in lines if "(dropped)" in line).split()
    assert dropped[1] == f"{20210 - 2038 - 1516 - 1389:,}"


def test_json_round_trip_and_checkpoint_names(tmp_path, train):
    v = build_vocabulary(SceneVocabConfig(mode="top_n", top_n=5, unlisted="other"), train)
    path = v.save(tmp_path / "run" / "vocabulary.json")
    loaded = SceneVocabulary.load(path)
    assert loaded == v and loaded.names == v.names and loaded.train_counts["street"] == 2038
    assert json.loads(path.read_text())["names"][-1] == OTHER
    again = SceneVocabulary.from_names(v.names)  # a checkpoint keeps only the list of names
    assert again == v and again.index("abbey") == len(v) - 1


def test_errors_are_one_line_and_name_the_problem(tmp_path, train):
    with pytest.raises(ValueError, match="mode 'bogus' is unknown; choose one of: top_n, min_count, list, all"):
        SceneVocabulary.build(train, mode="bogus")
    with pytest.raises(ValueError, match="unlisted 'keep' is unknown"):
        SceneVocabulary.build(train, unlisted="keep")
    with pytest.raises(ValueError, match=r"mode 'list' needs data\.scenes\.names"):
        SceneVocabulary.build(train, mode="list")
    with pytest.raises(ValueError, match="listed more than once: bedroom"):
        SceneVocabulary.build(train, mode="list", names=["bedroom", "street", "bedroom"])
    with pytest.raises(ValueError, match="top_n must be at least 1"):
        SceneVocabulary.build(train, top_n=0)
    with pytest.raises(ValueError, match="'other' is listed as a scene and also requested"):
        SceneVocabulary(["other", "street"], other=True)
    (tmp_path / "v.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"v\.json: not valid JSON"):
        SceneVocabulary.load(tmp_path / "v.json")
    with pytest.raises(ValueError, match="vocabulary file not found"):
        SceneVocabulary.load(tmp_path / "missing.json")
