"""The staged pipeline end to end, as make demo runs it (tiny): train a segmenter -> cache its graphs -> train the
two-stream classifier on them -> tools/eval.py -> tools/infer.py on real photographs. And graph caches built with a
published (Hugging Face) segmenter, read by a classifier that trains on them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import module_dir

from twostream.config import load_config, save_config
from twostream.engine.checkpoint import load_checkpoint
from twostream.engine.trainer import train

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg")


def tool(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def seg_config(root: Path, out: Path):
    return load_config(REPO / "configs/seg/quickstart.yaml", [
        f"data.root={root}", "data.image_size=[64, 64]", "data.num_workers=0",
        "model.segmenter.backbone=resnet10t", "model.segmenter.fpn_channels=16", "model.segmenter.head_channels=8",
        "train.epochs=1", "train.batch_size=8", "train.warmup_steps=1", "eval.batch_size=16",
        f"output.dir={out}", "output.tensorboard=false"])


@pytest.fixture(scope="module")
def staged_run(synthetic_root, request) -> dict[str, Path]:
    base = module_dir(request, "staged")
    seg_cfg = seg_config(synthetic_root, base / "seg")
    train(seg_cfg)
    seg_ckpt = base / "seg" / "best.pth"
    cls_overrides = [
        f"data.root={synthetic_root}", "data.image_size=[64, 64]", "data.num_workers=0",
        "model.segmenter.backbone=resnet10t", "model.segmenter.fpn_channels=16", "model.segmenter.head_channels=8",
        f"model.segmenter.checkpoint={seg_ckpt}", "model.image_encoder.name=test_vit",
        "model.gnn.hidden_dim=16", "model.gnn.heads=2", "model.fusion.dim=16",
        "train.epochs=2", "train.batch_size=8", "train.warmup_steps=1", "eval.batch_size=16",
        f"output.dir={base / 'cls'}", "output.tensorboard=false"]
    cls_cfg = load_config(REPO / "configs/quickstart.yaml", cls_overrides)
    save_config(cls_cfg, base / "cls.yaml")
    tool("tools/build_graphs.py", "--config", str(base / "cls.yaml"), "--no-progress", "--workers", "0")
    train(cls_cfg)
    return {"base": base, "seg": seg_ckpt, "cls": base / "cls", "cls_yaml": base / "cls.yaml"}


def test_classifier_trained_on_the_segmenters_cached_graphs(staged_run, synthetic_root):
    ckpt = load_checkpoint(staged_run["cls"] / "last.pth")
    assert ckpt["stage"] == "classifier" and ckpt["step"] == 8
    caches = sorted((synthetic_root / "graphs").glob("*-pred-*"))
    assert [c.name.split("-pred-")[0] for c in caches] == ["training", "validation"]
    # the classifier checkpoint carries the trained segmenter's weights, so inference needs nothing else
    seg = load_checkpoint(staged_run["seg"])["model"]
    key = next(k for k in seg if k.endswith("weight"))
    assert (ckpt["model"][f"segmenter.{key}"] == seg[key]).all()


def test_eval_tool_matches_an_independent_count(staged_run, synthetic_root):
    out = staged_run["base"] / "eval"
    tool("tools/eval.py", "--checkpoint", str(staged_run["cls"]), "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "confusion_matrix.png").is_file() and (out / "per_class.md").is_file()
    assert metrics["num_images"] == 16 and metrics["graphs"] == "online"
    assert set(metrics["segmentation"]) >= {"miou", "pixel_accuracy"} and "graph_quality" in metrics

    # Independently: the Predictor on the validation files, scored against sceneCategories.txt by hand.
    from twostream.inference import Predictor

    predictor = Predictor.from_checkpoint(staged_run["cls"])
    scenes = dict(line.split() for line in (synthetic_root / "sceneCategories.txt").read_text().splitlines())
    files = sorted((synthetic_root / "images" / "validation").glob("*.jpg"))
    preds = predictor.predict([str(f) for f in files], topk=1)
    hits = [p.scenes[0][0] == scenes[f.stem] for p, f in zip(preds, files)]
    assert metrics["top1"] == pytest.approx(np.mean(hits))
    cm = np.array(metrics["confusion_matrix"])
    assert cm.sum() == 16 and np.trace(cm) == sum(hits)


def test_infer_on_real_photographs_with_the_trained_checkpoint(staged_run):
    import skimage

    photos = [str(Path(skimage.__file__).parent / "data" / name) for name in PHOTOS]
    out = staged_run["base"] / "infer"
    result = tool("tools/infer.py", *photos, "--checkpoint", str(staged_run["cls"]), "--out", str(out), "--save", "all",
                  "--json")
    records = json.loads(result.stdout)
    assert [r["ok"] for r in records] == [True] * 4
    for name, record in zip(PHOTOS, records):
        stem = Path(name).stem
        assert record["output_stem"] == stem
        saved = json.loads((out / f"{stem}.json").read_text())
        probs = [s["prob"] for s in saved["scenes"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert saved["graph"]["nodes"], name  # a trained segmenter finds objects in every photo
        for kind in ("_sem.png", "_overlay.png", "_panel.png", ".html"):
            assert (out / f"{stem}{kind}").is_file()


def test_graph_cache_from_a_published_segmenter_feeds_training(synthetic_root, tmp_path):
    pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    from test_hf_segmenter import HF_ADE20K_NAMES, _save_segformer

    folder = _save_segformer(tmp_path / "segformer", HF_ADE20K_NAMES)
    root = tmp_path / "data"
    root.symlink_to(synthetic_root, target_is_directory=True)
    overrides = [f"data.root={root}", "data.image_size=[64, 64]", "data.num_workers=0", "data.max_items=8",
                 "model.segmenter.kind=hf", f"model.segmenter.hf_model={folder}", "model.gnn.hidden_dim=16",
                 "model.gnn.heads=2", "train.epochs=1", "train.batch_size=4", "train.warmup_steps=1",
                 f"output.dir={tmp_path / 'run'}", "output.tensorboard=false"]
    cfg = load_config(REPO / "configs/graph_only_gat.yaml", overrides)
    save_config(cfg, tmp_path / "cfg.yaml")
    before = set((root / "graphs").glob("*-pred-*"))
    tool("tools/build_graphs.py", "--config", str(tmp_path / "cfg.yaml"), "--source", "pred", "--segmenter",
         f"hf:{folder}", "--no-progress", "--workers", "0")
    assert len(set((root / "graphs").glob("*-pred-*")) - before) == 2  # one cache per split, for this segmenter
    train(cfg)  # finds the caches the tool wrote for this segmenter
    ckpt = load_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt["step"] == 2 and ckpt["class_table"]["name"] == "ade20k150"


def test_export_tool_round_trips_predictions(staged_run, tmp_path):
    import skimage.data

    from twostream.inference import Predictor

    tool("tools/export.py", "--checkpoint", str(staged_run["cls"]), "--out", str(tmp_path / "export"))
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [  # the export files + config.json and the card
        "README.md", "class_table.json", "config.json", "config.yaml", "model.safetensors",
        "stream_means.safetensors", "vocabulary.json"]  # the classifier recorded its stream means at the end
    image = skimage.data.coffee()
    [a] = Predictor.from_checkpoint(staged_run["cls"]).predict([image])
    [b] = Predictor.from_checkpoint(tmp_path / "export").predict([image])
    assert a.scenes == b.scenes and (a.sem_map == b.sem_map).all() and a.graph.equal(b.graph)
