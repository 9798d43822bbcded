"""The scene vocabulary: which scene categories are classes, and in which order.

ADE20K's scene labels are long-tailed (1,040 names in training; street, misc, bedroom lead; only 16 have 100
training images), so the classes are chosen by config (``SceneVocabConfig``):

- ``top_n``: the N most frequent scenes of the training split;
- ``min_count``: every scene with at least ``min_count`` training images;
- ``list``: exactly the scenes named, in the order named;
- ``all``: every scene that occurs in training.

Frequency-ordered modes sort by training count, most frequent first, and break ties by name, so the class order
never depends on file order. Images of scenes outside the vocabulary are dropped (``unlisted: drop``) or mapped to a
last class named ``other`` (``unlisted: other``). The vocabulary is saved as ``vocabulary.json`` in the run folder;
inference loads it back so class indices mean the same thing.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostream.atomic import atomic_write_text
from twostream.config import SceneVocabConfig

__all__ = ["OTHER", "SceneSelection", "SceneVocabulary", "build_vocabulary", "select_scenes", "vocabulary_for_splits"]

log = logging.getLogger(__name__)

OTHER = "other"  # name of the catch-all class under unlisted: other
_FORMAT = "twostream-scene-vocabulary-v1"
MODES = ("top_n", "min_count", "list", "all")


class SceneVocabulary:
    """An ordered list of scene classes.

    Args:
        names: the scene classes in class order (without ``other``).
        other: append a class ``other`` that every scene outside ``names`` maps to; otherwise such scenes have no
            index (their images are dropped).
        train_counts: training images per scene (all scenes, not only the chosen ones); kept for reports.

    ``names`` (the attribute) is the full class order, ``other`` included, as logits and checkpoints use it.
    """

    def __init__(self, names: Sequence[str], other: bool = False, train_counts: Mapping[str, int] | None = None):
        names = list(names)
        if not names and not other:
            raise ValueError("SceneVocabulary: no scene names given; a vocabulary needs at least one class")
        dupes = sorted(n for n, c in Counter(names).items() if c > 1)
        if dupes:
            raise ValueError(f"SceneVocabulary: scene names listed more than once: {', '.join(dupes)}")
        bad = [n for n in names if not isinstance(n, str) or not n or any(ch.isspace() for ch in n)]
        if bad:
            raise ValueError(f"SceneVocabulary: scene names must be non-empty strings without spaces, got {bad[:5]}")
        if other and OTHER in names:
            raise ValueError(f"SceneVocabulary: '{OTHER}' is listed as a scene and also requested as the catch-all "
                             "class; rename the scene or use unlisted: drop")
        self.scenes: list[str] = names
        self.other = bool(other)
        self.names: list[str] = names + ([OTHER] if other else [])
        self.train_counts: dict[str, int] = dict(train_counts or {})
        self._index = {n: i for i, n in enumerate(self.names)}
        self._scene_set = set(names)

    # ---------------------------------------------------------------------------------------------------- queries

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        head = ", ".join(self.names[:5]) + (", ..." if len(self.names) > 5 else "")
        return f"SceneVocabulary({len(self)} classes: {head}; other={self.other})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SceneVocabulary) and self.names == other.names and self.other == other.other

    def index(self, scene: str) -> int | None:
        """Class index of ``scene``: its own class, else ``other`` when the vocabulary has one, else ``None``."""
        i = self._index.get(scene)
        if i is None and self.other:
            return len(self.names) - 1
        return i

    def name(self, index: int) -> str:
        return self.names[index]

    # ---------------------------------------------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        train_scenes: Iterable[str],
        *,
        mode: str = "top_n",
        top_n: int = 10,
        min_count: int = 100,
        names: Sequence[str] = (),
        unlisted: str = "drop",
    ) -> SceneVocabulary:
        """Choose the vocabulary from the training split's scene labels (one entry per training image).

        Raises:
            ValueError: unknown mode or unlisted value, a non-positive ``top_n``/``min_count``, an empty or
                duplicated ``names`` list in mode ``list``, or a rule that selects no scene.
        """
        if mode not in MODES:
            raise ValueError(f"scene vocabulary: mode '{mode}' is unknown; choose one of: {', '.join(MODES)}")
        if unlisted not in ("drop", "other"):
            raise ValueError(f"scene vocabulary: unlisted '{unlisted}' is unknown; choose one of: drop, other")
        counts = Counter(train_scenes)
        ranked = sorted(counts, key=lambda s: (-counts[s], s))  # most frequent first; ties by name
        if mode == "top_n":
            if top_n < 1:
                raise ValueError(f"scene vocabulary: top_n must be at least 1, got {top_n}")
            if top_n > len(ranked):
                log.warning("scene vocabulary: top_n=%d but training has only %d scenes; using all of them",
                            top_n, len(ranked))
            chosen = ranked[:top_n]
        elif mode == "min_count":
            if min_count < 1:
                raise ValueError(f"scene vocabulary: min_count must be at least 1, got {min_count}")
            chosen = [s for s in ranked if counts[s] >= min_count]
            if not chosen:
                best = f"; the most frequent has {counts[ranked[0]]}" if ranked else ""
                raise ValueError(f"scene vocabulary: no scene has at least min_count={min_count} training "
                                 f"images{best}; lower min_count")
        elif mode == "list":
            chosen = list(names)
            if not chosen:
                raise ValueError("scene vocabulary: mode 'list' needs data.scenes.names (the scenes, in class order)")
            missing = [s for s in chosen if counts[s] == 0]
            if missing:
                log.warning("scene vocabulary: %d listed scene(s) have no training image: %s",
                            len(missing), ", ".join(missing[:10]))
        else:  # all
            chosen = ranked
        if not chosen:
            raise ValueError("scene vocabulary: the training split has no scene labels; check sceneCategories.txt")
        return cls(chosen, other=unlisted == "other", train_counts=counts)

    @classmethod
    def from_config(cls, cfg: SceneVocabConfig, train_scenes: Iterable[str]) -> SceneVocabulary:
        """``build`` with the values of ``cfg.data.scenes``."""
        return cls.build(train_scenes, mode=cfg.mode, top_n=cfg.top_n, min_count=cfg.min_count, names=cfg.names,
                         unlisted=cfg.unlisted)

    # ---------------------------------------------------------------------------------------------------- saving

    def to_dict(self) -> dict:
        return {"format": _FORMAT, "names": list(self.names), "other": self.other,
                "train_counts": dict(sorted(self.train_counts.items(), key=lambda kv: (-kv[1], kv[0])))}

    @classmethod
    def from_dict(cls, d: Mapping) -> SceneVocabulary:
        if d.get("format") != _FORMAT or not isinstance(d.get("names"), list):
            raise ValueError(f"not a scene vocabulary (expected format '{_FORMAT}' with a 'names' list)")
        names = list(d["names"])
        other = bool(d.get("other", False))
        if other:
            if not names or names[-1] != OTHER:
                raise ValueError(f"scene vocabulary: 'other' is set but the last name is not '{OTHER}'")
            names = names[:-1]
        return cls(names, other=other, train_counts=d.get("train_counts"))

    @classmethod
    def from_names(cls, names: Sequence[str]) -> SceneVocabulary:
        """Rebuild from a plain class-name list (a checkpoint's ``"vocabulary"``): a last name ``other`` is the
        catch-all class."""
        names = list(names)
        other = bool(names) and names[-1] == OTHER
        return cls(names[:-1] if other else names, other=other)

    def save(self, path: str | Path) -> Path:
        """Write ``vocabulary.json`` (class order, the other flag and the training counts); atomic."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SceneVocabulary:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: scene vocabulary file not found (a run folder keeps it as vocabulary.json)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    # ---------------------------------------------------------------------------------------------------- reporting

    def table(self, split_scenes: Mapping[str, Iterable[str]]) -> str:
        """A plain-text table of images per class and split (the scenes of every image of each split).

        Rows: each class (``other`` sums every scene outside the vocabulary), then ``(dropped)`` for images whose
        scene has no class, then ``total``. Columns: one per split.
        """
        splits = list(split_scenes)
        per_split = {s: Counter(split_scenes[s]) for s in splits}
        rows: list[tuple[str, list[int]]] = []
        for i, name in enumerate(self.names):
            row = []
            for s in splits:
                c = per_split[s]
                if self.other and i == len(self.names) - 1:
                    row.append(sum(n for scene, n in c.items() if scene not in self._scene_set))
                else:
                    row.append(c.get(name, 0))
            rows.append((f"{i:>3} {name}", row))
        if not self.other:
            rows.append(("    (dropped)", [sum(n for sc, n in per_split[s].items() if sc not in self._index)
                                           for s in splits]))
        rows.append(("    total", [sum(per_split[s].values()) for s in splits]))
        width = max(len(r[0]) for r in [*rows, ("scene", [])])
        cols = [max(len(s), 8) for s in splits]
        lines = ["scene".ljust(width) + "".join(f"  {s:>{w}}" for s, w in zip(splits, cols))]
        lines += [label.ljust(width) + "".join(f"  {v:>{w},}" for v, w in zip(vals, cols)) for label, vals in rows]
        return "\n".join(lines)


def build_vocabulary(cfg: SceneVocabConfig, train_scenes: Iterable[str]) -> SceneVocabulary:
    """The vocabulary ``cfg`` (``cfg.data.scenes``) selects from the training scene labels."""
    return SceneVocabulary.from_config(cfg, train_scenes)


def vocabulary_for_splits(train_all: Any, val_all: Any, cfg: SceneVocabConfig, max_items: int,
                          splits: tuple[str, str]) -> tuple[Any, Any, SceneVocabulary, str]:
    """The vocabulary ``cfg`` picks from the training split's scenes, and both splits seen through it.

    ``train_all`` / ``val_all``: the splits opened without a vocabulary, with ``raw_scenes()`` and
    ``with_vocabulary(vocabulary, max_items)`` (the list readers, :class:`~twostream.data.graph_items.StoreGraphs`).
    Returns ``(train, val, vocabulary, table)``: ``table`` is the images-per-class-and-split table to log, the
    splits named by ``splits``.
    """
    train_scenes = train_all.raw_scenes()
    vocabulary = build_vocabulary(cfg, train_scenes)
    table = vocabulary.table({splits[0]: train_scenes, splits[1]: val_all.raw_scenes()})
    return (train_all.with_vocabulary(vocabulary, max_items), val_all.with_vocabulary(vocabulary, max_items),
            vocabulary, table)


@dataclass(frozen=True)
class SceneSelection:
    """The items a vocabulary keeps: ``index (K,)`` int64 positions into the full list, ``classes (K,)`` int32
    vocabulary indices (-1 when no vocabulary), and how many were left out: ``dropped`` (a scene outside the
    vocabulary) and ``unlabelled`` (no scene)."""

    index: np.ndarray
    classes: np.ndarray
    dropped: int
    unlabelled: int


def select_scenes(scene_ids: np.ndarray, scene_table: Sequence[str], vocabulary: SceneVocabulary | None,
                  max_items: int = 0) -> SceneSelection:
    """The items of a dataset or graph store that ``vocabulary`` has a class for, vectorised over ``scene_ids``.

    Args:
        scene_ids: ``(M,)`` int index into ``scene_table`` per item, -1 = no scene known.
        scene_table: the scene names the ids refer to.
        vocabulary: ``None`` keeps every item, with class -1.
        max_items: keep only the first N kept items (0 = all).
    """
    scene_ids = np.asarray(scene_ids)
    if vocabulary is None:
        keep, classes = np.ones(len(scene_ids), dtype=bool), np.full(len(scene_ids), -1, dtype=np.int32)
        dropped = unlabelled = 0
    else:
        # one lookup per scene name, not per item; the extra last entry serves scene id -1
        lut = np.array([-1 if (i := vocabulary.index(s)) is None else i for s in scene_table] + [-1], dtype=np.int32)
        classes = lut[scene_ids]
        keep = classes >= 0
        unlabelled = int((scene_ids < 0).sum())
        dropped = int(((scene_ids >= 0) & ~keep).sum())
    index = np.flatnonzero(keep)
    if max_items:
        index = index[:max_items]
    return SceneSelection(index, classes[index], dropped, unlabelled)
