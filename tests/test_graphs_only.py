"""Graphs-only training and evaluation (issue 20): a graph-only classifier whose graphs are stored reads the graph
store and nothing else; deleting images/ and annotations/ changes nothing. With gt graphs and with pred graphs of a
(tiny, random) published segmenter. A missing store is one line naming the folder and the build command."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from twostream.config import save_config
from twostream.engine.checkpoint import load_checkpoint
from twostream.engine.evaluate import evaluate_checkpoint
from twostream.engine.trainer import train
from twostream.graph.store import StoreError

REPO = Path(__file__).resolve().parents[1]
GRAPH_ONLY = ("model.image_encoder.enabled=false", "model.fusion.type=none", "train.epochs=3", "train.lr=1e-2")


def _tool(*args: str) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_graphs_tool", REPO / "tools" / "build_graphs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(module.get_args_parser().parse_args(list(args))) == 0


def _no_pixels(monkeypatch) -> None:
    """Any image or annotation read fails the test (the folders are gone too)."""
    import twostream.data.ade20k as ade
    import twostream.data.io as io

    def refuse(*args, **kwargs):
        raise AssertionError(f"an image or annotation was read: {args[:1]}")

    for module in (io, ade):
        for name in ("load_image", "load_label"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


def _train_and_eval_without_pixels(cfg, root: Path, tmp_path: Path, monkeypatch) -> dict:
    shutil.rmtree(root / "images")
    shutil.rmtree(root / "annotations")
    _no_pixels(monkeypatch)
    metrics = train(cfg)
    assert metrics["num_images"] == 16
    ckpt = load_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt["step"] == 12 and ckpt["vocabulary"] == ["bathroom", "bedroom", "kitchen", "street"]
    evaluated = evaluate_checkpoint(tmp_path / "run", out_dir=tmp_path / "eval", device="cpu")
    assert evaluated["graphs"] == "store" and evaluated["num_images"] == 16
    assert evaluated["top1"] == pytest.approx(metrics["top1"])  # the same graphs as the run's own evaluation
    return evaluated


def test_gt_store_trains_and_evaluates_a_graph_only_model_without_images(synthetic_root, tiny_config, tmp_path,
                                                                         monkeypatch):
    root = tmp_path / "ade"
    shutil.copytree(synthetic_root, root)
    cfg = tiny_config(root, tmp_path / "run", *GRAPH_ONLY)
    save_config(cfg, tmp_path / "cfg.yaml")
    _tool("--config", str(tmp_path / "cfg.yaml"), "--source", "gt", "--no-progress")
    evaluated = _train_and_eval_without_pixels(cfg, root, tmp_path, monkeypatch)
    assert evaluated["top1"] > 0.5  # gt graphs of the synthetic scenes tell them apart
    from twostream.engine.checkpoint import load_checkpoint

    means = load_checkpoint(tmp_path / "run" / "last.pth")["stream_means"]  # the graph stream's, from stored graphs
    assert means["num_images"] > 0 and set(means) == {"graph_pooled", "node_emb", "num_images"}


def test_pred_store_of_a_published_segmenter_trains_without_images(synthetic_root, tiny_config, tmp_path,
                                                                    monkeypatch):
    pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    from test_hf_segmenter import HF_ADE20K_NAMES, _save_segformer

    folder = _save_segformer(tmp_path / "segformer", HF_ADE20K_NAMES)
    root = tmp_path / "ade"
    shutil.copytree(synthetic_root, root)
    cfg = tiny_config(root, tmp_path / "run", *GRAPH_ONLY, "graph.source=pred", "model.segmenter.kind=hf",
                      f"model.segmenter.hf_model={folder}")
    save_config(cfg, tmp_path / "cfg.yaml")
    with pytest.raises(StoreError, match=r"no graph store for graph.source=pred, split 'training'; build it with "
                                         r"`python tools/build_graphs.py --config <this config> --source pred"):
        train(cfg)
    _tool("--config", str(tmp_path / "cfg.yaml"), "--no-progress", "--batch-size", "8")
    _train_and_eval_without_pixels(cfg, root, tmp_path, monkeypatch)
