"""Class tables: the names and colours a semantic map's labels refer to.

A :class:`ClassTable` travels with every segmenter into the scene graph, the GNN's class embedding, the JSON output and
the visualizer. The project's own table is ADE20K-150 as ADEChallengeData2016 numbers it: 0 = ``other`` (unlabelled),
1..150 = the classes of objectInfo150 (``wall`` = 1). A segmenter trained on another label set (COCO, Cityscapes)
carries its own table instead.

A dataset of one's own (``tools/prepare_dataset.py``) keeps its table beside the data as ``class_table.csv`` (the
columns of the shipped ``ade20k150.csv``: ``id,name,stuff,r,g,b``; ids ``0..K-1``, 0 = background);
:func:`dataset_class_table` picks it up for training and evaluation (``data.class_table``), and the checkpoints carry
it from there on.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["IGNORE_INDEX", "TABLE_FILE", "ClassTable", "ade20k150", "dataset_class_table", "default_palette",
           "read_class_table_csv", "write_class_table_csv"]

IGNORE_INDEX = 255  # label of pixels that carry no supervision (padding, augmentation borders)
TABLE_FILE = "class_table.csv"  # a dataset's own class table, in its root folder


@dataclass(frozen=True)
class ClassTable:
    """Names and colours of a label set.

    Args:
        name: identifier of the label set, e.g. ``"ade20k150"``.
        names: class names indexed by label id; synonyms may follow the first name after ``;`` (``"building;edifice"``).
        palette: ``(K, 3)`` uint8 RGB colour per label id.
        stuff: per label id, whether the class is amorphous stuff (wall, sky) rather than a countable thing.
        background: the label id that means "none of the classes" (``0`` = other for ADE20K), or ``None``.
    """

    name: str
    names: tuple[str, ...]
    palette: np.ndarray = field(repr=False, compare=False)
    stuff: tuple[bool, ...] = field(repr=False, default=())
    background: int | None = 0

    def __post_init__(self) -> None:
        palette = np.asarray(self.palette, dtype=np.uint8)
        if palette.shape != (len(self.names), 3):
            raise ValueError(f"ClassTable {self.name}: palette shape {palette.shape} != ({len(self.names)}, 3)")
        object.__setattr__(self, "palette", palette)
        if not self.stuff:
            object.__setattr__(self, "stuff", (False,) * len(self.names))
        if len(self.stuff) != len(self.names):
            raise ValueError(f"ClassTable {self.name}: {len(self.stuff)} stuff flags for {len(self.names)} classes")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def short_names(self) -> tuple[str, ...]:
        """First name of each class, without synonyms (``"building;edifice"`` -> ``"building"``)."""
        return tuple(n.split(";")[0] for n in self.names)

    def short_name(self, label: int) -> str:
        return self.names[label].split(";")[0]

    def index(self, name: str) -> int:
        """Label id of ``name``, matched against the first name and every synonym; raises ``KeyError`` if absent."""
        lookup = self._lookup()
        key = name.strip().lower()
        if key not in lookup:
            raise KeyError(f"class '{name}' is not in the {self.name} table ({len(self)} classes)")
        return lookup[key]

    def _lookup(self) -> dict[str, int]:
        table: dict[str, int] = {}
        for i, n in enumerate(self.names):
            for synonym in n.split(";"):
                table.setdefault(synonym.strip().lower(), i)
        return table

    def colorize(self, label_map: np.ndarray) -> np.ndarray:
        """``(H, W)`` integer labels -> ``(H, W, 3)`` uint8 RGB; labels outside the table (ignore) become white."""
        lut = np.full((256 if label_map.max(initial=0) < 256 else int(label_map.max()) + 1, 3), 255, np.uint8)
        lut[: len(self)] = self.palette
        return lut[np.clip(label_map, 0, len(lut) - 1)]

    def to_dict(self) -> dict:
        """JSON-ready form (the scene-graph JSON and checkpoints carry it)."""
        return {
            "name": self.name,
            "names": list(self.names),
            "palette": self.palette.tolist(),
            "stuff": list(self.stuff),
            "background": self.background,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ClassTable:
        return cls(
            name=d["name"],
            names=tuple(d["names"]),
            palette=np.asarray(d["palette"], dtype=np.uint8),
            stuff=tuple(bool(s) for s in d.get("stuff", ())),
            background=d.get("background"),
        )


@lru_cache(maxsize=1)
def ade20k150() -> ClassTable:
    """The ADEChallengeData2016 table: 151 labels, 0 = other, 1..150 = objectInfo150 (shipped with the package)."""
    with resources.files("twostream.data").joinpath("tables/ade20k150.csv").open() as f:
        rows = list(csv.DictReader(f))
    return ClassTable(
        name="ade20k150",
        names=tuple(r["name"] for r in rows),
        palette=np.array([[int(r["r"]), int(r["g"]), int(r["b"])] for r in rows], dtype=np.uint8),
        stuff=tuple(r["stuff"] == "1" for r in rows),
        background=0,
    )


def default_palette(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 colours for a table without its own: 0 black (background), then well-separated hues
    (golden-ratio steps in hue, alternating lightness), the same for every run."""
    import colorsys

    colours = np.zeros((n, 3), dtype=np.uint8)
    for i in range(1, n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.65 if i % 2 else 0.85, 0.95 if i % 3 else 0.75)
        colours[i] = (round(255 * r), round(255 * g), round(255 * b))
    return colours


def read_class_table_csv(path: str | Path, name: str | None = None) -> ClassTable:
    """A class table from a CSV with a header ``id,name`` and optional ``stuff`` (0/1), ``r``, ``g``, ``b``; ids
    must be ``0..K-1`` in order, ``0`` the background. ``name`` defaults to the dataset folder's name.

    Raises:
        ValueError: one line naming the file and the row.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: class table not found")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"id", "name"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a CSV with a header row 'id,name[,stuff,r,g,b]'")
    has_rgb = all(c in rows[0] for c in "rgb")
    names, palette, stuff = [], [], []
    for line, row in enumerate(rows, start=2):
        try:
            ident = int(row["id"])
            rgb = [int(row[c]) for c in "rgb"] if has_rgb else None
        except (TypeError, ValueError):
            raise ValueError(f"{path}: line {line}: id and r, g, b must be integers, got {row}") from None
        if ident != line - 2:
            raise ValueError(f"{path}: line {line}: id {ident}, expected {line - 2} (ids run 0..K-1 in order; "
                             "tools/prepare_dataset.py writes such a table from any numbering)")
        if not (row.get("name") or "").strip():
            raise ValueError(f"{path}: line {line}: empty class name")
        if rgb is not None and not all(0 <= v <= 255 for v in rgb):
            raise ValueError(f"{path}: line {line}: colour {rgb} outside 0..255")
        names.append(row["name"].strip())
        palette.append(rgb)
        stuff.append(str(row.get("stuff", "0")).strip() in ("1", "true", "True"))
    colours = np.array(palette, dtype=np.uint8) if has_rgb else default_palette(len(names))
    return ClassTable(name=name or path.parent.name or path.stem, names=tuple(names), palette=colours,
                      stuff=tuple(stuff), background=0)


def write_class_table_csv(table: ClassTable, path: str | Path) -> Path:
    """Write ``table`` in the format :func:`read_class_table_csv` reads (and ``ade20k150.csv`` uses)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "stuff", "r", "g", "b"])
        for i, (n, s, c) in enumerate(zip(table.names, table.stuff, table.palette)):
            w.writerow([i, n, int(s), *(int(v) for v in c)])
    return path


def dataset_class_table(data) -> ClassTable:
    """The label set of a dataset's annotations, from ``data.class_table`` (a :class:`~twostream.config.DataConfig`):
    ``ade20k150``; a CSV path; or ``""``: ``<data.root>/class_table.csv`` when the dataset has one (what
    ``tools/prepare_dataset.py`` writes), else ADE20K-150."""
    spec = getattr(data, "class_table", "") or ""
    if spec == "ade20k150":
        return ade20k150()
    root = Path(data.root)
    path = Path(spec) if spec else root / TABLE_FILE
    if not spec and not path.is_file():
        return ade20k150()
    if spec and not path.is_file() and (root / spec).is_file():
        path = root / spec  # a file name inside the dataset folder
    if not path.is_file():
        raise ValueError(f"data.class_table: {spec}: class table not found (give ade20k150, a CSV path, or leave it "
                         f"empty to use {root / TABLE_FILE} when present)")
    return read_class_table_csv(path, name=root.name if path.parent == root else None)
