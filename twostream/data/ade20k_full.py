"""Full ADE20K (the 2021 release, ``ADE20K_2021_17_01``): 27,574 images, 3,688 object classes, a scene path per image.

Layout::

    root/images/ADE/{training,validation}/<scene group>/<scene>/ADE_train_00016869.jpg
                                                              ADE_train_00016869.json      per-image annotation
                                                              ADE_train_00016869_seg.png   RGB-coded objects
                                                              ADE_train_00016869/          instance masks (unused)

The JSON's ``annotation`` holds ``filename``, ``imsize``, ``scene`` (a path such as ``["outdoor", "urban",
"street"]``) and ``object`` (each with ``id``, ``name``, ``name_ndx``, ``parts`` {``ispartof``, ``hasparts``,
``part_level``}, ...). In ``_seg.png`` the whole-object class of a pixel is ``R / 10 * 256 + G`` (integer division),
the ``name_ndx`` of the objects with ``part_level`` 0; 0 = unlabelled.

What this reader takes from it:

- **Classes**: the table ``ade20k_full`` of every ``name_ndx`` the JSONs use (3,688 in the release) with its name
  (WordNet synonyms, ``"car, auto, automobile"`` -> ``car;auto;automobile`` as twostream writes synonyms), 0 =
  unlabelled. The release's pickle index is never loaded: the JSONs are read once and what is needed (scene path
  and class names per image) is kept in an index file, ``<root>/twostream_index.json`` (or, when ``root`` is not
  writable, under ``~/.cache/twostream/``); later opens read that one file and list the folders, in seconds.
- **ADE20K-150 labels** (``labels="ade150"``): each full class maps to the 150-class table when its synonym list
  equals one of that table's (``building, edifice`` = ``building;edifice``), else to 0 (other). The scene-parsing
  toolkit's own conversion (``mapFromADE.txt`` of CSAILVision/sceneparsing, index pairs ``<150 id> <ADE index>``)
  also merges a few classes (door and double door, ...); pass it as ``label_map`` to use it instead.
- **Scenes**: one element of the scene path, the leaf by default (``scene_level=-1``: ``street``); spaces become
  ``_``.
- **Parts** are not nodes: graphs are built from ``_seg.png``'s whole objects, so no ``part_of`` edges are made
  (the parts hierarchy stays in the JSONs).

Bad input: a JSON without a scene, with an object whose ``name_ndx`` is not a positive integer, or that does not
parse is named when the index is built and its image left out (counted in ``bad_json``); an image without its JSON or
``_seg.png`` is named and left out at open; a ``_seg.png`` with a class index no JSON uses, or of another size than
its image, is a ``DataError`` at load (``skip_bad`` applies).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from twostream.atomic import atomic_write_text
from twostream.data.classes import ClassTable, ade20k150
from twostream.data.image_list import MAX_NAMED, ImageListDataset, encode, warn_list
from twostream.data.io import DataError, load_image
from twostream.data.vocabulary import SceneVocabulary

__all__ = ["INDEX_FORMAT", "ADE20KFullDataset", "full_class_table", "map_to_ade150", "read_index"]

log = logging.getLogger(__name__)

INDEX_FORMAT = "twostream-ade20k-full-index-v1"
INDEX_FILE = "twostream_index.json"
IMAGES = Path("images") / "ADE"


def _synonyms(name: str) -> tuple[str, ...]:
    return tuple(s.strip().lower() for s in name.replace(";", ",").split(",") if s.strip())


# --------------------------------------------------------------------------------------------------------------------
# Listing and the index
# --------------------------------------------------------------------------------------------------------------------


def _list_images(split_dir: Path) -> tuple[list[str], list[str]]:
    """``(relative stems, incomplete)`` under ``split_dir``: every ``*.jpg`` with its ``.json`` and ``_seg.png``
    beside it; instance folders (named like an image) are not entered. ``os.scandir``: no ``stat`` per file."""
    stems, incomplete = [], []
    todo = [split_dir]
    while todo:
        folder = todo.pop()
        with os.scandir(folder) as it:
            entries = list(it)
        files = {e.name for e in entries if not e.is_dir()}
        images = sorted(n[:-4] for n in files if n.endswith(".jpg"))
        skip = set(images)
        todo += sorted((Path(e.path) for e in entries if e.is_dir() and e.name not in skip), reverse=True)
        rel = folder.relative_to(split_dir)
        for stem in images:
            path = (rel / stem).as_posix()
            if f"{stem}.json" in files and f"{stem}_seg.png" in files:
                stems.append(path)
            else:
                incomplete.append(str(folder / f"{stem}.jpg"))
    return sorted(stems), incomplete


def _read_annotation(path: Path) -> dict:
    """``{"scene": [...], "classes": {ndx: name}}`` from one JSON, or ``{"bad": reason}``."""
    try:
        ann = json.loads(path.read_text(encoding="utf-8"))["annotation"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return {"bad": f"not an ADE20K annotation JSON ({type(e).__name__}: {e})"}
    scene = ann.get("scene")
    if not isinstance(scene, list) or not scene or not all(isinstance(s, str) and s for s in scene):
        return {"bad": f"no scene (annotation.scene is {scene!r})"}
    classes: dict[str, str] = {}
    for obj in ann.get("object", []):
        ndx, name = obj.get("name_ndx"), obj.get("name")
        if not isinstance(ndx, int) or isinstance(ndx, bool) or ndx < 1 or not isinstance(name, str):
            return {"bad": f"object {obj.get('id')} has an unknown class index (name_ndx {ndx!r}, name {name!r})"}
        classes.setdefault(str(ndx), name)
    return {"scene": scene, "classes": classes}


class _Annotations(Dataset):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return _read_annotation(self.paths[i])


def _index_path(root: Path) -> Path:
    if os.access(root, os.W_OK):
        return root / INDEX_FILE
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "twostream" / f"ade20k_full-{digest}.json"


def read_index(root: str | Path, workers: int = 0) -> dict:
    """The index of every split under ``root/images/ADE``: ``{"images": {"<split>/<rel stem>": {"scene": [...]} or
    {"bad": reason}}, "classes": {ndx: name}}``, read from the index file and brought up to date (JSONs of images
    not in it yet are read, with ``workers`` processes)."""
    return _index_and_listing(root, workers)[0]


def _index_and_listing(root: str | Path, workers: int = 0) -> tuple[dict, dict[str, tuple[list[str], list[str]]]]:
    """:func:`read_index` and the listing it was brought up to date with, ``{split: _list_images(split folder)}``
    (every split is listed, so that the class table does not depend on which splits were opened; a reader takes its
    split's listing from here rather than walking the folder again)."""
    root = Path(root)
    base = root / IMAGES
    if not base.is_dir():
        raise DataError(f"{base}: folder not found; expected the ADE20K_2021_17_01 layout images/ADE/<split>/...")
    listing = {d.name: _list_images(d) for d in sorted(p for p in base.iterdir() if p.is_dir())}
    listed = {f"{split}/{stem}": None for split, (stems, _) in listing.items() for stem in stems}
    path = _index_path(root)
    index = {"format": INDEX_FORMAT, "images": {}, "classes": {}}
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("format") == INDEX_FORMAT:
                index = saved
        except (OSError, ValueError):
            log.warning("%s: unreadable index; reading the JSONs again", path)
    todo = [s for s in listed if s not in index["images"]]
    if todo:
        log.info("ADE20K: reading %d annotation JSONs once (the index is kept in %s)", len(todo), path)
        loader = DataLoader(_Annotations([base / f"{s}.json" for s in todo]), batch_size=None,
                            num_workers=workers)
        for stem, ann in zip(todo, loader):
            index["images"][stem] = {k: v for k, v in ann.items() if k != "classes"}
            for ndx, name in ann.get("classes", {}).items():
                if index["classes"].setdefault(ndx, name) != name:
                    log.warning("%s.json: class %s is named '%s', elsewhere '%s' (the first name is kept)",
                                base / stem, ndx, name, index["classes"][ndx])
        index["images"] = dict(sorted(index["images"].items()))
        index["classes"] = dict(sorted(index["classes"].items(), key=lambda kv: int(kv[0])))
        atomic_write_text(path, json.dumps(index))
    return index, listing


def full_class_table(classes: dict[str, str]) -> ClassTable:
    """The ``ade20k_full`` table: label ``ndx`` = the class of ``name_ndx`` ``ndx``; 0 = unlabelled; indices no JSON
    uses are named ``unused_<ndx>``."""
    top = max((int(k) for k in classes), default=0)
    names = ["-"] + [";".join(_synonyms(classes[str(i)])) or f"class_{i}" if str(i) in classes else f"unused_{i}"
                     for i in range(1, top + 1)]
    palette = np.random.default_rng(0).integers(0, 256, (top + 1, 3), dtype=np.uint8)
    palette[0] = 0
    return ClassTable(name="ade20k_full", names=tuple(names), palette=palette, background=0)


def map_to_ade150(table: ClassTable, label_map: str | Path | None = None) -> np.ndarray:
    """``(K,)`` int64: the ADE20K-150 label of each full class (0 = other), by synonym lists or a ``label_map`` file
    of ``<150 id> <full index>`` lines (the scene-parsing toolkit's ``mapFromADE.txt``)."""
    lut = np.zeros(len(table), dtype=np.int64)
    if label_map:
        path = Path(label_map)
        if not path.is_file():
            raise DataError(f"{path}: label map not found (lines '<ade20k150 id> <ADE20K full index>')")
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise DataError(f"{path}:{lineno}: expected '<ade20k150 id> <ADE20K full index>', got {line!r}")
            target, full = int(parts[0]), int(parts[1])
            if not 0 < target < len(ade20k150()):
                raise DataError(f"{path}:{lineno}: {target} is not an ADE20K-150 class id (1..150)")
            if full < len(lut):
                lut[full] = target
        return lut
    by_synonyms = {_synonyms(n): i for i, n in enumerate(ade20k150().names) if i}
    for i, name in enumerate(table.names):
        lut[i] = by_synonyms.get(_synonyms(name), 0) if i else 0
    return lut


# --------------------------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------------------------


class ADE20KFullDataset(ImageListDataset):
    """One split of the full ADE20K release (module docstring).

    Args:
        root: the ``ADE20K_2021_17_01`` folder (holding ``images/ADE/``).
        split: ``training`` or ``validation`` (a folder under ``images/ADE``).
        vocabulary: the scene classes; ``None`` keeps every image with scene ``-1``.
        labels: ``full`` (the ``ade20k_full`` table) or ``ade150`` (mapped to ADE20K-150).
        scene_level: which element of the scene path names the scene (-1 = the leaf).
        label_map: ``ade150`` only: a ``mapFromADE.txt``-style file instead of the synonym match.
        workers: processes reading JSONs when the index is built or extended.
        transform, skip_bad, max_items: as :class:`~twostream.data.image_list.ImageListDataset`.
    """

    exif_transpose = False  # label maps are drawn on the stored pixel grid

    def __init__(self, root: str | Path, split: str, vocabulary: SceneVocabulary | None, transform: Any = None,
                 skip_bad: bool = True, max_items: int = 0, labels: str = "full", scene_level: int = -1,
                 label_map: str = "", workers: int = 0) -> None:
        root = Path(root)
        if labels not in ("full", "ade150"):
            raise ValueError(f"ADE20K full: labels must be full or ade150, got '{labels}'")
        split_dir = root / IMAGES / split
        if not split_dir.is_dir():
            present = sorted(p.name for p in (root / IMAGES).iterdir()) if (root / IMAGES).is_dir() else []
            raise DataError(f"{split_dir}: folder not found" + (f" (found splits: {', '.join(present)})"
                                                                 if present else "") +
                            "; expected the ADE20K_2021_17_01 layout images/ADE/<split>/<group>/<scene>/*.jpg")
        index, listing = _index_and_listing(root, workers)
        stems, incomplete = listing[split]
        if incomplete:
            if not skip_bad:
                raise DataError(f"{incomplete[0]}: image without its .json or _seg.png ({len(incomplete)} in split "
                                f"'{split}'; set data.skip_bad=true to leave them out)")
            warn_list("image without its .json or _seg.png (left out)", incomplete)
        self.full_table = full_class_table(index["classes"])
        bad = [(s, index["images"][f"{split}/{s}"]["bad"]) for s in stems if "bad" in index["images"][f"{split}/{s}"]]
        if bad:
            if not skip_bad:
                raise DataError(f"{split_dir / bad[0][0]}.json: {bad[0][1]} ({len(bad)} such file(s); set "
                                "data.skip_bad=true to leave them out)")
            for stem, reason in bad[:MAX_NAMED]:
                log.warning("%s.json: %s (left out)", split_dir / stem, reason)
            if len(bad) > MAX_NAMED:
                log.warning("... and %d more annotation JSONs left out", len(bad) - MAX_NAMED)
        self.bad_json = len(bad)
        bad_set = {s for s, _ in bad}
        stems = [s for s in stems if s not in bad_set]
        scenes = [self._scene(index["images"][f"{split}/{s}"]["scene"], scene_level) for s in stems]
        table = sorted(set(scenes))
        lookup = {s: i for i, s in enumerate(table)}
        self.root, self.split, self.labels = root, split, labels
        self.class_table = self.full_table if labels == "full" else ade20k150()
        self._lut = map_to_ade150(self.full_table, label_map) if labels == "ade150" else None
        self._known = np.array([not n.startswith("unused_") for n in self.full_table.names], dtype=bool)
        self._known[0] = True
        names = encode([Path(s).name for s in stems])
        super().__init__(split_dir, encode([f"{s}.jpg" for s in stems]), names,
                         np.array([lookup[s] for s in scenes], dtype=np.int32), table, vocabulary,
                         transform=transform, skip_bad=skip_bad, max_items=max_items, what=f"ADE20K {split}")

    @staticmethod
    def _scene(path: list[str], level: int) -> str:
        level = max(-len(path), min(level, len(path) - 1))
        return path[level].strip().replace(" ", "_")

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` without transforms: ``(H, W, 3)`` uint8 image and ``(H, W)`` int64 labels of
        :attr:`class_table`."""
        image_path = self.image_path(index)
        seg_path = image_path.with_name(image_path.stem + "_seg.png")
        image = load_image(image_path, exif_transpose=False)
        seg = load_image(seg_path, exif_transpose=False).astype(np.int64)  # (H, W, 3) RGB
        if seg.shape[:2] != image.shape[:2]:
            raise DataError(f"{seg_path}: annotation is {seg.shape[1]}x{seg.shape[0]} but its image is "
                            f"{image.shape[1]}x{image.shape[0]} (W x H)")
        classes = seg[..., 0] // 10 * 256 + seg[..., 1]  # (H, W) whole-object class = name_ndx
        top = int(classes.max(initial=0))
        if top >= len(self._known) or not self._known[classes].all():
            values = np.unique(classes)
            unknown = values[(values >= len(self._known)) | ~self._known[np.minimum(values, len(self._known) - 1)]]
            raise DataError(f"{seg_path}: class index(es) {', '.join(map(str, unknown[:8].tolist()))} used by no "
                            f"annotation JSON (the table has {len(self._known) - 1} classes)")
        return image, classes if self._lut is None else self._lut[classes]
