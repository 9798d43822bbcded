"""Inference over whole folders: the artefacts --save picks (default small), the predictions.csv index that pandas
reads, the progress bar, and drawings rendered in worker processes giving the same files as in-process rendering."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from infer_fixtures import photos, shared_run
from PIL import Image

from twostream.infer_outputs import ARTEFACTS, DEFAULT_SAVE, INDEX_FILE, index_columns, parse_save, run_inference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_infer_tool import INFER, run_tool

pytest.importorskip("skimage", reason="scikit-image is not installed")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from twostream.inference import Predictor

    return Predictor.from_checkpoint(shared_run(tmp_path_factory), device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name, im in photos().items():
        Image.fromarray(im[::3, ::3]).save(root / f"{name}.png")
    (root / "broken.jpg").write_text("not an image")
    return root


def test_parse_save():
    assert parse_save("json,sem") == ("sem", "json")  # writing order: the JSON names the map
    assert parse_save("all") == tuple(ARTEFACTS) and parse_save("none") == ()
    assert parse_save(" overlay , json ") == ("json", "overlay")
    with pytest.raises(ValueError, match=r"--save: pdf is not one of sem, cam, json, overlay, panel, html"):
        parse_save("json,pdf")
    # the default is small: the map, the record, and a CAM only for predictions that were explained
    assert set(DEFAULT_SAVE) == {"json", "sem", "cam"} and not any(ARTEFACTS[n].drawing for n in DEFAULT_SAVE)


def test_default_save_and_the_index(predictor, folder, tmp_path):
    out = tmp_path / "out"
    records = run_inference(predictor, [str(folder)], topk=3, out_dir=out, keep_graphs=False)
    names = sorted(p.name for p in out.iterdir())
    stems = ["astronaut", "chelsea", "coffee", "rocket"]
    assert names == sorted([INDEX_FILE, *(f"{s}.json" for s in stems), *(f"{s}_sem.png" for s in stems)])
    assert all("graph" not in r for r in records)  # keep_graphs=False: memory stays flat on long runs
    rows = list(csv.DictReader((out / INDEX_FILE).open()))
    assert list(rows[0]) == index_columns(3)
    by_input = {Path(r["input"]).name: r for r in rows}
    assert set(by_input) == {f"{s}.png" for s in stems} | {"broken.jpg"}
    bad = by_input["broken.jpg"]
    assert bad["ok"] == "0" and "not an image" in bad["error"] and bad["scene_1"] == ""
    for s in stems:
        row, record = by_input[f"{s}.png"], json.loads((out / f"{s}.json").read_text())
        assert row["ok"] == "1" and row["output_stem"] == s
        assert [row[f"scene_{k}"] for k in (1, 2, 3)] == [x["scene"] for x in record["scenes"]]
        assert abs(float(row["prob_1"]) - record["scenes"][0]["prob"]) < 1e-5
        assert int(row["num_nodes"]) == len(record["graph"]["nodes"])
        assert int(row["num_pairs"]) == len(record["graph"]["edges"])
        assert [int(row["height"]), int(row["width"])] == record["image_size"]
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(out / INDEX_FILE)
    assert len(frame) == 5 and frame["ok"].sum() == 4 and frame["num_nodes"].dropna().gt(0).all()


def test_workers_render_the_same_drawings(predictor, folder, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    run_inference(predictor, [str(folder)], out_dir=here, save="all", render_workers=0)
    records = run_inference(predictor, [str(folder)], out_dir=there, save="all", render_workers=2)
    ok = [r for r in records if r["ok"]]
    drawn = set(ARTEFACTS) - {"cam"}  # no explanations asked for: no CAM
    assert len(ok) == 4 and all(set(r["outputs"]) == drawn for r in ok)
    for path in sorted(here.iterdir()):
        if path.name == INDEX_FILE:  # rows in completion order
            assert sorted(path.read_text().splitlines()) == sorted((there / path.name).read_text().splitlines())
        else:
            assert path.read_bytes() == (there / path.name).read_bytes(), path.name


def test_progress_bar_shows_images_per_second(predictor, folder, capsys):
    run_inference(predictor, [str(folder)], progress=True)
    err = capsys.readouterr().err
    assert "infer" in err and "img/s" in err and "5/5" in err


def test_tool_save_flag_and_quiet(folder, tmp_path, capsys, tmp_path_factory):
    run = shared_run(tmp_path_factory)
    rc, out, err = run_tool(INFER, folder / "coffee.png", "--checkpoint", run, "--out", tmp_path / "o",
                            "--save", "json,overlay", "--quiet", "--device", "cpu", capsys=capsys)
    assert rc == 0, err
    assert out == ""  # --quiet: no per-image summary
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == sorted([INDEX_FILE, "coffee.json", "coffee_overlay.png"])
    assert "sem_seg" not in json.loads((tmp_path / "o" / "coffee.json").read_text())  # no map written, none named
    rc, _, err = run_tool(INFER, folder / "coffee.png", "--checkpoint", run, "--out", tmp_path / "p",
                          "--save", "pdf", capsys=capsys)
    assert rc == 2 and "--save: pdf is not one of" in err


def test_bytes_per_image_of_each_artefact(predictor, folder, tmp_path):
    """The sizes the --save help and docs/inference.md quote: the default stays ~10 KB per photo, drawings ~0.5 MB."""
    out = tmp_path / "sizes"
    run_inference(predictor, [str(folder)], out_dir=out, save="all")
    sizes = {name: [] for name in ARTEFACTS}
    for name, art in ARTEFACTS.items():
        sizes[name] = [p.stat().st_size for p in out.glob(f"*{art.suffix}")]
    default = sum(max(sizes[n]) for n in DEFAULT_SAVE if sizes[n])
    assert default < 40_000, sizes  # per image: tens of thousands of images stay near 1 GB
    assert min(sizes["panel"]) > 10 * default and min(sizes["html"]) > 5 * default
