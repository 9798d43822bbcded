"""The shipped ADE20K-150 class table, checked against the real objectInfo150 files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from twostream.data.classes import ClassTable, ade20k150

ADE = Path(__file__).resolve().parents[2] / "shared" / "ade20k"
needs_ade = pytest.mark.skipif(not ADE.is_dir(), reason=f"real ADE20K reference files not found at {ADE}")


@needs_ade
def test_names_and_stuff_flags_match_objectinfo150():
    table = ade20k150()
    assert len(table) == 151 and table.names[0] == "other" and table.background == 0
    with (ADE / "objectInfo150.txt").open() as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    assert len(rows) == 150
    for idx, _ratio, _train, _val, name in rows:
        synonyms = [s.strip() for s in name.split(",")]
        assert table.names[int(idx)].split(";") == synonyms, idx
    with (ADE / "objectInfo150.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    stuff = {int(r["Idx"]): r["Stuff"] == "1" for r in csv_rows}
    assert all(table.stuff[i] == stuff[i] for i in range(1, 151))
    # the .csv spelling (every word joined by ';'), which tests/test_hf_segmenter.py derives from this table
    assert [r["Name"] for r in csv_rows] == [n.replace(" ", ";") for n in table.names[1:]]
    assert table.stuff[ade20k150().index("sky")] and not table.stuff[table.index("bed")]


def test_multi_word_names_and_synonyms():
    table = ade20k150()
    assert table.index("coffee table") == 65 == table.index("Cocktail Table")
    assert table.short_name(65) == "coffee table"
    assert table.index("edifice") == table.index("building") == 2
    assert table.short_name(45) == "chest of drawers"
    with pytest.raises(KeyError, match="'spaceship' is not in the ade20k150 table"):
        table.index("spaceship")


def test_palette_is_distinct_and_colorize_marks_ignore():
    table = ade20k150()
    assert table.palette.shape == (151, 3) and table.palette.dtype == np.uint8
    assert len({tuple(c) for c in table.palette}) == 151
    labels = np.array([[0, 1], [150, 255]])
    rgb = table.colorize(labels)
    assert (rgb[0, 1] == table.palette[1]).all() and (rgb[1, 1] == 255).all()


def test_dict_round_trip_and_validation():
    table = ade20k150()
    again = ClassTable.from_dict(table.to_dict())
    assert again == table and (again.palette == table.palette).all() and again.stuff == table.stuff
    with pytest.raises(ValueError, match=r"palette shape \(2, 3\) != \(3, 3\)"):
        ClassTable("x", ("a", "b", "c"), np.zeros((2, 3)))
