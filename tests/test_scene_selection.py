"""select_scenes: the one vocabulary filter of image lists and graph stores, against a per-item Python loop."""

from __future__ import annotations

import numpy as np

from twostream.data.vocabulary import SceneVocabulary, select_scenes


def test_selection_matches_a_per_item_loop():
    rng = np.random.default_rng(0)
    table = ["bedroom", "street", "kitchen", "misc", "bathroom"]
    scene_ids = rng.integers(-1, len(table), size=5000).astype(np.int32)  # -1: no scene known
    vocabulary = SceneVocabulary.from_names(["street", "bedroom", "bathroom"])
    chosen = select_scenes(scene_ids, table, vocabulary)
    expected = [(i, vocabulary.index(table[s])) for i, s in enumerate(scene_ids.tolist())
                if s >= 0 and vocabulary.index(table[s]) is not None]
    assert chosen.index.tolist() == [i for i, _ in expected]
    assert chosen.classes.tolist() == [c for _, c in expected]
    assert chosen.unlabelled == int((scene_ids == -1).sum())
    assert chosen.dropped == int(np.isin(scene_ids, [2, 3]).sum())  # kitchen and misc have no class
    assert select_scenes(scene_ids, table, vocabulary, max_items=7).index.tolist() == chosen.index[:7].tolist()


def test_no_vocabulary_keeps_every_item_unlabelled():
    chosen = select_scenes(np.array([0, -1, 1], dtype=np.int32), ["a", "b"], None)
    assert chosen.index.tolist() == [0, 1, 2] and chosen.classes.tolist() == [-1, -1, -1]
    assert chosen.dropped == chosen.unlabelled == 0
