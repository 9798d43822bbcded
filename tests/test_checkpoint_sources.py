"""Where a trained model comes from: a run folder, a checkpoint file or an export, for a classifier and a segmenter
alike, accepted by every tool; the segmenter's checkpoint as the one source of its architecture; the image-only
baseline, which reads no segmenter at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import module_dir, run_tool, tiny_classifier_config

from twostream.config import ConfigError, config_to_dict, load_config, save_config
from twostream.data.classes import ade20k150
from twostream.engine.checkpoint import (
    FORMAT,
    CheckpointError,
    atomic_torch_save,
    export_safetensors,
    load_checkpoint,
    load_segmenter,
    load_trained,
    resolve_checkpoint,
)
from twostream.engine.trainer import train

REPO = Path(__file__).resolve().parents[1]
# configs/seg/quickstart.yaml at test size: the architecture keys a classifier must learn from the checkpoint
SEG_ARCH = ["model.segmenter.backbone=resnet10t", "model.segmenter.fpn_channels=16",
            "model.segmenter.head_channels=8"]


@pytest.fixture(scope="module")
def seg_run(synthetic_root, request) -> Path:
    """A segmentation-stage run folder (random weights, the format tools/train.py writes) and its export."""
    from twostream.models.segmenter import build_segmenter

    folder = module_dir(request, "seg") / "run"
    cfg = load_config(REPO / "configs/seg/quickstart.yaml",
                      [f"data.root={synthetic_root}", "data.image_size=[64, 64]", *SEG_ARCH, f"output.dir={folder}"])
    torch.manual_seed(0)
    model = build_segmenter(cfg.model.segmenter, ade20k150())
    ckpt = {"format": FORMAT, "stage": "segmentation", "model": model.state_dict(), "epoch": 0, "step": 3,
            "batch_in_epoch": 0, "config": config_to_dict(cfg), "class_table": ade20k150().to_dict()}
    atomic_torch_save(ckpt, folder / "best.pth")
    export_safetensors(folder, folder.parent / "export")
    return folder


@pytest.fixture(scope="module")
def cls_run(request) -> Path:
    from infer_fixtures import make_run

    folder = make_run(module_dir(request, "cls") / "run")
    export_safetensors(folder, folder.parent / "export")
    return folder


# ---------------------------------------------------------------------------------------------------- resolution


def test_resolve_checkpoint_takes_run_folders_files_and_exports(seg_run, tmp_path):
    export = seg_run.parent / "export"
    assert resolve_checkpoint(seg_run) == seg_run / "best.pth"
    assert resolve_checkpoint(seg_run / "best.pth") == seg_run / "best.pth"
    assert resolve_checkpoint(export) == export / "model.safetensors"
    assert resolve_checkpoint(export / "model.safetensors") == export / "model.safetensors"
    with pytest.raises(CheckpointError, match=r"holds no best\.pth or last\.pth \(a run folder of tools/train\.py\) "
                                              r"and no model\.safetensors \(an export of tools/export\.py\)"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"nope: checkpoint not found \(looked for a run folder, a checkpoint "
                                              r"file or an export folder\)"):
        resolve_checkpoint(tmp_path / "nope")


def test_a_segmenter_export_loads_with_the_checkpoints_weights(seg_run):
    export = seg_run.parent / "export"
    assert sorted(p.name for p in export.iterdir()) == ["class_table.json", "config.yaml", "model.safetensors"]
    a, b = load_segmenter(seg_run), load_segmenter(export)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    trained = load_trained(export)
    assert trained["stage"] == "segmentation" and trained["step"] == 3 and trained["vocabulary"] is None
    # the config-only read (segmenter specs, config checks, eval) leaves the weights on disk, and says the same
    header = load_trained(export, weights=False)
    assert header["model"] == {} and trained["model"]
    assert {k: v for k, v in header.items() if k != "model"} == {k: v for k, v in trained.items() if k != "model"}
    assert load_trained(seg_run, weights=False)["config"] == load_checkpoint(seg_run / "best.pth")["config"]


def test_a_segmenter_is_scored_on_full_ade20k_mapped_to_150_at_the_annotations_size(seg_run, tmp_path):
    from test_data_readers import _ade_full

    from twostream.engine.evaluate import evaluate_checkpoint

    root = _ade_full(tmp_path / "ADE20K_2021_17_01")  # validation: one 12 x 8 image
    cfg = load_config(None, [f"data.root={root}", "data.format=ade20k_full", "data.full.labels=ade150",
                             "data.scenes.mode=all", "data.num_workers=0", "data.image_size=[64, 64]"])
    metrics = evaluate_checkpoint(seg_run, cfg=cfg, split="validation", out_dir=tmp_path / "eval", device="cpu")
    s = metrics["segmentation"]
    assert s["num_images"] == 1 and 0 <= s["miou"] <= 1 and metrics["graph_quality"]["micro"]["node_f1"] >= 0
    full_labels = load_config(None, [f"data.root={root}", "data.format=ade20k_full", "data.full.labels=full"])
    with pytest.raises(ValueError, match=r"a segmenter of 'ade20k150' labels cannot be scored on the annotations of "
                                         r".* \('ade20k_full' labels\)"):
        evaluate_checkpoint(seg_run, cfg=full_labels, split="validation", out_dir=tmp_path / "eval2", device="cpu")


def test_eval_tool_on_a_classifier_export(cls_run, synthetic_root, tmp_path, capsys):
    opts = ["--opts", f"data.root={synthetic_root}", "data.num_workers=0", "--device", "cpu"]
    rc, _, err = run_tool("tools/eval.py", "--checkpoint", cls_run.parent / "export", "--out", tmp_path / "export",
                          *opts, capsys=capsys)
    assert rc == 0, err
    rc, _, err = run_tool("tools/eval.py", "--checkpoint", cls_run, "--out", tmp_path / "run", *opts, capsys=capsys)
    assert rc == 0, err
    exported, original = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("export", "run"))
    assert exported["checkpoint"] == str(cls_run.parent / "export" / "model.safetensors")
    assert exported["num_images"] == original["num_images"] == 16
    for key in ("top1", "mean_class_accuracy", "confusion_matrix"):
        assert exported[key] == original[key], key
    assert exported["segmentation"]["miou"] == original["segmentation"]["miou"]  # its own segmenter, online


def test_infer_and_predictor_with_an_exported_segmenter(seg_run, cls_run, tmp_path, capsys):
    import numpy as np
    import skimage.data

    from twostream.inference import Predictor

    export = seg_run.parent / "export"
    photo = tmp_path / "coffee.png"
    from PIL import Image

    Image.fromarray(skimage.data.coffee()).save(photo)
    results = {}
    for name, spec in (("export", f"upsnet:{export}"), ("run", f"upsnet:{seg_run}")):
        rc, out, err = run_tool("tools/infer.py", photo, "--segmenter", spec, "--json", "--device", "cpu",
                                capsys=capsys)
        assert rc == 0, err
        [record] = json.loads(out)
        results[name] = record["graph"]
    assert results["export"] == results["run"] and results["run"]["nodes"]
    # a classifier export, its graphs supplied by the exported segmenter
    [a] = Predictor.from_checkpoint(cls_run.parent / "export", segmenter=f"upsnet:{export}").predict([photo])
    [b] = Predictor.from_checkpoint(cls_run, segmenter=f"upsnet:{seg_run / 'best.pth'}").predict([photo])
    assert a.scenes == b.scenes and np.array_equal(a.sem_map, b.sem_map)


def test_build_graphs_with_an_exported_segmenter(seg_run, synthetic_root, tmp_path, capsys):
    from twostream.graph.store import GraphStore

    cfg = tiny_classifier_config(synthetic_root, tmp_path / "unused", "model.segmenter.kind=upsnet")
    save_config(cfg, tmp_path / "cfg.yaml")
    caches = {}
    for name, flag in (("export", ["--segmenter", f"upsnet:{seg_run.parent / 'export'}"]),
                       ("run", ["--checkpoint", seg_run])):
        rc, _, err = run_tool("tools/build_graphs.py", "--config", tmp_path / "cfg.yaml", "--source", "pred", *flag,
                              "--split", "validation", "--out", tmp_path / name, "--workers", "0", "--device", "cpu",
                              "--no-progress", capsys=capsys)
        assert rc == 0, err
        caches[name] = GraphStore(tmp_path / name)
    assert caches["export"].names == caches["run"].names and len(caches["run"].names) == 16
    assert all(caches["export"].get(n).equal(caches["run"].get(n)) for n in caches["run"].names)


# ---------------------------------------------------------------------------------------------------- architecture


def test_a_classifier_naming_only_the_segmenter_checkpoint_trains_with_it(seg_run, synthetic_root, tmp_path):
    """No architecture key in the classifier config (they are all at their defaults: a ResNet-50 UPSNet): the
    checkpoint's ResNet-10 UPSNet is built, runs online every step, and is what the run records."""
    run = tmp_path / "run"
    cfg = tiny_classifier_config(synthetic_root, run, "model.segmenter.kind=upsnet",
                                 f"model.segmenter.checkpoint={seg_run}", "graph.source=online", "train.epochs=1",
                                 "data.max_items=8")
    assert cfg.model.segmenter.backbone == "resnet50"  # the default, not set by this config
    train(cfg)
    saved = load_config(run / "config.yaml").model.segmenter
    assert (saved.backbone, saved.fpn_channels, saved.head_channels) == ("resnet10t", 16, 8)
    assert saved.checkpoint == str(seg_run / "best.pth")  # the file the run folder resolved to
    ckpt, seg = load_checkpoint(run / "last.pth"), load_checkpoint(seg_run / "best.pth")
    assert all(torch.equal(ckpt["model"][f"segmenter.{k}"], v) for k, v in seg["model"].items())  # frozen, loaded


def test_a_conflicting_architecture_key_is_refused_in_one_line(seg_run, synthetic_root, tmp_path, capsys):
    """The issue's case: configs/graph_only_gat.yaml says Swin-T; the checkpoint is a ResNet UPSNet."""
    rc, _, err = run_tool("tools/train.py", "--config", REPO / "configs/graph_only_gat.yaml", "--opts",
                          f"data.root={synthetic_root}", f"output.dir={tmp_path / 'run'}",
                          f"model.segmenter.checkpoint={seg_run / 'best.pth'}", capsys=capsys)
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert last == (f"error: model.segmenter.backbone is 'swin_tiny_patch4_window7_224' but the segmenter checkpoint "
                    f"{seg_run / 'best.pth'} was trained with 'resnet10t'; the checkpoint decides the architecture: "
                    "drop the key or set it to 'resnet10t'")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_shape_mismatch_elsewhere_names_the_parameter_and_both_shapes(seg_run, tmp_path):
    ckpt = load_checkpoint(seg_run / "best.pth")
    ckpt["config"]["model"]["segmenter"]["head_channels"] = 12  # the weights no longer fit their own config
    atomic_torch_save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        load_segmenter(tmp_path / "bad.pth")
    message = str(info.value)
    assert "\n" not in message and "has shape (8, " in message and "(12, " in message and "parameter '" in message


# ---------------------------------------------------------------------------------------------------- image-only


def test_image_only_config_shows_and_reads_no_segmenter(capsys):
    rc, out, err = run_tool("tools/train.py", "--config", REPO / "configs/image_only_swin.yaml", "--print-config",
                            capsys=capsys)
    assert rc == 0, err
    import yaml

    seg = yaml.safe_load(out)["model"]["segmenter"]
    assert seg["kind"] == "none" and seg["checkpoint"] == ""  # the base's runs/upsnet_swin_t/best.pth is not read


def test_image_only_config_trains_with_no_segmenter_checkpoint_anywhere(synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    # timm's test_vit for Swin-T: the point is the config's missing segmenter, and Swin-T's checkpoint is 330 MB
    rc, _, err = run_tool("tools/train.py", "--config", REPO / "configs/image_only_swin.yaml", "--opts",
                          f"data.root={synthetic_root}", "data.image_size=[64, 64]", "data.scenes.mode=all",
                          "data.max_items=16", "data.num_workers=0", "model.image_encoder.pretrained=false",
                          "model.image_encoder.name=test_vit",
                          "train.epochs=1", "train.batch_size=8", "train.device=cpu", "eval.batch_size=16",
                          f"output.dir={run}", "output.tensorboard=false", capsys=capsys)
    assert rc == 0, err
    assert not (REPO / "runs" / "upsnet_swin_t").exists()
    ckpt = load_checkpoint(run / "last.pth")
    assert ckpt["step"] == 2 and not any(k.startswith("segmenter.") for k in ckpt["model"])
    assert load_config(run / "config.yaml").model.segmenter.kind == "none"
    # one epoch: best.pth, last.pth and the numbered checkpoint are one file on disk, stream means included
    assert "stream_means" in ckpt and len({os.stat(p).st_ino for p in run.glob("*.pth")}) == 1


def test_config_refuses_double_normalisation():
    with pytest.raises(ConfigError, match=r"data\.normalize: true would normalise the images a second time"):
        load_config(None, ["data.normalize=true"])
