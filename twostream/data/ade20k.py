"""ADEChallengeData2016 reader: image, semantic label map and scene class per item.

Layout (the real release and ``tools/make_synthetic.py`` output alike)::

    root/images/{training,validation}/ADE_*.jpg
    root/annotations/{training,validation}/ADE_*.png   uint8: 0 = other, 1..150 = ade20k150() classes
    root/sceneCategories.txt                           "ADE_train_00000001 airport_terminal", both splits
    root/annotations_instance/{training,validation}/ADE_*.png   optional (data.instances): RGB, R = class id,
                                                                G = instance index 1..k (0 = no instance)

Bad items. Opening a dataset lists two folders and reads the scene file, nothing more, so it is fast on 20k images:
images without an annotation (and annotations without an image) and scene lines that name no image are found there,
logged with their names and counted. Everything that needs the file's contents (unreadable or truncated image,
annotation of another size, a label above 150) is found lazily, in ``__getitem__``. With ``skip_bad`` a bad item is
logged (one line naming the file), remembered, counted in ``dataset.skipped`` and replaced by the next good item,
so batches keep their size and the default collate works; without it the ``DataError`` propagates. Counts live in
the process that loaded the item (each DataLoader worker has its own); the log lines are the complete record.
``tools/prepare_ade20k.py --check`` reads every file up front. With ``instances`` the instance PNG of an item is read
with it: a missing, unreadable or mis-sized one, or one whose class ids fall outside the class table, is a bad item
like any other (a ``DataError`` naming the file; ``skip_bad`` applies).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from twostream.config import Config
from twostream.data.bad_items import SubstitutesBadItems
from twostream.data.classes import IGNORE_INDEX, ClassTable, ade20k150, dataset_class_table
from twostream.data.image_list import MAX_NAMED, warn_list
from twostream.data.io import IMAGE_EXTENSIONS, DataError, load_image, load_label, read_instances, read_scene_categories
from twostream.data.transforms import InstanceMasks, build_transforms, instance_targets
from twostream.data.vocabulary import SceneVocabulary, build_vocabulary, vocabulary_for_splits

__all__ = ["IMAGE_EXTENSIONS", "INSTANCE_DIR", "ADE20KDataset", "build_datasets", "list_split", "open_dataset",
           "read_checked_instances", "scene_file"]

log = logging.getLogger(__name__)

SCENE_FILE = "sceneCategories.txt"
INSTANCE_DIR = "annotations_instance"

# (image, mask) -> (image, mask), or with instances (image, mask, InstanceMasks) -> (image, mask, masks)
Transform = Callable[..., tuple[torch.Tensor, ...]]


def scene_file(root: str | Path) -> Path:
    return Path(root) / SCENE_FILE


def list_split(root: str | Path, split: str) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """Pair images with annotations by file stem, listing the two folders only (no file is opened).

    Returns:
        ``pairs``: ``(stem, image_path, annotation_path)`` sorted by stem; ``no_annotation``: image paths without an
        annotation; ``no_image``: annotation paths without an image.

    Raises:
        DataError: the root, ``images/<split>`` or ``annotations/<split>`` folder is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; download ADEChallengeData2016 (see datasets/README.md) "
                        "or generate one with tools/make_synthetic.py")
    image_dir, ann_dir = root / "images" / split, root / "annotations" / split
    for d in (image_dir, ann_dir):
        if not d.is_dir():
            present = sorted(p.name for p in d.parent.iterdir() if p.is_dir()) if d.parent.is_dir() else []
            hint = f" (found splits: {', '.join(present)})" if present else ""
            raise DataError(f"{d}: folder not found{hint}; expected the ADEChallengeData2016 layout "
                            "images/<split>/*.jpg and annotations/<split>/*.png")
    images: dict[str, Path] = {}
    with os.scandir(image_dir) as it:
        for e in it:
            stem, ext = os.path.splitext(e.name)
            if ext.lower() in IMAGE_EXTENSIONS and not stem.startswith("."):
                images.setdefault(stem, Path(e.path))
    annotations: dict[str, Path] = {}
    with os.scandir(ann_dir) as it:
        for e in it:
            stem, ext = os.path.splitext(e.name)
            if ext.lower() == ".png" and not stem.startswith("."):
                annotations[stem] = Path(e.path)
    pairs = [(s, images[s], annotations[s]) for s in sorted(images.keys() & annotations.keys())]
    no_annotation = [str(images[s]) for s in sorted(images.keys() - annotations.keys())]
    no_image = [str(annotations[s]) for s in sorted(annotations.keys() - images.keys())]
    return pairs, no_annotation, no_image


def read_checked_instances(path: Path, size: tuple[int, int], class_table: ClassTable) -> dict[str, np.ndarray]:
    """``read_instances(path)`` for an image of ``size`` ``(H, W)``, checked against it and ``class_table``.

    Raises:
        DataError: the file is missing or unreadable, of another size, or has a class id outside ``1..K-1``.
    """
    if not path.is_file():
        raise DataError(f"{path}: instance annotation not found (one PNG per image in {INSTANCE_DIR}/"
                        f"{path.parent.name}/ is needed with data.instances=true)")
    inst = read_instances(path)
    h, w = inst["masks"].shape[1:]  # (M, H, W), also for M = 0
    if (h, w) != tuple(size):
        raise DataError(f"{path}: instance annotation is {w}x{h} but its image is {size[1]}x{size[0]} (W x H)")
    labels = inst["labels"]
    bad = labels[(labels < 1) | (labels >= len(class_table))]
    if len(bad):
        raise DataError(f"{path}: instance class id(s) {', '.join(map(str, np.unique(bad)[:8].tolist()))} "
                        f"outside 1..{len(class_table) - 1} (R channel = {class_table.name} class id)")
    return inst


class ADE20KDataset(SubstitutesBadItems, Dataset):
    """One split of an ADEChallengeData2016-layout folder.

    Args:
        root: the dataset folder (``images/``, ``annotations/``, ``sceneCategories.txt``).
        split: ``"training"`` or ``"validation"`` (any folder name under ``images/``).
        vocabulary: the scene classes. Images whose scene has no class (outside the vocabulary with
            ``unlisted: drop``, or without a scene line) are left out. ``None`` keeps every image with scene ``-1``
            (segmentation training needs no scene) and makes ``sceneCategories.txt`` optional.
        transform: ``(Image (3, H, W) uint8, Mask (H, W) int64) -> (image, mask)``, e.g. ``build_transforms``;
            ``None`` returns the full-size image scaled to ``[0, 1]``.
        skip_bad: replace an unreadable or inconsistent item by the next good one (logged, counted in
            ``skipped``) instead of raising ``DataError``; pairs missing a file are always left out (and logged)
            with ``skip_bad`` and are an error without it.
        max_items: keep only the first N items (in file-name order); 0 keeps all.
        class_table: the label set of the annotations; labels must be below ``len(class_table)`` or equal 255.
        instances: also read ``annotations_instance/<split>/<stem>.png`` (R = class id, G = instance index) and
            transform its masks jointly with the image; the folder must exist.

    Attributes:
        keep_original_labels: also return ``"sem_seg_original"``, the annotation before the transform ``(H0, W0)``
            int64 at the image's own size (the same decoded file, not read again): what evaluation scores
            segmentation and graphs against. Off by default.

    Items (``__getitem__``) follow the data contract: ``{"image": (3, H, W) float32 in [0, 1], "sem_seg": (H, W)
    int64 (0 = other, 1..150, 255 = ignore), "scene": int (-1 = unknown), "name": str}``, with ``instances`` also
    ``"instances": {"boxes": (M, 4) float32 xyxy pixels of the transformed image (x1, y1 exclusive), "labels": (M,)
    int64 class ids, "masks": (M, H, W) bool}``: instances the transform cropped away are dropped and boxes are
    recomputed from the transformed masks (:func:`~twostream.data.transforms.instance_targets`).
    """

    keep_original_labels = False

    def __init__(
        self,
        root: str | Path,
        split: str,
        vocabulary: SceneVocabulary | None,
        transform: Transform | None = None,
        skip_bad: bool = True,
        max_items: int = 0,
        class_table: ClassTable | None = None,
        instances: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.instances = instances
        self.vocabulary = vocabulary
        self.transform = transform
        self.skip_bad = skip_bad
        self.class_table = class_table or ade20k150()
        self.num_labels = len(self.class_table)  # valid labels: 0 .. num_labels - 1, and IGNORE_INDEX
        if max_items < 0:
            raise ValueError(f"ADE20KDataset: max_items must be >= 0 (0 = all), got {max_items}")

        pairs, no_annotation, no_image = list_split(self.root, split)
        if instances and not (self.root / INSTANCE_DIR / split).is_dir():
            raise DataError(f"{self.root / INSTANCE_DIR / split}: folder not found, but instances were asked for "
                            "(data.instances=true); add the instance PNGs (tools/make_synthetic.py --instances "
                            "writes them) or set data.instances=false")
        self.missing: list[str] = no_annotation + no_image  # file names of incomplete pairs (left out)
        if self.missing:
            if not skip_bad:
                first = no_annotation[0] + ": image has no annotation" if no_annotation else \
                    no_image[0] + ": annotation has no image"
                raise DataError(f"{first} ({len(self.missing)} incomplete pair(s) in split '{split}'; "
                                "set data.skip_bad=true to leave them out)")
            warn_list("image has no annotation (left out)", no_annotation, log)
            warn_list("annotation has no image (left out)", no_image, log)

        scenes: dict[str, str] = {}
        sfile = scene_file(self.root)
        if vocabulary is not None or sfile.is_file():
            scenes = read_scene_categories(sfile)
        self.scene_names: dict[str, str] = {}  # stem -> scene name, for every listed image with a scene line
        items: list[tuple[str, Path, Path, int]] = []
        unlabelled: list[str] = []
        self.dropped = 0  # images whose scene is outside the vocabulary
        for stem, image_path, ann_path in pairs:
            scene = scenes.get(stem)
            if scene is not None:
                self.scene_names[stem] = scene
            if vocabulary is None:
                items.append((stem, image_path, ann_path, -1))
                continue
            if scene is None:
                unlabelled.append(str(image_path))
                continue
            index = vocabulary.index(scene)
            if index is None:
                self.dropped += 1
                continue
            items.append((stem, image_path, ann_path, index))
        self.unlabelled = unlabelled  # images without a scene line (left out when a vocabulary is given)
        if unlabelled:
            warn_list(f"image has no line in {sfile} (left out: no scene label)", unlabelled, log)
        if max_items:
            items = items[:max_items]
        self.items = items
        if not items:
            raise DataError(f"{self.root / 'images' / split}: no usable items (pairs: {len(pairs)}, outside the "
                            f"vocabulary: {self.dropped}, without scene: {len(unlabelled)})")
        self.skipped = 0
        self.bad: dict[int, str] = {}  # index -> the one-line reason; a known bad item is not read twice

    # ---------------------------------------------------------------------------------------------------- items

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [it[0] for it in self.items]

    @property
    def scenes(self) -> list[int]:
        """Scene class index per item (no file is read): for class weights and samplers."""
        return [it[3] for it in self.items]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read item ``index`` without transforms: ``(H, W, 3)`` uint8 image and ``(H, W)`` uint8 labels.

        Raises:
            DataError: an unreadable file, an annotation of a different size, a label outside the class table.
        """
        _, image_path, ann_path, _ = self.items[index]
        image = load_image(image_path, exif_transpose=False)  # annotations are drawn on the stored pixel grid
        label = load_label(ann_path)
        if image.shape[:2] != label.shape:
            raise DataError(f"{ann_path}: annotation is {label.shape[1]}x{label.shape[0]} but its image "
                            f"{image_path.name} is {image.shape[1]}x{image.shape[0]} (W x H)")
        top = int(label.max(initial=0))
        if top >= self.num_labels and top != IGNORE_INDEX:
            values = np.unique(label)
            bad = values[(values >= self.num_labels) & (values != IGNORE_INDEX)]
            raise DataError(f"{ann_path}: label value(s) {', '.join(map(str, bad[:8].tolist()))} outside "
                            f"0..{self.num_labels - 1} (the {self.class_table.name} classes; 255 = ignore)")
        return image, label

    def instance_path(self, index: int) -> Path:
        return self.root / INSTANCE_DIR / self.split / f"{self.items[index][0]}.png"

    def load_instances(self, index: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
        """Read item ``index``'s instance PNG (``read_instances``: boxes, labels, masks ``(M, H, W)`` bool).

        Args:
            size: ``(H, W)`` of the item's image, which the instance map must match.

        Raises:
            DataError: the file is missing or unreadable, of another size, or has a class id outside the table.
        """
        return read_checked_instances(self.instance_path(index), size, self.class_table)

    def _item(self, index: int) -> dict[str, Any]:
        image, label = self.load(index)
        stem, _, _, scene = self.items[index]
        img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))  # (H, W, 3) -> (3, H, W) uint8
        mask = tv_tensors.Mask(torch.from_numpy(label).to(torch.int64))  # (H, W)
        inputs: tuple = (img, mask)
        if self.instances:
            inst = self.load_instances(index, label.shape)
            # uint8, not bool: the resize kernels interpolate numbers (nearest, so values stay 0/1)
            inputs += (InstanceMasks(torch.from_numpy(inst["masks"]).to(torch.uint8)),)  # (M, H, W)
        if self.transform is not None:
            inputs = self.transform(*inputs)
        img, mask = inputs[0].as_subclass(torch.Tensor), inputs[1]
        if img.dtype == torch.uint8:
            img = img.float().div_(255.0)
        item = {"image": img, "sem_seg": mask.as_subclass(torch.Tensor).long(), "scene": scene, "name": stem}
        if self.keep_original_labels:
            item["sem_seg_original"] = torch.from_numpy(label).long()
        if self.instances:
            item["instances"] = instance_targets(inputs[2], torch.from_numpy(inst["labels"]))
        return item

    def _unreadable_message(self, index: int, count: int) -> str:
        return (f"{self.root / 'images' / self.split}: {count} consecutive items from index {index} are unreadable; "
                "run tools/prepare_ade20k.py --check on the dataset")

    # ---------------------------------------------------------------------------------------------------- reports

    def __repr__(self) -> str:
        vocab = f"{len(self.vocabulary)} scenes" if self.vocabulary is not None else "no scenes"
        return f"ADE20KDataset({self.root}, split={self.split}, {len(self)} items, {vocab})"


def _split_scene_names(root: Path, split: str, scenes: dict[str, str]) -> list[str]:
    """Scene names of the images present in ``images/<split>`` (one per image with a scene line)."""
    pairs, _, _ = list_split(root, split)
    return [scenes[s] for s, _, _ in pairs if s in scenes]


def _warn_unknown_scene_lines(root: Path, scenes: dict[str, str], splits: list[str]) -> list[str]:
    """Scene lines that name no image of the given splits: harmless for reading, but a sign of a mixed-up folder."""
    present: set[str] = set()
    for split in splits:
        image_dir = root / "images" / split
        if image_dir.is_dir():
            present.update(os.path.splitext(n)[0] for n in os.listdir(image_dir))
    unknown = sorted(set(scenes) - present)
    if unknown:
        sfile = scene_file(root)
        for stem in unknown[:MAX_NAMED]:
            log.warning("%s: line for %s names no image in %s", sfile, stem, "/".join(splits))
        if len(unknown) > MAX_NAMED:
            log.warning("%s: ... and %d more lines name no image", sfile, len(unknown) - MAX_NAMED)
    return unknown


def open_dataset(cfg: Config, split: str, vocabulary: SceneVocabulary | None, transform: Transform | None = None):
    """``split`` of ``cfg.data.root`` read by the reader ``cfg.data.format`` names, in the data contract."""
    d = cfg.data
    common = {"vocabulary": vocabulary, "transform": transform, "skip_bad": d.skip_bad, "max_items": d.max_items}
    if d.format == "ade20k":
        return ADE20KDataset(d.root, split, instances=d.instances, class_table=dataset_class_table(d), **common)
    if d.format == "ade20k_full":
        from twostream.data.ade20k_full import ADE20KFullDataset

        return ADE20KFullDataset(d.root, split, labels=d.full.labels, scene_level=d.full.scene_level,
                                 label_map=d.full.label_map, workers=d.num_workers, **common)
    if d.format == "places365":
        from twostream.data.places365 import Places365Dataset

        return Places365Dataset(d.root, split, **common)
    if d.format == "folder":
        from twostream.data.folder import SceneFolderDataset

        return SceneFolderDataset(d.root, split, **common)
    raise ValueError(f"data.format '{d.format}' is not one of ade20k, ade20k_full, places365, folder")


def _build_list_datasets(cfg: Config) -> tuple[Any, Any, SceneVocabulary]:
    """:func:`build_datasets` for the list readers (every format but ade20k): the vocabulary comes from the scene
    names of the whole training split, which opening its list already gave (no second pass over the files)."""
    d = cfg.data
    every = dataclasses.replace(cfg, data=dataclasses.replace(d, max_items=0))
    train_all = open_dataset(every, d.train_split, None, build_transforms(d, train=True))
    val_all = open_dataset(every, d.val_split, None, build_transforms(d, train=False))
    train, val, vocabulary, table = vocabulary_for_splits(train_all, val_all, d.scenes, d.max_items,
                                                          (d.train_split, d.val_split))
    log.info("scene vocabulary (%s, unlisted: %s): %d classes\n%s", d.scenes.mode, d.scenes.unlisted, len(vocabulary),
             table)
    log.info("opened %s (%s): %d training and %d validation items", d.root, d.format, len(train), len(val))
    return train, val, vocabulary


def build_datasets(cfg: Config) -> tuple[Any, Any, SceneVocabulary]:
    """Open the training and validation splits of ``cfg.data.root`` with the vocabulary ``cfg.data.scenes`` picks.

    The reader is ``cfg.data.format``'s (:func:`open_dataset`). The vocabulary is chosen from the scenes of the
    training split's images; a table of images per class and split is logged. Save
    ``vocabulary.save(run_dir / "vocabulary.json")`` beside the checkpoints.

    Returns:
        ``(train_dataset, val_dataset, vocabulary)``, training with ``build_transforms(train=True)``.
    """
    d = cfg.data
    if d.format != "ade20k":
        return _build_list_datasets(cfg)
    root = Path(d.root)
    list_split(root, d.train_split)  # fail early, with the folder's name, before reading anything else
    list_split(root, d.val_split)
    scenes = read_scene_categories(scene_file(root))
    _warn_unknown_scene_lines(root, scenes, [d.train_split, d.val_split])
    train_scenes = _split_scene_names(root, d.train_split, scenes)
    vocabulary = build_vocabulary(d.scenes, train_scenes)
    val_scenes = _split_scene_names(root, d.val_split, scenes)
    log.info("scene vocabulary (%s, unlisted: %s): %d classes\n%s", d.scenes.mode, d.scenes.unlisted, len(vocabulary),
             vocabulary.table({d.train_split: train_scenes, d.val_split: val_scenes}))
    common = {"vocabulary": vocabulary, "skip_bad": d.skip_bad, "max_items": d.max_items, "instances": d.instances,
              "class_table": dataset_class_table(d)}
    train = ADE20KDataset(root, d.train_split, transform=build_transforms(d, train=True), **common)
    val = ADE20KDataset(root, d.val_split, transform=build_transforms(d, train=False), **common)
    log.info("opened %s: %d training and %d validation items", root, len(train), len(val))
    return train, val, vocabulary
