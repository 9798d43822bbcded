"""prepare_ade20k --check: a clean set passes; every kind of damage is reported on a line naming the file."""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twostream.data.check import check_dataset
from twostream.data.synthetic import make_synthetic

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "ade20k" / "sample"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    make_synthetic(root, train_per_scene=2, val_per_scene=1, size=48, seed=5)
    return root


@pytest.fixture(scope="module")
def tool() -> dict:
    return runpy.run_path(str(REPO / "tools/prepare_ade20k.py"), run_name="tool")


def _run(tool: dict, *argv: str) -> int:
    return tool["main"](tool["get_args_parser"]().parse_args(list(argv)))


def test_clean_set_passes(clean, tool, capsys):
    report = check_dataset(clean)
    assert report.ok and report.counts["training"] == {"images": 16, "annotations": 16, "pairs": 16, "checked": 16}
    assert report.scenes["validation"]["office"] == 1
    assert _run(tool, "--root", str(clean), "--check") == 0
    out = capsys.readouterr().out
    assert "OK: no problems found" in out and "training" in out and "bedroom" in out


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real ADE20K sample absent: {SAMPLE}")
def test_real_sample_passes():
    report = check_dataset(SAMPLE, ["validation"])
    assert report.ok and report.counts["validation"]["pairs"] == 2 and report.scenes["validation"]["abbey"] == 2


def test_every_problem_is_named(clean, tool, tmp_path, capsys):
    root = Path(shutil.copytree(clean, tmp_path / "d"))
    tr, va = root / "images/training", root / "annotations/training"
    (va / "ADE_train_00000001.png").unlink()  # image without annotation
    shutil.copy(va / "ADE_train_00000002.png", va / "ADE_train_00000099.png")  # annotation without image
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(va / "ADE_train_00000003.png")  # size mismatch
    label = np.asarray(Image.open(va / "ADE_train_00000004.png")).copy()
    label[0, 0] = 170
    Image.fromarray(label).save(va / "ADE_train_00000004.png")  # label outside 0..150
    data = (tr / "ADE_train_00000005.jpg").read_bytes()
    (tr / "ADE_train_00000005.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (tr / "ADE_train_00000006.jpg").write_bytes(b"")  # empty file
    lines = (root / "sceneCategories.txt").read_text().splitlines()
    lines = [ln for ln in lines if not ln.startswith("ADE_train_00000007 ")] + ["ADE_val_00000777 street"]
    (root / "sceneCategories.txt").write_text("\n".join(lines) + "\n")

    report = check_dataset(root, workers=2)
    expected = [
        "ADE_train_00000001.jpg: image has no annotation",
        "ADE_train_00000099.png: annotation has no image",
        "ADE_train_00000003.png: annotation is 30x20 but its image ADE_train_00000003.jpg is 48x48",
        "ADE_train_00000004.png: label value(s) 170 outside 0..150",
        "ADE_train_00000005.jpg: image is truncated or corrupt",
        "ADE_train_00000006.jpg: image is an empty file",
        "ADE_train_00000007: image has no line in sceneCategories.txt",
        "sceneCategories.txt: line for ADE_val_00000777 names no image",
    ]
    for part in expected:
        assert sum(part in p for p in report.problems) == 1, f"{part!r} not reported exactly once"
    assert len(report.problems) == len(expected)
    assert all("\n" not in p for p in report.problems)

    assert _run(tool, "--root", str(root), "--check") == 1
    out = capsys.readouterr().out
    assert f"FAILED: {len(expected)} problem(s)" in out and all(part in out for part in expected)


def test_missing_root_and_split(tool, tmp_path, capsys):
    assert _run(tool, "--root", str(tmp_path / "nowhere"), "--check") == 1
    assert "dataset folder not found" in capsys.readouterr().out
    (tmp_path / "d/images/training").mkdir(parents=True)
    report = check_dataset(tmp_path / "d", ["training"])
    assert any("annotations/training: folder not found" in p for p in report.problems)
    assert any("sceneCategories.txt: scene-label file not found" in p for p in report.problems)
    assert _run(tool, "--root", str(tmp_path / "d")) == 0  # without --check: how to get ADE20K
    assert "sceneparsing.csail.mit.edu" in capsys.readouterr().out


def test_instance_pngs_are_checked_when_present(tmp_path):
    root = tmp_path / "inst"
    make_synthetic(root, train_per_scene=1, val_per_scene=1, size=48, seed=5, instances=True)
    report = check_dataset(root)
    assert report.ok and any("annotations_instance/training: instance PNGs checked with their 8 pairs" in n
                             for n in report.notes)
    inst = root / "annotations_instance/training"
    stems = sorted(p.stem for p in inst.glob("*.png"))
    (inst / f"{stems[0]}.png").unlink()  # missing
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(inst / f"{stems[1]}.png")  # size mismatch
    rgb = np.zeros((48, 48, 3), np.uint8)
    rgb[:4, :4] = (200, 1, 0)  # class 200 is outside the table
    Image.fromarray(rgb).save(inst / f"{stems[2]}.png")
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(inst / f"{stems[3]}.png")  # not RGB
    problems = check_dataset(root).problems
    expected = [f"{stems[0]}.png: instance annotation not found", f"{stems[1]}.png: instance annotation is 30x20",
                f"{stems[2]}.png: instance class id(s) 200 outside 1..150",
                f"{stems[3]}.png: instance annotation is a L"]
    assert len(problems) == len(expected) and all(sum(e in p for p in problems) == 1 for e in expected), problems
