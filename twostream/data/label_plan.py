"""The user's class table and how its ids become twostream labels (:func:`plan_labels`), for
:mod:`twostream.data.convert`.

twostream reads 8-bit annotations where 0 is the background ("other": no graph node), 1..K the classes and 255
"ignore". A user's table may count from 0 or from 1, name its background or not, and colour its classes; the plan
renumbers the ids in order to 1..K, keeps a named background (or ``background_id``) as 0, shifts a table that counts
from 0 up by one, and maps the ignore value to 255.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twostream.data.classes import IGNORE_INDEX, ClassTable, ade20k150, default_palette

__all__ = ["BACKGROUND_NAMES", "MAX_CLASSES", "InputClasses", "LabelPlan", "pack_rgb", "plan_labels",
           "read_input_classes"]

BACKGROUND_NAMES = frozenset({"background", "other", "others", "unlabeled", "unlabelled", "void", "none", "bg",
                              "unknown", "nothing"})
MAX_CLASSES = 254  # labels 1..254 fit an 8-bit annotation beside 0 (background) and 255 (ignore)


# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputClasses:
    """The user's class table as given: ``ids`` (as the masks hold them), ``names``, optional ``colours`` (for
    colour-coded masks) and ``stuff`` flags, in file order."""

    path: Path
    ids: tuple[int, ...]
    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...] | None
    stuff: tuple[bool, ...]


def read_input_classes(path: str | Path) -> InputClasses:
    """Read ``id,name[,r,g,b][,stuff]`` (header required; any order of rows, any numbering).

    Raises:
        ValueError: one line naming the file and the row: a missing column, a non-integer, negative or repeated
            id, a repeated or empty name, a colour outside 0..255 or used twice.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: class table not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in reader.fieldnames or []]
        rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if "id" not in header or "name" not in header:
        raise ValueError(f"{path}: expected a header row with the columns id,name (optionally r,g,b and stuff); "
                         f"got {','.join(header) or 'nothing'}")
    has_rgb = all(c in header for c in "rgb")
    ids, names, colours, stuff = [], [], [], []
    for line, row in enumerate(rows, start=2):
        try:
            ident = int(row["id"])
        except ValueError:
            raise ValueError(f"{path}: line {line}: id {row['id']!r} is not an integer") from None
        if ident < 0:
            raise ValueError(f"{path}: line {line}: id {ident} is negative")
        if ident in ids:
            raise ValueError(f"{path}: line {line}: id {ident} is listed twice")
        name = row["name"]
        if not name:
            raise ValueError(f"{path}: line {line}: class {ident} has no name")
        if name.lower() in (n.lower() for n in names):
            raise ValueError(f"{path}: line {line}: name {name!r} is listed twice")
        if has_rgb:
            try:
                rgb = tuple(int(row[c]) for c in "rgb")
            except ValueError:
                raise ValueError(f"{path}: line {line}: r, g, b must be integers, got "
                                 f"{[row[c] for c in 'rgb']}") from None
            if not all(0 <= v <= 255 for v in rgb):
                raise ValueError(f"{path}: line {line}: colour {rgb} outside 0..255")
            if rgb in colours:
                raise ValueError(f"{path}: line {line}: colour {rgb} is also class {ids[colours.index(rgb)]}'s")
            colours.append(rgb)
        ids.append(ident)
        names.append(name)
        stuff.append(row.get("stuff", "0") in ("1", "true", "yes"))
    if not ids:
        raise ValueError(f"{path}: no classes listed")
    return InputClasses(path, tuple(ids), tuple(names), tuple(colours) if has_rgb else None, tuple(stuff))


@dataclass(frozen=True)
class LabelPlan:
    """How mask values become twostream labels.

    Attributes:
        lut: ``(65536,)`` int16: output label of each input id (``-1``: not in the table, an error where it occurs).
        table: the output :class:`ClassTable` (``0`` background, ``1..K`` the classes).
        background_id: the input id read as background, or ``None`` (then mask value 0 is unlabelled).
        ignore_id: the input id read as ignore (-> 255).
        zero_based: the table's id 0 is a class (the table counts from 0).
        colours: for colour-coded masks: ``(C,)`` packed ``r << 16 | g << 8 | b`` codes, sorted, and the input id of
            each (``None`` without colours).
    """

    lut: np.ndarray
    table: ClassTable
    background_id: int | None
    ignore_id: int
    zero_based: bool
    description: str
    colour_codes: np.ndarray | None = None
    colour_ids: np.ndarray | None = None
    source: str = "ADE20K-150"  # what the ids are checked against, for messages


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 -> ``(...)`` int64 ``r << 16 | g << 8 | b``."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def plan_labels(classes: InputClasses | None, *, background_id: int | None = None, ignore_id: int = IGNORE_INDEX,
                name: str = "dataset") -> LabelPlan:
    """The renumbering the module docstring describes. ``classes=None``: the masks already hold ADE20K-150 ids.

    Raises:
        ValueError: more than 254 classes, ``ignore_id`` or ``background_id`` clashing with the table.
    """
    lut = np.full(65536, -1, dtype=np.int16)
    lut[ignore_id] = IGNORE_INDEX
    if classes is None:
        table = ade20k150()
        lut[: len(table)] = np.arange(len(table))
        return LabelPlan(lut, table, 0, ignore_id, False, "masks hold ADE20K-150 ids (0 = other, 1..150); no "
                                                          "class table given")
    ids = np.array(classes.ids)
    if ignore_id in ids:
        raise ValueError(f"{classes.path}: id {ignore_id} is a class but also the ignore value; pass another "
                         "--ignore-id (the mask value meaning 'not annotated')")
    if background_id is None and 0 in ids and classes.names[classes.ids.index(0)].lower() in BACKGROUND_NAMES:
        background_id = 0
    if background_id is not None and background_id not in ids and background_id != 0:
        raise ValueError(f"{classes.path}: --background-id {background_id} is not an id of the table")
    zero_based = 0 in ids and background_id != 0
    order = sorted(i for i in classes.ids if i != background_id)
    if len(order) > MAX_CLASSES:
        raise ValueError(f"{classes.path}: {len(order)} classes; 8-bit annotations hold at most {MAX_CLASSES} "
                         "(1..254 beside background 0 and ignore 255)")
    lut[np.array(order, dtype=np.int64)] = np.arange(1, len(order) + 1, dtype=np.int16)
    if background_id is not None:
        lut[background_id] = 0
    elif 0 not in ids:
        lut[0] = 0  # no id 0 in the table: mask value 0 is unlabelled (the ADE20K convention)
    pos = {i: k for k, i in enumerate(classes.ids)}
    bg_name = classes.names[pos[background_id]] if background_id in pos else "other"
    names = [bg_name, *(classes.names[pos[i]] for i in order)]
    if classes.colours is not None:
        palette = np.array([classes.colours[pos[background_id]] if background_id in pos else (0, 0, 0),
                            *(classes.colours[pos[i]] for i in order)], dtype=np.uint8)
    else:
        palette = default_palette(len(names))
    stuff = (True, *(classes.stuff[pos[i]] for i in order))
    table = ClassTable(name=name, names=tuple(names), palette=palette, stuff=stuff, background=0)
    if background_id is not None:
        how = f"id {background_id} ('{bg_name}') is the background (label 0)"
    else:
        how = "mask value 0 is unlabelled (label 0)"
    if zero_based:
        how = f"the table counts from 0 ('{classes.names[pos[0]]}' is a class), so ids shift up by one; mask value " \
              "0 is that class, not background"
    first, last = order[0], order[-1]
    description = (f"{len(order)} classes, ids {first}..{last} -> labels 1..{len(order)}; {how}; mask value "
                   f"{ignore_id}: ignore")
    codes = ids_of_colours = None
    if classes.colours is not None:
        packed = pack_rgb(np.array(classes.colours, dtype=np.uint8))
        sort = np.argsort(packed)
        codes, ids_of_colours = packed[sort], np.array(classes.ids, dtype=np.int64)[sort]
    return LabelPlan(lut, table, background_id, ignore_id, zero_based, description, codes, ids_of_colours,
                     source=classes.path.name)
