"""A folder per scene (torchvision ``ImageFolder`` style), for users' own photographs::

    root/<split>/<scene>/*.jpg      (or .jpeg, .png, .webp, .bmp; any case)

The scene of an image is its folder's name; its item name is ``<scene>/<file stem>``. Opening lists the folders with
``os.scandir`` (which reports files and folders without a ``stat`` per file), so a folder of a million photos opens
in seconds. No label maps: graphs come from a segmenter (``graph.source: pred``). Photos are turned upright by their
EXIF orientation, as a camera or phone meant them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from twostream.data.image_list import ImageListDataset, encode
from twostream.data.io import DataError
from twostream.data.vocabulary import SceneVocabulary

__all__ = ["FOLDER_EXTENSIONS", "SceneFolderDataset"]

FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class SceneFolderDataset(ImageListDataset):
    """``root/<split>/<scene>/<image>``: one split of a folder-per-scene dataset.

    Args:
        root: the dataset folder; ``root/<split>`` holds one folder per scene.
        split: the split's folder name (``data.train_split`` / ``data.val_split``).
        vocabulary: the scene classes; ``None`` keeps every image with scene ``-1``.
        transform, skip_bad, max_items: as :class:`~twostream.data.image_list.ImageListDataset`.
    """

    def __init__(self, root: str | Path, split: str, vocabulary: SceneVocabulary | None, transform: Any = None,
                 skip_bad: bool = True, max_items: int = 0) -> None:
        root = Path(root)
        split_dir = root / split
        if not split_dir.is_dir():
            present = sorted(e.name for e in os.scandir(root) if e.is_dir()) if root.is_dir() else []
            hint = f" (found: {', '.join(present[:8])})" if present else ""
            raise DataError(f"{split_dir}: folder not found{hint}; expected <root>/<split>/<scene>/*.jpg "
                            "(data.format=folder)")
        with os.scandir(split_dir) as it:
            scene_dirs = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
        if not scene_dirs:
            raise DataError(f"{split_dir}: no scene folders; expected <root>/<split>/<scene>/*.jpg")
        paths: list[str] = []
        scene_ids: list[int] = []
        for k, scene in enumerate(scene_dirs):
            with os.scandir(split_dir / scene) as it:
                files = sorted(e.name for e in it if not e.name.startswith(".") and
                               os.path.splitext(e.name)[1].lower() in FOLDER_EXTENSIONS and e.is_file())
            paths += [f"{scene}/{f}" for f in files]
            scene_ids += [k] * len(files)
        self.root, self.split = root, split
        super().__init__(split_dir, encode(paths), None, np.array(scene_ids, dtype=np.int32),
                         [s.replace(" ", "_") for s in scene_dirs], vocabulary, transform=transform,
                         skip_bad=skip_bad, max_items=max_items, what=f"folder {split}")
