"""Bring your own data: a folder per scene (plus masks and a class table) -> the ADEChallengeData2016 layout.

``tools/prepare_dataset.py`` runs :func:`convert_folders`. The input is what users have::

    photos/<scene>/<name>.jpg                 a folder per scene (torchvision ImageFolder style), or
    photos/{train,val}/<scene>/<name>.jpg     already split (train|training, val|validation)
    masks/<same relative path>/<name>.png     optional: one label PNG per image, mirroring photos/ (or all in one
                                              folder, masks/<name>.png); pixel value = class id, or class colour
    classes.csv                               with masks: id,name[,r,g,b][,stuff] (any numbering: 0- or 1-based)

and the output the layout every twostream reader and tool takes (``<out>/images/{training,validation}/``,
``annotations/...``, ``sceneCategories.txt``), plus ``class_table.csv`` (the labels renumbered ``0..K``, 0 = background,
read by :func:`~twostream.data.classes.dataset_class_table`), ``manifest.csv`` (which input became which file) and
``prepare.json`` (the settings and the id mapping).

Every input is checked before anything is kept, each problem one line naming the file: unreadable images or masks,
images without a mask and masks without an image, a mask of another size than its image (with the EXIF rotation
and the transpose named when they explain it), JPEG masks (lossy: ids change at edges), colour masks without colours
in the class table, mask ids or colours that are not in the class table (named with the file), and a class table
with duplicate, negative or too many ids. Hints name the usual cause: masks counted from 1 against a table counted
from 0 (every unknown id is one past the table's last) and the reverse, classes no mask uses. The output is written
into ``<out>.partial`` and renamed to ``<out>`` only when no problem was found.

Labels. twostream reads 8-bit annotations where 0 is the background ("other": no graph node), 1..K the classes and
255 "ignore" (no supervision). The table's ids are renumbered in order to 1..K. Its id 0 is the background when its
name says so (background, other, unlabeled, void, ...) or ``background_id=0``; otherwise the table is 0-based and
id 0 becomes label 1. A mask value equal to ``ignore_id`` (default 255) stays 255. Without masks, annotations are
all 255 (no supervision: train the classifier on graphs from a published segmenter, ``model.segmenter.kind: hf``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from twostream.data.classes import (
    IGNORE_INDEX,
    TABLE_FILE,
    ClassTable,
    write_class_table_csv,
)
from twostream.data.io import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, DataError, exif_orientation, load_image
from twostream.data.label_plan import InputClasses, LabelPlan, pack_rgb, plan_labels, read_input_classes

log = logging.getLogger(__name__)

__all__ = ["ConvertReport", "convert_folders", "plan_labels", "read_input_classes"]

SPLIT_NAMES = {"train": "training", "training": "training", "val": "validation", "validation": "validation",
               "valid": "validation"}
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # lossless
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")
_MAX_NAMED = 20  # files named per kind of problem before the rest are counted


# --------------------------------------------------------------------------------------------------------------------
# Listing the input
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Item:
    scene: str
    image: Path
    mask: Path | None
    split: str = ""
    stem: str = ""


def _clean(name: str) -> str:
    """A scene or file name safe as a stem and a scene label: ``[A-Za-z0-9_.-]`` only (spaces -> ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name.strip()).strip("_.") or "x"


def _image_suffixes() -> frozenset[str]:
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _scene_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_images(images: Path, report: ConvertReport) -> list[tuple[str, str | None, Path]]:
    """``(scene, split or None, image path)`` for every image under ``images`` (a folder per scene, optionally
    inside train/val folders)."""
    if not images.is_dir():
        raise DataError(f"{images}: image folder not found")
    exts = _image_suffixes()
    top = _scene_folders(images)
    splits = {p.name.lower(): p for p in top if p.name.lower() in SPLIT_NAMES}
    if splits and len(splits) != len(top):
        others = sorted(p.name for p in top if p.name.lower() not in SPLIT_NAMES)
        raise DataError(f"{images}: holds split folders ({', '.join(sorted(splits))}) and other folders "
                        f"({', '.join(others[:5])}); give either a folder per scene, or train/ and val/ each holding "
                        "a folder per scene")
    groups = [(SPLIT_NAMES[name], folder) for name, folder in sorted(splits.items())] if splits else [(None, images)]
    found: list[tuple[str, str | None, Path]] = []
    for split, root in groups:
        scenes = _scene_folders(root)
        if not scenes:
            raise DataError(f"{root}: no scene folders; expected {root}/<scene>/<image files>")
        loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in exts)
        if loose:
            report.problems.append(f"{root / loose[0]}: image outside a scene folder ({len(loose)} such files); "
                                   "move each image into the folder of its scene")
        for folder in scenes:
            files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
            pics = [p for p in files if p.suffix.lower() in exts]
            skipped = len(files) - len(pics)
            if skipped:
                report.notes.append(f"{folder}: {skipped} file(s) that are not images left out")
            if not pics:
                report.notes.append(f"{folder}: no images; scene left out")
                continue
            scene = _clean(folder.name)
            if scene != folder.name:
                report.notes.append(f"{folder}: scene named '{scene}' (scene names have no spaces or punctuation)")
            found += [(scene, split, p) for p in pics]
    return found


def _find_masks(masks: Path, images: Path, entries, report: ConvertReport) -> list[Path | None]:
    """The mask of each image: ``masks/<relative path>/<stem>.png`` (mirroring the image folder) or
    ``masks/<stem>.png`` (one flat folder); images without one and masks without an image are problems."""
    if not masks.is_dir():
        raise DataError(f"{masks}: mask folder not found")
    by_rel: dict[tuple[str, ...], Path] = {}
    flat: dict[str, list[Path]] = {}
    for p in masks.rglob("*"):
        if not p.is_file() or p.name.startswith("."):
            continue
        rel = p.relative_to(masks).with_suffix("")
        by_rel[rel.parts] = p
        flat.setdefault(p.stem, []).append(p)
    used: set[Path] = set()
    out: list[Path | None] = []
    missing: list[Path] = []
    for _, _, image in entries:
        rel = image.relative_to(images).with_suffix("").parts
        mask = by_rel.get(rel)
        if mask is None and len(flat.get(image.stem, [])) == 1:
            mask = flat[image.stem][0]
        if mask is None:
            missing.append(image)
        else:
            used.add(mask)
        out.append(mask)
    for image in missing[:_MAX_NAMED]:
        report.problems.append(f"{image}: image has no mask (expected {masks / image.relative_to(images).parent}/"
                               f"{image.stem}.png or {masks}/{image.stem}.png)")
    if len(missing) > _MAX_NAMED:
        report.problems.append(f"... and {len(missing) - _MAX_NAMED} more images without a mask")
    orphans = sorted(set(by_rel.values()) - used)
    for mask in orphans[:_MAX_NAMED]:
        report.problems.append(f"{mask}: mask has no image")
    if len(orphans) > _MAX_NAMED:
        report.problems.append(f"... and {len(orphans) - _MAX_NAMED} more masks without an image")
    return out


def _assign_splits(items: list[_Item], val_fraction: float, seed: int, report: ConvertReport) -> None:
    """Items without a split get one: per scene, ``round(n * val_fraction)`` random images (at least one when the
    scene has two or more) go to validation, the same ones for the same seed and files."""
    rng = np.random.default_rng(seed)
    by_scene: dict[str, list[_Item]] = {}
    for it in items:
        if not it.split:
            by_scene.setdefault(it.scene, []).append(it)
    for scene in sorted(by_scene):
        group = sorted(by_scene[scene], key=lambda it: str(it.image))
        n_val = round(len(group) * val_fraction)
        if val_fraction > 0 and len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        val = set(rng.permutation(len(group))[:n_val].tolist())
        for k, it in enumerate(group):
            it.split = "validation" if k in val else "training"
        if n_val == 0:
            report.notes.append(f"scene {scene}: {len(group)} image(s), none for validation")


def _assign_stems(items: list[_Item]) -> None:
    """Output stems ``<scene>_<file stem>``, unique (``-2``, ``-3`` for repeats, case-insensitively)."""
    used: set[str] = set()
    for it in items:
        base = f"{it.scene}_{_clean(it.image.stem)}"
        stem, k = base, 2
        while stem.lower() in used:
            stem, k = f"{base}-{k}", k + 1
        used.add(stem.lower())
        it.stem = stem


# --------------------------------------------------------------------------------------------------------------------
# One item
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Result:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ids: np.ndarray | None = None  # the input ids present in the mask
    unknown: np.ndarray | None = None  # ids (or packed colours) not in the table


def _read_mask(path: Path, plan: LabelPlan) -> tuple[np.ndarray | None, str | None, np.ndarray | None]:
    """``(input ids (H, W) int64, problem, unknown colours)``: single-channel masks give their values, colour masks
    the id of each colour (via the table's r, g, b)."""
    if path.suffix.lower() in LOSSY_SUFFIXES:
        return None, (f"{path}: mask is a {path.suffix} file: lossy compression changes ids at every edge; save "
                      "masks as PNG"), None
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                return None, f"{path}: mask is too large ({w}x{h})", None
            im.load()
            mode = im.mode
            if mode in ("L", "P", "1"):
                return np.asarray(im, dtype=np.uint8).astype(np.int64), None, None
            if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                return np.asarray(im).astype(np.int64), None, None
            if mode in ("RGB", "RGBA"):
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
            else:
                return None, f"{path}: mask is a {mode} image; expected one id per pixel (8- or 16-bit PNG)", None
    except (OSError, SyntaxError, ValueError) as e:
        return None, f"{path}: mask cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})", None
    if plan.colour_codes is None:
        return None, (f"{path}: mask is in colour (RGB) but the class table has no r,g,b columns; add each class's "
                      "colour to the table, or save masks with one id per pixel"), None
    codes = pack_rgb(rgb)  # (H, W)
    uniq, inverse = np.unique(codes, return_inverse=True)
    pos = np.searchsorted(plan.colour_codes, uniq).clip(0, len(plan.colour_codes) - 1)
    known = plan.colour_codes[pos] == uniq
    if not known.all():
        return None, None, uniq[~known]
    return plan.colour_ids[pos][inverse].reshape(codes.shape), None, None


def _process(it: _Item, plan: LabelPlan, out: Path | None) -> _Result:
    """Check one image (and mask) and, with ``out``, write its files."""
    res = _Result()
    try:
        image = load_image(it.image, exif_transpose=False)  # (H, W, 3) as stored; decodes the whole file
        with Image.open(it.image) as im:
            orientation = exif_orientation(im)
    except DataError as e:
        res.problems.append(str(e))
        return res
    upright = None  # the image with its EXIF rotation applied, when the pixels must be turned
    ids = None
    if it.mask is not None:
        ids, problem, bad_colours = _read_mask(it.mask, plan)
        if problem:
            res.problems.append(problem)
            return res
        if bad_colours is not None:
            shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in bad_colours[:6].tolist())
            res.problems.append(f"{it.mask}: colour(s) {shown} not in {plan.source}")
            res.unknown = bad_colours
            return res
        h, w = image.shape[:2]
        mh, mw = ids.shape
        if (mh, mw) != (h, w):
            if orientation in (5, 6, 7, 8) and (mh, mw) == (w, h):  # a quarter turn: the displayed photo is W x H
                upright = load_image(it.image, exif_transpose=True)
                res.notes.append(f"{it.image}: EXIF orientation {orientation}; the mask matches the rotated photo, "
                                 "so the image is written upright")
            else:
                hint = " (transposed: width and height swapped)" if (mh, mw) == (w, h) else ""
                res.problems.append(f"{it.mask}: mask is {mw}x{mh} but its image {it.image.name} is {w}x{h} "
                                    f"(W x H){hint}")
                return res
        elif orientation != 1:
            res.notes.append(f"{it.image}: EXIF orientation {orientation}; the mask matches the pixels as stored, "
                             "which twostream reads (a viewer may show the photo rotated)")
        present = np.unique(ids)
        res.ids = present
        labels = plan.lut[present.clip(0, len(plan.lut) - 1)]
        bad = present[(labels < 0) | (present < 0) | (present >= len(plan.lut))]
        if len(bad):
            res.unknown = bad
            shown = ", ".join(map(str, bad[:8].tolist()))
            res.problems.append(f"{it.mask}: id(s) {shown} not in {plan.source} ({_id_range(plan)})")
            return res
    elif orientation != 1:
        upright = load_image(it.image, exif_transpose=True)  # no mask to align with: store what the photo shows
    if out is None:
        return res
    img_dir, ann_dir = out / "images" / it.split, out / "annotations" / it.split
    suffix = it.image.suffix.lower()
    if upright is None and suffix in IMAGE_EXTENSIONS:  # what the ADE20K reader lists; others are re-encoded as PNG
        shutil.copyfile(it.image, img_dir / f"{it.stem}{'.jpg' if suffix == '.jpeg' else suffix}")
    else:
        Image.fromarray(upright if upright is not None else image).save(img_dir / f"{it.stem}.png")
    shape = (upright if upright is not None else image).shape[:2]
    label = plan.lut[ids].astype(np.uint8) if ids is not None else np.full(shape, IGNORE_INDEX, np.uint8)
    pal = Image.fromarray(label)  # "L"; putpalette makes it "P" with the same values
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(plan.table)] = plan.table.palette
    palette[IGNORE_INDEX] = 255
    pal.putpalette(palette.reshape(-1).tolist())
    pal.save(ann_dir / f"{it.stem}.png", optimize=True)
    return res


def _id_range(plan: LabelPlan) -> str:
    known = np.flatnonzero(plan.lut[:IGNORE_INDEX] >= 0)
    extra = [i for i in np.flatnonzero(plan.lut >= 0).tolist() if i >= IGNORE_INDEX and i != plan.ignore_id]
    ids = sorted(set(known.tolist()) | set(extra))
    return f"ids {ids[0]}..{ids[-1]}" + (f", ignore {plan.ignore_id}" if plan.ignore_id not in ids else "")


# --------------------------------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ConvertReport:
    """What :func:`convert_folders` found and did. ``problems`` stop the conversion; ``notes`` and ``hints`` do
    not (hints name the likely cause of the problems)."""

    out: Path
    counts: dict[str, Counter] = field(default_factory=dict)  # split -> scene -> images
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    labels: str = ""
    class_table: ClassTable | None = None
    written: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, max_lines: int = 100) -> str:
        lines = [f"dataset: {self.out}"]
        if self.labels:
            lines.append(f"labels: {self.labels}")
        if self.counts:
            scenes = sorted(set().union(*self.counts.values()))
            splits = [s for s in ("training", "validation") if s in self.counts]
            lines.append(f"  {'scene':<24}" + "".join(f"{s:>12}" for s in splits))
            for sc in scenes:
                lines.append(f"  {sc:<24}" + "".join(f"{self.counts[s].get(sc, 0):>12,}" for s in splits))
            lines.append(f"  {'total':<24}" + "".join(f"{sum(self.counts[s].values()):>12,}" for s in splits))
        for title, items in (("notes", self.notes), ("problems", self.problems), ("hints", self.hints)):
            if items:
                lines.append(f"{title} ({len(items):,}):")
                lines += [f"  {p}" for p in items[:max_lines]]
                if len(items) > max_lines:
                    lines.append(f"  ... and {len(items) - max_lines:,} more")
        if self.ok:
            lines.append(f"OK: wrote {self.out}" if self.written else "OK: no problems found (nothing written)")
        else:
            lines.append(f"FAILED: {len(self.problems):,} problem(s); nothing written")
        return "\n".join(lines)


def _hints(plan: LabelPlan, classes: InputClasses | None, results: list[_Result], report: ConvertReport) -> None:
    """The usual causes of id problems, from the ids seen over all masks."""
    unknown = set()
    for r in results:
        if r.unknown is not None and r.ids is not None:
            unknown.update(r.unknown.tolist())
    seen: Counter = Counter()
    for r in results:
        if r.ids is not None:
            seen.update(r.ids.tolist())
    if classes is None:
        if unknown:
            report.hints.append(f"masks hold ids up to {max(unknown)} but no class table was given, so they were read "
                                "as ADE20K-150 ids (0..150); pass --classes CSV with your classes")
        return
    table_ids = sorted(i for i in classes.ids if i != plan.background_id)
    last = max(classes.ids)
    if unknown and unknown == {last + 1}:
        report.hints.append(f"every unknown id is {last + 1}, one past the table's last id ({last}): the masks may "
                            f"count from 1 while {classes.path.name} counts from 0 (number the table from 1, 0 = "
                            "unlabelled), or the table lacks its last class")
    elif unknown:
        report.hints.append(f"mask ids {', '.join(map(str, sorted(unknown)[:10]))} are not in {classes.path.name} "
                            f"(ids {min(classes.ids)}..{last}): the masks use more classes than the table lists")
    if not seen:
        return
    if plan.zero_based and 0 not in seen and not unknown:
        report.hints.append(f"no mask uses id 0 ('{classes.names[classes.ids.index(0)]}', a class because "
                            f"{classes.path.name} counts from 0): if 0 means unlabelled in your masks, pass "
                            "--background-id 0")
    if not plan.zero_based and plan.background_id is None and last not in seen and seen.get(0):
        report.hints.append(f"no mask uses the table's last id {last} while id 0 (read as unlabelled) occurs in "
                            f"{seen[0]} masks: are the masks counted from 0 against a table counted from 1?")
    unused = [classes.names[classes.ids.index(i)] for i in table_ids if i not in seen]
    if unused:
        report.notes.append(f"{len(unused)} of {len(table_ids)} classes occur in no mask: {', '.join(unused[:10])}"
                            + (" ..." if len(unused) > 10 else ""))


def convert_folders(images: str | Path, out: str | Path, *, masks: str | Path | None = None,
                    classes: str | Path | None = None, val_fraction: float = 0.2, seed: int = 0,
                    ignore_id: int = IGNORE_INDEX, background_id: int | None = None, workers: int = 4,
                    check_only: bool = False, overwrite: bool = False) -> ConvertReport:
    """Check a folder-per-scene dataset and write it in the ADEChallengeData2016 layout (module docstring).

    Args:
        images: ``<scene>/<image>`` folders, optionally under ``train/`` and ``val/``.
        out: the dataset folder to write (must not exist unless ``overwrite``).
        masks: label PNGs mirroring ``images`` (or in one folder), or ``None``.
        classes: the class table CSV of the masks (``None`` with masks: ADE20K-150 ids).
        val_fraction: share of each scene's images held out for validation when ``images`` is not split.
        seed: which images are held out.
        ignore_id: the mask value meaning "not annotated" (written as 255).
        background_id: the table id meaning background (default: id 0 when its name says background).
        workers: threads decoding and writing files.
        check_only: check everything, write nothing.

    Returns:
        The :class:`ConvertReport`; ``report.ok`` is false (and nothing is written) when a problem was found.
    """
    images, out = Path(images), Path(out)
    report = ConvertReport(out=images if check_only else out)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if classes is not None and masks is None:
        raise ValueError("a class table describes masks: pass the masks too (or drop the class table)")
    if out.exists() and not check_only and not overwrite:
        raise DataError(f"{out}: already exists; choose a new folder or pass --overwrite")
    input_classes = read_input_classes(classes) if classes is not None else None
    plan = plan_labels(input_classes, background_id=background_id, ignore_id=ignore_id, name=_clean(out.name))
    report.class_table, report.labels = plan.table, plan.description if masks is not None else \
        "no masks: annotations are all 255 (no supervision); class table ADE20K-150"
    entries = _list_images(images, report)
    if not entries:
        raise DataError(f"{images}: no images found")
    mask_paths = _find_masks(Path(masks), images, entries, report) if masks is not None else [None] * len(entries)
    items = [_Item(scene, path, mask, split or "") for (scene, split, path), mask in zip(entries, mask_paths)
             if masks is None or mask is not None]
    _assign_splits(items, val_fraction, seed, report)
    _assign_stems(items)
    for it in items:
        report.counts.setdefault(it.split, Counter())[it.scene] += 1
    if not any(it.split == "validation" for it in items):
        report.problems.append(f"{images}: no image for validation; raise --val-fraction or add a val/ folder")
    partial = out.with_name(out.name + ".partial")
    target = None if check_only else partial
    if target is not None:
        shutil.rmtree(partial, ignore_errors=True)
        for split in ("training", "validation"):
            (partial / "images" / split).mkdir(parents=True)
            (partial / "annotations" / split).mkdir(parents=True)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(lambda it: _process(it, plan, target), items))
    for r in results:
        report.problems += r.problems
        report.notes += r.notes
    if masks is not None:
        _hints(plan, input_classes, results, report)
    if check_only:
        return report
    if not report.ok:
        shutil.rmtree(partial, ignore_errors=True)
        return report
    with (partial / "sceneCategories.txt").open("w") as f:
        f.writelines(f"{it.stem} {it.scene}\n" for it in sorted(items, key=lambda it: it.stem))
    with (partial / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stem", "split", "scene", "image", "mask"])
        w.writerows([it.stem, it.split, it.scene, str(it.image), str(it.mask or "")] for it in items)
    if masks is not None and input_classes is not None:
        write_class_table_csv(plan.table, partial / TABLE_FILE)
    mapping = {str(i): int(plan.lut[i]) for i in (input_classes.ids if input_classes else ())}
    (partial / "prepare.json").write_text(json.dumps({
        "images": str(images), "masks": str(masks) if masks else None, "classes": str(classes) if classes else None,
        "val_fraction": val_fraction, "seed": seed, "ignore_id": ignore_id, "background_id": plan.background_id,
        "labels": report.labels, "id_to_label": mapping,
        "counts": {s: dict(sorted(c.items())) for s, c in report.counts.items()}}, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    report.written = True
    log.info("wrote %d images to %s", len(items), out)
    return report
