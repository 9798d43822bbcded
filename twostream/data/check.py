"""Exhaustive validation of an ADEChallengeData2016-layout folder (``tools/prepare_ade20k.py --check``).

The reader (``ADE20KDataset``) checks files lazily, one item at a time; this module reads every file up front and
reports, each on one line naming the file: missing folders, images without annotations and the reverse, unreadable
or truncated images and annotations, annotations whose size differs from their image, label values outside
0..150 (255, the ignore label, is allowed and noted), images without a scene line and scene lines that name no
image. Where ``annotations_instance/<split>/`` exists (instance PNGs, ``data.instances``), every pair's instance PNG
is read too: missing, unreadable, not RGB, of another size, or with class ids outside 1..150. It also counts images
per split and prints the scene distribution.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from twostream.data.ade20k import INSTANCE_DIR, list_split, read_checked_instances, scene_file
from twostream.data.classes import IGNORE_INDEX, TABLE_FILE, ClassTable, ade20k150, read_class_table_csv
from twostream.data.io import DataError, exif_orientation, load_image, load_label, read_scene_categories

__all__ = ["CheckReport", "check_dataset"]


@dataclass
class CheckReport:
    """What ``check_dataset`` found. ``problems`` are errors (each one line naming a file); ``notes`` are not."""

    root: Path
    splits: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> images/annotations/pairs/checked
    scenes: dict[str, Counter] = field(default_factory=dict)  # split -> scene -> images
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, top: int = 15, max_lines: int = 200) -> str:
        """The report as text: counts, scene distribution, then every problem (up to ``max_lines``)."""
        lines = [f"dataset: {self.root}"]
        if self.counts:
            lines.append(f"{'split':<12}{'images':>9}{'annot.':>9}{'pairs':>9}{'checked':>9}")
            for s in self.splits:
                c = self.counts.get(s)
                if c:
                    lines.append(f"{s:<12}{c['images']:>9,}{c['annotations']:>9,}{c['pairs']:>9,}{c['checked']:>9,}")
        present = [s for s in self.splits if self.scenes.get(s)]
        if present:
            total = Counter()
            for s in present:
                total.update(self.scenes[s])
            n_scenes = ", ".join(f"{len(self.scenes[s]):,} in {s}" for s in present)
            lines.append(f"scenes: {len(total):,} names ({n_scenes}); the {min(top, len(total))} most frequent:")
            lines.append(f"  {'scene':<24}" + "".join(f"{s:>12}" for s in present))
            for name in sorted(total, key=lambda n: (-total[n], n))[:top]:
                lines.append(f"  {name:<24}" + "".join(f"{self.scenes[s].get(name, 0):>12,}" for s in present))
        for title, items in (("notes", self.notes), ("problems", self.problems)):
            if items:
                lines.append(f"{title} ({len(items):,}):")
                lines += [f"  {p}" for p in items[:max_lines]]
                if len(items) > max_lines:
                    lines.append(f"  ... and {len(items) - max_lines:,} more")
        lines.append("OK: no problems found" if self.ok else f"FAILED: {len(self.problems):,} problem(s)")
        return "\n".join(lines)


def _check_pair(image_path: Path, ann_path: Path, class_table: ClassTable,
                instance_path: Path | None = None) -> tuple[list[str], list[str]]:
    """Decode one pair (and its instance PNG, if given) fully. Returns (problems, notes), one line each."""
    num_labels = len(class_table)
    problems: list[str] = []
    notes: list[str] = []
    image = label = None
    try:
        image = load_image(image_path, exif_transpose=False)
        with Image.open(image_path) as im:
            orientation = exif_orientation(im)
        if orientation != 1:
            notes.append(f"{image_path}: EXIF orientation {orientation}; twostream reads the stored pixel grid "
                         "(as the annotation is), a viewer may show it rotated")
    except DataError as e:
        problems.append(str(e))
    try:
        label = load_label(ann_path)
    except DataError as e:
        problems.append(str(e))
    if image is not None and label is not None and image.shape[:2] != label.shape:
        problems.append(f"{ann_path}: annotation is {label.shape[1]}x{label.shape[0]} but its image "
                        f"{image_path.name} is {image.shape[1]}x{image.shape[0]} (W x H)")
    if label is not None:
        values = np.unique(label)
        bad = values[(values >= num_labels) & (values != IGNORE_INDEX)]
        if len(bad):
            problems.append(f"{ann_path}: label value(s) {', '.join(map(str, bad[:8].tolist()))} outside "
                            f"0..{num_labels - 1}")
        if IGNORE_INDEX in values:
            notes.append(f"{ann_path}: uses {IGNORE_INDEX} (read as ignore: no supervision)")
    if instance_path is not None and image is not None:
        try:
            read_checked_instances(instance_path, image.shape[:2], class_table)
        except DataError as e:
            problems.append(str(e))
    return problems, notes


def check_dataset(
    root: str | Path,
    splits: tuple[str, ...] | list[str] = ("training", "validation"),
    *,
    workers: int = 4,
    limit: int = 0,
    class_table: ClassTable | None = None,
) -> CheckReport:
    """Read every image and annotation of ``splits`` under ``root`` and report what is wrong.

    Args:
        workers: threads decoding files (PIL releases the GIL while decoding).
        limit: check only the first N pairs of each split (0 = all); listing and scene checks always cover all.
        class_table: the annotations' label set (default: the dataset's own ``class_table.csv`` when it has one,
            else ADE20K-150: labels 0..150).
    """
    root = Path(root)
    report = CheckReport(root=root, splits=list(splits))
    if class_table is None and (root / TABLE_FILE).is_file():
        try:
            class_table = read_class_table_csv(root / TABLE_FILE, name=root.name)
            report.notes.append(f"{root / TABLE_FILE}: the annotations' class table ({len(class_table)} labels)")
        except ValueError as e:
            report.problems.append(str(e))
    class_table = class_table or ade20k150()
    if not root.is_dir():
        report.problems.append(f"{root}: dataset folder not found")
        return report
    scenes: dict[str, str] = {}
    try:
        scenes = read_scene_categories(scene_file(root))
    except DataError as e:
        report.problems.append(str(e))
    seen: set[str] = set()
    for split in splits:
        try:
            pairs, no_annotation, no_image = list_split(root, split)
        except DataError as e:
            report.problems.append(str(e))
            continue
        report.problems += [f"{p}: image has no annotation" for p in no_annotation]
        report.problems += [f"{p}: annotation has no image" for p in no_image]
        stems = [s for s, _, _ in pairs] + [Path(p).stem for p in no_annotation]
        seen.update(stems)
        seen.update(Path(p).stem for p in no_image)
        if scenes:
            report.problems += [f"{root / 'images' / split / s}: image has no line in {scene_file(root).name}"
                                for s in sorted(stems) if s not in scenes]
            report.scenes[split] = Counter(scenes[s] for s in stems if s in scenes)
        todo = pairs[:limit] if limit else pairs
        instance_dir = root / INSTANCE_DIR / split
        has_instances = instance_dir.is_dir()
        instance_paths = [instance_dir / f"{stem}.png" if has_instances else None for stem, _, _ in todo]
        with ThreadPoolExecutor(max(1, workers)) as ex:
            results = list(ex.map(_check_pair, [p[1] for p in todo], [p[2] for p in todo],
                                  [class_table] * len(todo), instance_paths))
        if has_instances:
            report.notes.append(f"{instance_dir}: instance PNGs checked with their {len(todo):,} pairs")
        for problems, notes in results:
            report.problems += problems
            report.notes += notes
        report.counts[split] = {"images": len(pairs) + len(no_annotation), "annotations": len(pairs) + len(no_image),
                                "pairs": len(pairs), "checked": len(todo)}
    if scenes and report.counts:
        unknown = sorted(set(scenes) - seen)
        report.problems += [f"{scene_file(root)}: line for {s} names no image in {', '.join(report.counts)}"
                            for s in unknown]
    return report
