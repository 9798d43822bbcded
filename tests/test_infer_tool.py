"""tools/infer.py: bad inputs named on one line and skipped (exit 1), outputs that tools/visualize.py reads, --json,
unique output names, run folders and exports, segmenter-only, and exit 2 for a missing or bad checkpoint.

One real subprocess covers the per-file contract end to end; the other cases run the script in this process
(``runpy``), which skips a second start-up of torch on a shared machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_tool
from infer_fixtures import SCENES, photos, shared_run
from PIL import Image

from twostream.data.io import load_label
from twostream.engine.checkpoint import export_safetensors
from twostream.graph.scene_graph import SceneGraph

pytest.importorskip("skimage", reason="scikit-image is not installed")

REPO = Path(__file__).resolve().parents[1]
INFER = REPO / "tools" / "infer.py"
VISUALIZE = REPO / "tools" / "visualize.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Two good images sharing a stem, and one of each kind of bad input."""
    root = tmp_path_factory.mktemp("inputs")
    pics = photos()
    (root / "a").mkdir()
    (root / "b").mkdir()
    Image.fromarray(pics["coffee"][::4, ::4]).save(root / "a" / "x.png")  # 100 x 150
    Image.fromarray(pics["chelsea"][::3, ::3]).save(root / "b" / "x.jpg", quality=90)  # 100 x 151
    (root / "notes.txt").write_text("not an image\n")
    full = (root / "b" / "x.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "empty.jpg").write_bytes(b"")
    Image.new("1", (9000, 9000)).save(root / "huge.png")  # 81 Mpx declared in a tiny file: the bomb guard
    return {"good1": root / "a" / "x.png", "good2": root / "b" / "x.jpg", "not_image": root / "notes.txt",
            "truncated": root / "truncated.jpg", "empty": root / "empty.jpg", "missing": root / "missing.jpg",
            "huge": root / "huge.png", "no_match": root / "nothing*.png"}


# ---- the per-file contract, in a real process ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_run(run, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(INFER), *map(str, inputs.values()), "--checkpoint", str(run),
                           "--out", str(out), "--save", "all", "--json", "--topk", "3", "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return proc, out


def test_bad_inputs_are_named_skipped_and_counted(tool_run, inputs):
    proc, _ = tool_run
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    reasons = {"not_image": "not an image", "truncated": "truncated", "empty": "empty file", "missing": "not found",
               "huge": "too large", "no_match": "no file matches"}
    for key, reason in reasons.items():
        [line] = [e for e in errors if str(inputs[key]) in e]
        assert reason in line, line
    assert len(errors) == len(reasons)
    assert proc.stderr.rstrip().splitlines()[-1] == f"{len(reasons)} of {len(inputs)} inputs failed"


def test_json_on_stdout_lists_every_input(tool_run, inputs):
    proc, _ = tool_run
    records = json.loads(proc.stdout)  # nothing but one JSON document on stdout
    assert len(records) == len(inputs)
    by_input = {r["input"]: r for r in records}
    assert [r["input"] for r in records] == [str(p) for p in inputs.values()]  # in the order given
    for key in ("good1", "good2"):
        r = by_input[str(inputs[key])]
        assert r["ok"] and [s["scene"] for s in r["scenes"]] and {s["scene"] for s in r["scenes"]} <= set(SCENES)
        assert r["image_size"] == list(np.asarray(Image.open(inputs[key])).shape[:2])
        SceneGraph.from_json(r["graph"]).validate()
    assert all("error" in r and not r["ok"] for r in records if r["input"] not in (str(inputs["good1"]),
                                                                                  str(inputs["good2"])))


def test_outputs_have_unique_names_and_load_back(tool_run, inputs):
    _, out = tool_run
    for stem, key in (("x", "good1"), ("x-2", "good2")):
        names = {f"{stem}.json", f"{stem}_sem.png", f"{stem}_overlay.png", f"{stem}_panel.png", f"{stem}.html"}
        assert names <= {p.name for p in out.iterdir()}, stem
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["image"] == str(inputs[key]) and record["sem_seg"] == f"{stem}_sem.png"
        graph = SceneGraph.from_json(record["graph"]).validate()
        sem = load_label(out / record["sem_seg"])
        h, w = record["image_size"]
        assert sem.shape == (h, w) and Image.open(out / record["sem_seg"]).mode == "P"
        assert set(np.unique(sem).tolist()) - {0} == set(graph.labels.tolist())
        assert Image.open(out / f"{stem}_overlay.png").size == (w, h)


def test_visualize_accepts_the_prediction(tool_run, inputs, tmp_path, capsys):
    _, out = tool_run
    rc, _, err = run_tool(VISUALIZE, "--image", inputs["good1"], "--prediction", out / "x.json",
                          "--out", tmp_path / "viz", "--width", "600", capsys=capsys)
    assert rc == 0, err
    assert (tmp_path / "viz" / "panel.png").is_file() and (tmp_path / "viz" / "graph.html").is_file()


def test_inputs_expand_in_order_once_with_unique_stems(tmp_path):
    from twostream.infer_outputs import BadInput, expand_inputs, unique_stems

    for rel in ("d/b.png", "d/a.JPG", "d/notes.txt", "d/sub/c.png", "e/a.png", "e/a-2.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    entries = expand_inputs([str(tmp_path / "d"), str(tmp_path / "d" / "b.png"), str(tmp_path / "**" / "c.png"),
                             str(tmp_path / "none*.png"), str(tmp_path / "e" / "*.png"), str(tmp_path / "d" / "sub")])
    rel = [str(e.relative_to(tmp_path)) if isinstance(e, Path) else e for e in entries]
    assert rel == ["d/a.JPG", "d/b.png", "d/sub/c.png", BadInput(str(tmp_path / "none*.png"), "no file matches this "
                                                                 "pattern"), "e/a-2.png", "e/a.png"]
    files = [e for e in entries if isinstance(e, Path)]
    # a.JPG and e/a.png share a stem (case-insensitively); e/a-2.png keeps its own name, so the repeat gets a-3
    assert unique_stems(files) == ["a", "b", "c", "a-2", "a-3"]


# ---- text output, other sources ------------------------------------------------------------------------------------


def test_text_summary_from_a_run_folder_and_an_export(run, inputs, tmp_path, capsys):
    export = export_safetensors(run / "best.pth", tmp_path / "export").parent
    outputs = []
    for source in (run, export):
        rc, out, err = run_tool(INFER, inputs["good1"], "--checkpoint", source, "--topk", "2", capsys=capsys)
        assert rc == 0, err
        lines = out.splitlines()
        assert lines[0] == f"{inputs['good1']} (150x100)"
        assert lines[1].startswith("  scenes:   ") and lines[1].count("%") == 2
        assert lines[2].startswith("  objects:  ") and lines[3].startswith("  touching: ")
        outputs.append(out)
    assert outputs[0] == outputs[1]


def test_segmenter_only_prints_graphs_without_scenes(run, inputs, capsys):
    rc, out, err = run_tool(INFER, inputs["good2"], "--segmenter", f"upsnet:{run / 'best.pth'}", capsys=capsys)
    assert rc == 0, err
    assert "scenes:" not in out and "objects:" in out


# ---- exit status 2: the model cannot be loaded ---------------------------------------------------------------------


def test_missing_or_bad_checkpoint_exits_2_with_one_line(run, inputs, tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.pth").write_bytes(b"\0" * 64)
    monkeypatch.chdir(tmp_path)  # no runs/quickstart here: the default checkpoint is missing
    cases = [((), "runs/quickstart: checkpoint not found"),
             (("--checkpoint", tmp_path / "bad.pth"), f"{tmp_path / 'bad.pth'}: "),
             (("--segmenter", "foo:bar"), "--segmenter 'foo:bar'"),
             (("--checkpoint", run, "--precision", "fp16", "--device", "cpu"), "fp16 needs a GPU")]
    for args, expected in cases:
        rc, out, err = run_tool(INFER, inputs["good1"], *args, capsys=capsys)
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert rc == 2 and out == "" and len(errors) == 1 and expected in errors[0], (args, err)


def test_the_tool_lists_its_input_folders_once(run, tmp_path, monkeypatch, capsys):
    """A folder of tens of thousands of images is walked once per run (for the counts the defaults need and the
    predictions alike), not once for each."""
    import twostream.infer_outputs as infer_outputs

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(photos()["coffee"][::8, ::8]).save(folder / f"p{i}.png")
    listed = []
    real = infer_outputs.image_extensions
    monkeypatch.setattr(infer_outputs, "image_extensions", lambda: listed.append(1) or real())  # once per listing
    rc, _, err = run_tool(INFER, folder, "--checkpoint", run, "--device", "cpu", "--quiet", capsys=capsys)
    assert rc == 0, err
    assert len(listed) == 1
