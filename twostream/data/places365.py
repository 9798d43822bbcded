"""Places365-Standard reader: 1.8 M training and 36.5 k validation images in 365 scenes, no label maps (graphs come
from a segmenter: ``graph.source: pred``).

Layout (the release's file lists and image archives, unpacked side by side)::

    root/categories_places365.txt      "/a/airfield 0": category path and index, one line per scene (365)
    root/places365_train_standard.txt  "/a/airfield/00000001.jpg 0": image path (under the training folder), index
    root/places365_val.txt             "Places365_val_00000001.jpg 165"
    root/data_256/a/airfield/00000001.jpg      training images (or data_large, or torchvision's
                                               data_256_standard / data_large_standard)
    root/val_256/Places365_val_00000001.jpg    validation images (or val_large)

Splits: ``training`` (also ``train``, ``train_standard``; ``train_challenge`` reads
``places365_train_challenge.txt``) and ``validation`` (also ``val``). Scene names are the category paths without the
leading letter folder (``/a/apartment_building/outdoor`` -> ``apartment_building/outdoor``); item names are the image
paths without the extension (``a/airfield/00000001``, ``Places365_val_00000001``), so a graph store's names match.

Opening parses the file list with numpy (one ``split`` of the file, no per-line Python work and no ``stat`` of any
image), so the 1.8 M-line training list opens in about a second. A line whose class index is not in
``categories_places365.txt`` is named and left out (``skip_bad``) or an error; a missing image is found when it is
loaded. Why not ``torchvision.datasets.Places365``: it checks the file lists' MD5 and keeps 1.8 M ``(path, index)``
tuples, which every DataLoader worker copies as it reads them; and it has no skip-and-count for bad files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from twostream.data.image_list import ImageListDataset, warn_list
from twostream.data.io import DataError
from twostream.data.vocabulary import SceneVocabulary

__all__ = ["CATEGORIES", "Places365Dataset", "read_categories", "read_file_list"]

log = logging.getLogger(__name__)

CATEGORIES = "categories_places365.txt"
_SPLITS = {"training": "train_standard", "train": "train_standard", "train_standard": "train_standard",
           "train_challenge": "train_challenge", "validation": "val", "val": "val"}
_LISTS = {"train_standard": "places365_train_standard.txt", "train_challenge": "places365_train_challenge.txt",
          "val": "places365_val.txt"}
_IMAGE_DIRS = {"train_standard": ("data_256", "data_large", "data_256_standard", "data_large_standard"),
               "train_challenge": ("data_256", "data_large", "data_256_challenge", "data_large_challenge"),
               "val": ("val_256", "val_large")}


def _scene_name(category: str) -> str:
    """``/a/apartment_building/outdoor`` -> ``apartment_building/outdoor``."""
    parts = category.strip("/").split("/")
    return "/".join(parts[1:]) if len(parts) > 1 and len(parts[0]) == 1 else "/".join(parts)


def read_categories(path: str | Path) -> list[str]:
    """The scene names of ``categories_places365.txt`` by class index (every index 0..K-1 exactly once).

    Raises:
        DataError: the file is missing, a line is malformed, or the indices are not 0..K-1.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: category list not found (Places365's categories_places365.txt belongs in the "
                        "dataset folder)")
    by_index: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(f"{path}:{lineno}: expected '<category path> <index>', got {line.strip()!r}")
        index = int(parts[1])
        if index in by_index:
            raise DataError(f"{path}:{lineno}: class index {index} is listed twice")
        by_index[index] = _scene_name(parts[0])
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(f"{path}: class indices must be 0..{len(by_index) - 1}, each once")
    return [by_index[i] for i in range(len(by_index))]


def read_file_list(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(paths (M,) bytes without the leading '/', class indices (M,) int64)`` of a Places365 file list.

    Parsed with one ``bytes.split`` and numpy conversions, so a 1.8 M-line list takes about a second.

    Raises:
        DataError: the file is missing or a line is not ``<path> <index>``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file list not found")
    data = path.read_bytes()
    tokens = data.split()
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    if len(tokens) % 2 or len(tokens) // 2 > lines:
        # a path with spaces or a line with other than two fields: find it to name it
        for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if line.strip() and len(line.split()) != 2:
                raise DataError(f"{path}:{lineno}: expected '<image path> <class index>', got {line.strip()!r}")
    paths = np.array(tokens[0::2], dtype="S")
    try:
        labels = np.array(tokens[1::2], dtype="S").astype(np.int64)
    except ValueError:
        bad = next(i for i, t in enumerate(tokens[1::2]) if not t.lstrip(b"-").isdigit())
        raise DataError(f"{path}:{bad + 1}: class index {tokens[2 * bad + 1].decode(errors='replace')!r} is not an "
                        "integer") from None
    paths = np.strings.lstrip(paths, b"/")
    return paths, labels


class Places365Dataset(ImageListDataset):
    """One split of a Places365 folder (module docstring for the layout).

    Args:
        root: the dataset folder (file lists, ``categories_places365.txt``, image folders).
        split: ``training`` / ``validation`` (or the release's names, module docstring).
        vocabulary: the scene classes (e.g. all 365); ``None`` keeps every image with scene ``-1``.
        image_dir: the image folder under ``root``; default: the first of the release's folder names that exists.
        transform, skip_bad, max_items: as :class:`~twostream.data.image_list.ImageListDataset`.
    """

    def __init__(self, root: str | Path, split: str, vocabulary: SceneVocabulary | None, transform: Any = None,
                 skip_bad: bool = True, max_items: int = 0, image_dir: str = "") -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: dataset folder not found; Places365-Standard's file lists and images belong "
                            "there (see docs/scale.md)")
        if split not in _SPLITS:
            raise DataError(f"Places365: unknown split '{split}'; use one of {', '.join(_SPLITS)}")
        kind = _SPLITS[split]
        categories = read_categories(root / CATEGORIES)
        list_file = root / _LISTS[kind]
        paths, labels = read_file_list(list_file)
        bad = np.flatnonzero((labels < 0) | (labels >= len(categories)))
        if len(bad):
            lines = [f"{list_file}:{i + 1}" for i in bad.tolist()]
            what = f"class index outside 0..{len(categories) - 1} of {CATEGORIES}"
            if not skip_bad:
                raise DataError(f"{lines[0]}: {what} ({len(bad)} such line(s); set data.skip_bad=true to leave them "
                                "out)")
            warn_list(f"{what} (left out)", lines)
            keep = np.ones(len(paths), dtype=bool)
            keep[bad] = False
            paths, labels = paths[keep], labels[keep]
        self.bad_lines = len(bad)
        folder = root / image_dir if image_dir else next(
            (root / d for d in _IMAGE_DIRS[kind] if (root / d).is_dir()), None)
        if folder is None or not folder.is_dir():
            raise DataError(f"{root}: no image folder for split '{split}' (looked for "
                            f"{', '.join((image_dir and [image_dir]) or _IMAGE_DIRS[kind])})")
        self.root, self.split, self.categories = root, split, categories
        super().__init__(folder, paths, None, labels.astype(np.int32), categories, vocabulary, transform=transform,
                         skip_bad=skip_bad, max_items=max_items, what=f"Places365 {split}")
