"""Class tables: the names and colours a semantic map's labels refer to.

A :class:`ClassTable` travels with every segmenter into the scene graph, the GNN's class embedding, the JSON output and
the visualizer. The project's own table is ADE20K-150 as ADEChallengeData2016 numbers it: 0 = ``other`` (unlabelled),
1..150 = the classes of objectInfo150 (``wall`` = 1). A segmenter trained on another label set (COCO, Cityscapes)
carries its own table instead.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import numpy as np

__all__ = ["IGNORE_INDEX", "ClassTable", "ade20k150"]

IGNORE_INDEX = 255  # label of pixels that carry no supervision (padding, augmentation borders)


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
