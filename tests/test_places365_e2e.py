"""Places365 end to end, tiny and generated in the real layout: the stores built from a published segmenter's
predictions (tools/build_graphs.py, a tiny random SegFormer saved locally), then configs/places365_graph_only.yaml
(reading the stores alone, no image) and configs/places365_swin_gat.yaml (images + stored graphs) trained."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from twostream.config import load_config, save_config
from twostream.data.io import read_scene_categories
from twostream.engine.checkpoint import load_checkpoint
from twostream.engine.trainer import train

REPO = Path(__file__).resolve().parents[1]
SCENES = ("bedroom", "kitchen", "street", "bathroom")


def _places_from_synthetic(synthetic_root: Path, root: Path) -> Path:
    """The synthetic ADE20K-format images rewritten in Places365's layout (file lists, category list, folders)."""
    scenes = read_scene_categories(synthetic_root / "sceneCategories.txt")
    (root / "categories_places365.txt").parent.mkdir(parents=True)
    (root / "categories_places365.txt").write_text("".join(f"/{s[0]}/{s} {i}\n" for i, s in enumerate(SCENES)))
    train, val = [], []
    for split, lines, folder in (("training", train, "data_256"), ("validation", val, "val_256")):
        for image in sorted((synthetic_root / "images" / split).glob("*.jpg")):
            scene = scenes[image.stem]
            rel = f"{scene[0]}/{scene}/{image.name}" if split == "training" else image.name
            (root / folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, root / folder / rel)
            lines.append(f"/{rel} {SCENES.index(scene)}" if split == "training" else f"{rel} {SCENES.index(scene)}")
    (root / "places365_train_standard.txt").write_text("\n".join(train) + "\n")
    (root / "places365_val.txt").write_text("\n".join(val) + "\n")
    return root


def _build_graphs(*args: str) -> None:
    spec = importlib.util.spec_from_file_location("build_graphs_tool", REPO / "tools" / "build_graphs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(module.get_args_parser().parse_args(list(args))) == 0


TINY = ["data.image_size=[64, 64]", "data.num_workers=0", "model.gnn.hidden_dim=16", "model.gnn.heads=2",
        "model.gnn.num_layers=2", "model.gnn.class_embed_dim=8", "train.epochs=2", "train.batch_size=8",
        "train.warmup_steps=2", "train.device=cpu", "train.amp=fp32", "eval.batch_size=16", "eval.topk=2",
        "output.tensorboard=false"]


def test_places365_store_build_then_graph_only_and_two_stream_training(synthetic_root, tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    from test_hf_segmenter import HF_ADE20K_NAMES, _save_segformer

    root = _places_from_synthetic(synthetic_root, tmp_path / "places365")
    segformer = _save_segformer(tmp_path / "segformer", HF_ADE20K_NAMES)
    common = [*TINY, f"data.root={root}", f"model.segmenter.hf_model={segformer}",
              f"graph.cache_dir={tmp_path}/graphs/{{split}}"]
    graph_only = load_config(REPO / "configs" / "places365_graph_only.yaml",
                             [*common, f"output.dir={tmp_path / 'graph_only'}"])
    save_config(graph_only, tmp_path / "graph_only.yaml")
    _build_graphs("--config", str(tmp_path / "graph_only.yaml"), "--no-progress", "--batch-size", "8")
    assert sorted(p.name for p in (tmp_path / "graphs").iterdir()) == ["training", "validation"]

    import twostream.data.image_list as image_list

    real_load = image_list.load_image
    monkeypatch.setattr(image_list, "load_image", lambda *a, **k: pytest.fail("graph-only training read an image"))
    metrics = train(graph_only)
    assert metrics["num_images"] == 16 and load_checkpoint(tmp_path / "graph_only" / "last.pth")["step"] == 8
    monkeypatch.setattr(image_list, "load_image", real_load)

    two_stream = load_config(REPO / "configs" / "places365_swin_gat.yaml",
                             [*common, f"output.dir={tmp_path / 'two_stream'}", "model.image_encoder.name=test_vit",
                              "model.image_encoder.pretrained=false", "model.fusion.dim=16"])
    metrics = train(two_stream)  # images from the Places365 folders, graphs from the same stores
    ckpt = load_checkpoint(tmp_path / "two_stream" / "last.pth")
    assert metrics["num_images"] == 16 and ckpt["step"] == 8 and ckpt["vocabulary"] == sorted(SCENES)

    # tools/eval.py on it reads the split through its own reader (data.format: places365), graphs from the stores
    from twostream.engine.evaluate import evaluate_checkpoint

    scored = evaluate_checkpoint(tmp_path / "two_stream", out_dir=tmp_path / "eval", device="cpu")
    assert scored["num_images"] == 16 and 0.0 <= scored["top1"] <= 1.0  # the 16 validation images
