"""The base of the readers that outgrow ADEChallengeData2016: a list of image files with a scene name each.

Places365 (1.8 M training images), a folder per scene and full ADE20K share it. The list lives in numpy arrays
(relative paths and names as fixed-width bytes, scene ids as int32), not in per-item Python objects: DataLoader
workers fork the dataset and read these pages without touching reference counts, so the list is shared instead of
copied into every worker ("copy on read"), and opening 1.8 M items costs no more than parsing the file list. No file
is opened or ``stat``-ed at start-up; a missing or unreadable image is found when it is loaded (``DataError`` naming
the file; with ``skip_bad`` logged, counted in ``skipped`` and replaced by the next good item, as
:class:`~twostream.data.ade20k.ADE20KDataset` does).

Items follow the data contract: ``{"image": (3, H, W) float32 in [0, 1], "scene": int (-1 = unknown), "name": str}``
and, for readers with label maps, ``"sem_seg": (H, W) int64``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from twostream.data.bad_items import SubstitutesBadItems
from twostream.data.io import DataError, load_image
from twostream.data.vocabulary import SceneVocabulary, select_scenes

__all__ = ["ImageListDataset", "decode", "encode", "warn_list"]

log = logging.getLogger(__name__)

MAX_NAMED = 10  # problems of one kind named one by one in the log before the rest are summarised


def encode(strings: list[str]) -> np.ndarray:
    """UTF-8 fixed-width bytes (numpy ``S``)."""
    return np.array([s.encode("utf-8") for s in strings], dtype="S") if strings else np.zeros(0, "S1")


def decode(array: np.ndarray) -> list[str]:
    return [b.decode("utf-8") for b in array.tolist()]


def warn_list(what: str, names: list[str], logger: logging.Logger = log) -> None:
    """Log ``"<name>: <what>"`` for the first :data:`MAX_NAMED` names, then how many more there are."""
    for n in names[:MAX_NAMED]:
        logger.warning("%s: %s", n, what)
    if len(names) > MAX_NAMED:
        logger.warning("... and %d more: %s", len(names) - MAX_NAMED, what)


class ImageListDataset(SubstitutesBadItems, Dataset):
    """Items from a list of image files under ``image_root``, each with a scene name (or none).

    Args:
        image_root: the folder the paths are relative to.
        paths: ``(M,)`` bytes, each image's path relative to ``image_root``.
        names: ``(M,)`` bytes, each item's name (unique; what graph stores and predictions are keyed by), or
            ``None``: the path without its extension (derived when asked, so a 1.8 M list keeps one array).
        scene_ids: ``(M,)`` int32 index into ``scene_table``, -1 = no scene known.
        scene_table: the scene names ``scene_ids`` refer to.
        vocabulary: the scene classes; items whose scene has no class (or no scene) are left out. ``None`` keeps
            every item with scene ``-1``.
        transform: ``(Image (3, H, W) uint8[, Mask (H, W)]) -> ...``; ``None`` returns the full-size image.
        skip_bad: replace an unreadable item by the next good one (logged, counted) instead of raising.
        max_items: keep only the first N items (0 = all).
        what: a short description of the dataset for messages.
    """

    exif_transpose = True  # photos without label maps are shown upright (a label map would be drawn on stored pixels)
    # True: items with a label map also carry "sem_seg_original", the map before the transform (H0, W0) int64, the
    # decoded array itself (what evaluation scores against; see ADE20KDataset)
    keep_original_labels = False

    def __init__(self, image_root: Path, paths: np.ndarray, names: np.ndarray | None, scene_ids: np.ndarray,
                 scene_table: list[str], vocabulary: SceneVocabulary | None, transform: Any = None,
                 skip_bad: bool = True, max_items: int = 0, what: str = "dataset") -> None:
        if max_items < 0:
            raise ValueError(f"{what}: max_items must be >= 0 (0 = all), got {max_items}")
        self.image_root, self.what = Path(image_root), what
        self.transform, self.skip_bad, self.max_items = transform, skip_bad, max_items
        self.scene_table = list(scene_table)
        self._all = (paths, names, np.asarray(scene_ids, dtype=np.int32))
        self.vocabulary: SceneVocabulary | None = None
        self._select(vocabulary)
        self.skipped = 0
        self.bad: dict[int, str] = {}  # index -> the one-line reason; a known bad item is not read twice

    def _select(self, vocabulary: SceneVocabulary | None) -> None:
        paths, names, scene_ids = self._all
        self.vocabulary = vocabulary
        chosen = select_scenes(scene_ids, self.scene_table, vocabulary, self.max_items)
        self.dropped, self.unlabelled, index = chosen.dropped, chosen.unlabelled, chosen.index
        if not len(index):
            raise DataError(f"{self.image_root}: no usable items in {self.what} ({len(paths)} listed, outside the "
                            f"vocabulary: {self.dropped}, without scene: {self.unlabelled})")
        self.paths, self.scene_ids = paths[index], scene_ids[index]
        self._names = names[index] if names is not None else None
        self.classes = chosen.classes

    def with_vocabulary(self, vocabulary: SceneVocabulary | None, max_items: int | None = None) -> ImageListDataset:
        """The same list seen through another vocabulary (and ``max_items``): a shallow copy sharing the arrays."""
        other = copy.copy(self)
        if max_items is not None:
            other.max_items = max_items
        other._scene_names = None
        other._select(vocabulary)
        other.skipped, other.bad = 0, {}
        return other

    # ---------------------------------------------------------------------------------------------------- listing

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def names(self) -> list[str]:
        if self._names is None:
            return decode(np.strings.rpartition(self.paths, b".")[0]) if len(self.paths) else []
        return decode(self._names)

    def name(self, index: int) -> str:
        """Item ``index``'s name (one entry decoded, no list built)."""
        if self._names is None:
            return self.paths[index].decode("utf-8").rpartition(".")[0]
        return self._names[index].decode("utf-8")

    @property
    def scenes(self) -> list[int]:
        """Scene class index per item (no file is read): for class weights and samplers."""
        return self.classes.tolist()

    def raw_scenes(self) -> list[str]:
        """The scene name of every item that has one (what a vocabulary is chosen from)."""
        return [self.scene_table[i] for i in self.scene_ids.tolist() if i >= 0]

    @property
    def scene_names(self) -> dict[str, str]:
        """Item name -> scene name (built on first use: a graph-store build records it; training never asks)."""
        if getattr(self, "_scene_names", None) is None:
            self._scene_names = {n: self.scene_table[i] for n, i in zip(self.names, self.scene_ids.tolist())
                                 if i >= 0}
        return self._scene_names

    def __repr__(self) -> str:
        vocab = f"{len(self.vocabulary)} scenes" if self.vocabulary is not None else "no scenes"
        return f"{type(self).__name__}({self.image_root}, {len(self)} items, {vocab})"

    # ---------------------------------------------------------------------------------------------------- items

    def image_path(self, index: int) -> Path:
        return self.image_root / self.paths[index].decode("utf-8")

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Item ``index`` without transforms: ``(H, W, 3)`` uint8 image and its label map or ``None``."""
        return load_image(self.image_path(index), exif_transpose=self.exif_transpose), None

    def _item(self, index: int) -> dict[str, Any]:
        image, label = self.load(index)
        img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))  # (H, W, 3) -> (3, H, W) uint8
        inputs: tuple = (img,) if label is None else (img, tv_tensors.Mask(torch.from_numpy(label).long()))
        if self.transform is not None:
            out = self.transform(*inputs)
            inputs = out if isinstance(out, tuple) else (out,)
        img = inputs[0].as_subclass(torch.Tensor)
        if img.dtype == torch.uint8:
            img = img.float().div_(255.0)
        item = {"image": img, "scene": int(self.classes[index]), "name": self.name(index)}
        if label is not None:
            item["sem_seg"] = inputs[1].as_subclass(torch.Tensor).long()
            if self.keep_original_labels:
                item["sem_seg_original"] = torch.from_numpy(label).long()
        return item

    def _unreadable_message(self, index: int, count: int) -> str:
        return (f"{self.image_root}: {count} consecutive items of {self.what} from index {index} are unreadable; "
                "check the files")
