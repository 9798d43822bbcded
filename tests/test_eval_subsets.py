"""Subset metrics in tools/eval.py: the relation-only images of a synthetic set are scored beside the whole split, and
so is any --subset NAME=FILE; the numbers equal an independent count over per-image predictions; bad subset files
are one line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import module_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def relation_run(request):
    """A synthetic set where half the living and dining rooms are relation-only, and a classifier trained 1 epoch."""
    from conftest import tiny_classifier_config

    from twostream.data.synthetic import make_synthetic
    from twostream.engine.trainer import train

    root = module_dir(request, "relation") / "ade"
    meta = make_synthetic(root, train_per_scene=4, val_per_scene=6, size=64, seed=1, relation_fraction=0.5,
                          scenes=["living_room", "dining_room", "bedroom"])
    run = root.parent / "run"
    train(tiny_classifier_config(root, run, "train.epochs=1"))
    return root, run, meta


def per_image_predictions(root: Path, run: Path) -> dict[str, tuple[int, int]]:
    """``{stem: (predicted scene, true scene)}`` of the validation images, computed without any evaluator."""
    from twostream.config import config_from_dict
    from twostream.data.ade20k import ADE20KDataset
    from twostream.data.classes import ClassTable
    from twostream.data.transforms import build_transforms
    from twostream.data.vocabulary import SceneVocabulary
    from twostream.engine.checkpoint import load_checkpoint
    from twostream.graph.builder import SceneGraphBuilder
    from twostream.models.two_stream import build_model

    ckpt = load_checkpoint(run / "best.pth")
    cfg = config_from_dict(ckpt["config"])
    table = ClassTable.from_dict(ckpt["class_table"])
    model = build_model(cfg, num_scenes=len(ckpt["vocabulary"]), class_table=table)
    model.load_state_dict(ckpt["model"])
    model.eval()
    builder = SceneGraphBuilder.from_config(cfg.graph, table)
    dataset = ADE20KDataset(root, "validation", SceneVocabulary.from_names(ckpt["vocabulary"]),
                            transform=build_transforms(cfg.data, train=False))
    out = {}
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            logits = model(item["image"][None], [builder(item["sem_seg"])])["logits"]
            out[item["name"]] = (int(logits.argmax()), int(item["scene"]))
    return out


def test_relation_only_and_given_subsets_are_scored_beside_the_split(relation_run, tmp_path, caplog):
    from twostream.engine.evaluate import evaluate_checkpoint

    root, run, meta = relation_run
    relation_val = [s for s in meta["relation_only"] if s.startswith("ADE_val_")]
    assert len(relation_val) == 6  # 3 living + 3 dining rooms of 6 each
    mine = ["ADE_val_00000001", "ADE_val_00000002.jpg", "", "# a comment", "ADE_val_00000005"]
    (tmp_path / "mine.txt").write_text("\n".join(mine) + "\n")
    with caplog.at_level(logging.INFO, logger="twostream.engine.evaluate"):
        metrics = evaluate_checkpoint(run, out_dir=tmp_path / "eval", device="cpu",
                                      subsets=[("mine", tmp_path / "mine.txt")])

    predictions = per_image_predictions(root, run)
    assert metrics["num_images"] == len(predictions) == 18
    assert metrics["top1"] == pytest.approx(sum(p == t for p, t in predictions.values()) / 18)
    subsets = metrics["subsets"]
    assert list(subsets) == ["relation_only", "mine"]  # relation_scenes (scene names) is no list of images
    for name, stems in (("relation_only", relation_val),
                        ("mine", ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000005"])):
        hits = [predictions[s][0] == predictions[s][1] for s in stems]
        assert subsets[name]["num_images"] == len(stems)
        assert subsets[name]["top1"] == pytest.approx(sum(hits) / len(stems)), name
        classes = {predictions[s][1] for s in stems}
        per_class = [sum(predictions[s][0] == c for s in stems if predictions[s][1] == c) /
                     sum(predictions[s][1] == c for s in stems) for c in classes]
        assert subsets[name]["mean_class_accuracy"] == pytest.approx(sum(per_class) / len(per_class)), name
        assert set(subsets[name]) == {"top1", "top2", "mean_class_accuracy", "num_images"}

    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["subsets"] == subsets
    table = (tmp_path / "eval" / "per_class.md").read_text()
    assert "| subset | images | top-1 | top-2 | mean class accuracy |" in table
    assert f"| relation_only | 6 | {100 * subsets['relation_only']['top1']:.1f}% |" in table
    line = next(r.getMessage() for r in caplog.records if "(graphs: gt)" in r.getMessage()).splitlines()[0]
    assert f"relation_only: top-1 {100 * subsets['relation_only']['top1']:.1f}% on 6 images" in line


def test_bad_subset_files_are_one_line(relation_run, tmp_path):
    from twostream.engine.evaluate import evaluate_checkpoint
    from twostream.engine.evaluators.subsets import parse_subset_arg, read_subsets

    root, run, _ = relation_run
    with pytest.raises(FileNotFoundError, match=r"nothere\.txt: subset file not found"):
        evaluate_checkpoint(run, out_dir=tmp_path / "e", device="cpu", subsets={"x": tmp_path / "nothere.txt"})
    (tmp_path / "wrong.txt").write_text("ADE_val_00000001\nADE_train_00000001\nADE_val_99999999\n")
    with pytest.raises(ValueError, match=r"--subset x=.*wrong\.txt: 2 of 3 stems are not images of the validation "
                                         r"split \(ADE_train_00000001, ADE_val_99999999\)"):
        read_subsets(root, "validation", [f"ADE_val_{i:08d}" for i in range(1, 19)], {"x": tmp_path / "wrong.txt"})
    with pytest.raises(ValueError, match="expected NAME=FILE"):
        parse_subset_arg("just_a_file.txt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "tools/eval.py", "--checkpoint", str(run), "--device", "cpu",
                             "--out", str(tmp_path / "cli"), "--subset", f"x={tmp_path / 'wrong.txt'}"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: --subset x=")
    assert not (tmp_path / "cli" / "metrics.json").exists()


def test_synthetic_lists_restricted_to_the_split(tmp_path):
    from twostream.engine.evaluators.subsets import synthetic_subsets

    (tmp_path / "synthetic.json").write_text(json.dumps({
        "relation_only": ["ADE_train_00000002", "ADE_val_00000003"], "relation_scenes": ["living_room"],
        "empty": [], "params": {"scenes": ["a"]}}))
    assert synthetic_subsets(tmp_path, ["ADE_val_00000003", "ADE_val_00000004"]) == {
        "relation_only": ["ADE_val_00000003"]}
    assert synthetic_subsets(tmp_path / "elsewhere", ["x"]) == {}



def test_subsets_of_data_whose_names_have_folders(tmp_path):
    """Folder (and Places365) item names are ``<scene>/<stem>``: a subset file lists them so, and the split's
    names come from the reader data.format names, not from the ADE20K layout."""
    import numpy as np
    from PIL import Image

    from twostream.config import load_config
    from twostream.engine.evaluate import _split_stems
    from twostream.engine.evaluators.subsets import read_subsets

    for rel in ("val/kitchen/a1.jpg", "val/kitchen/a2.jpg", "val/street/b1.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / rel)
    cfg = load_config(None, [f"data.root={tmp_path}", "data.format=folder", "data.val_split=val",
                             "data.max_items=1", "graph.source=pred", "model.segmenter.kind=hf",
                             "model.segmenter.hf_model=x"])
    stems = _split_stems(cfg, "val")
    assert stems == ["kitchen/a1", "kitchen/a2", "street/b1"]  # every item, whatever data.max_items keeps
    (tmp_path / "mine.txt").write_text("kitchen/a2.jpg\nstreet/b1\n")
    assert read_subsets(tmp_path, "val", stems, {"mine": tmp_path / "mine.txt"}) == {
        "mine": ["kitchen/a2", "street/b1"]}
    (tmp_path / "bare.txt").write_text("a2\n")  # a bare stem is not the name of a folder dataset's image
    with pytest.raises(ValueError, match=r"1 of 1 stems are not images of the val split \(a2\)"):
        read_subsets(tmp_path, "val", stems, {"x": tmp_path / "bare.txt"})
