"""Graphs-only items: a graph store read as a dataset, with no image or annotation opened.

A graph-only classifier (``model.image_encoder.enabled: false``) whose graphs are stored trains and is evaluated
from the store alone: the items are the store's graphs, their scene labels the ones the store recorded when it was
built (or a scene file given here). This is also the setting where only graphs may leave the place the images are
kept (graphs without pixels).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from twostream.data.vocabulary import SceneVocabulary, select_scenes

__all__ = ["StoreGraphs"]

log = logging.getLogger(__name__)


class StoreGraphs(Dataset):
    """The graphs of a :class:`~twostream.graph.store.GraphStore` with scene labels.

    Args:
        store: the opened store.
        vocabulary: the scene classes; graphs whose scene has no class (or no scene) are left out. ``None`` keeps
            every graph with scene ``-1``.
        scenes: item name -> scene name, for stores that recorded no scenes (e.g. converted from the old cache);
            default: the store's own record.
        max_items: keep only the first N graphs (0 = all).

    Items: ``{"graph": torch_geometric Data (SceneGraph.to_pyg), "scene": int, "name": str}``; no ``"image"``.
    """

    def __init__(self, store: Any, vocabulary: SceneVocabulary | None, scenes: Mapping[str, str] | None = None,
                 max_items: int = 0) -> None:
        self.store = store
        if scenes is not None:
            table = sorted(set(scenes.values()))
            lookup = {s: i for i, s in enumerate(table)}
            scene_ids = np.array([lookup.get(scenes.get(n, ""), -1) for n in store.names], dtype=np.int32)
        else:
            table, scene_ids = store.scene_table, store.scene_index.astype(np.int32)
        self.scene_table = table
        self._scene_ids = scene_ids
        self._select(vocabulary, max_items)

    def with_vocabulary(self, vocabulary: SceneVocabulary | None, max_items: int = 0) -> StoreGraphs:
        """The same store's graphs selected for ``vocabulary`` (the scenes are not looked up again)."""
        other = copy.copy(self)
        other._select(vocabulary, max_items)
        return other

    def _select(self, vocabulary: SceneVocabulary | None, max_items: int) -> None:
        self.vocabulary = vocabulary
        chosen = select_scenes(self._scene_ids, self.scene_table, vocabulary, max_items)
        self.dropped, self.unlabelled = chosen.dropped, chosen.unlabelled
        if self.unlabelled:
            log.warning("%s: %d graph(s) have no scene label (left out)", self.store.store_dir, self.unlabelled)
        self.indices, self.classes = chosen.index, chosen.classes
        self.skipped = 0

    def raw_scenes(self) -> list[str]:
        """The scene name of every graph that has one (what a vocabulary is chosen from)."""
        return [self.scene_table[i] for i in self._scene_ids.tolist() if i >= 0]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def names(self) -> list[str]:
        all_names = self.store.names
        return [all_names[i] for i in self.indices.tolist()]

    @property
    def scenes(self) -> list[int]:
        return self.classes.tolist()

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} graphs")
        i = int(self.indices[index])
        graph = self.store.graph(i)
        return {"graph": graph.to_pyg(), "scene": int(self.classes[index]), "name": self.store.name_at(i)}

    def __repr__(self) -> str:
        vocab = f"{len(self.vocabulary)} scenes" if self.vocabulary is not None else "no scenes"
        return f"StoreGraphs({self.store.store_dir}, {len(self)} graphs, {vocab})"
