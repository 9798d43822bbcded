"""Tiny trained-format checkpoints for the inference tests (tests/test_inference.py, tests/test_infer_tool.py).

No training: ``build_model`` on configs/quickstart.yaml with tiny widths, its random weights saved in the engine's
checkpoint format (what ``tools/train.py`` writes), plus the run-folder files beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from twostream.config import config_to_dict, load_config, save_config
from twostream.data.classes import ade20k150
from twostream.data.vocabulary import SceneVocabulary
from twostream.engine.checkpoint import FORMAT, atomic_torch_save

REPO = Path(__file__).resolve().parents[1]
SCENES = ["bathroom", "bedroom", "kitchen", "living_room", "street"]
SIZE = 64  # model input, pixels

# configs/quickstart.yaml at test size: a ResNet-10 UPSNet with 16-channel FPN, timm's test ViT, a 2-layer GAT.
TINY = [
    f"data.image_size=[{SIZE}, {SIZE}]",
    "model.segmenter.backbone=resnet10t",
    "model.segmenter.fpn_channels=16",
    "model.segmenter.head_channels=8",
    "model.segmenter.checkpoint=",
    "model.image_encoder.name=test_vit",
    "model.gnn.hidden_dim=16",
    "model.gnn.heads=2",
    "model.gnn.num_layers=2",
    "model.gnn.class_embed_dim=8",
    "model.fusion.dim=16",
]


def make_run(folder: Path, *overrides: str, seed: int = 0) -> Path:
    """A run folder as ``tools/train.py`` leaves it (``best.pth``, ``config.yaml``, ``vocabulary.json``,
    ``class_table.json``) holding a randomly initialised tiny classifier; returns the folder."""
    from twostream.models.two_stream import build_model

    cfg = load_config(REPO / "configs" / "quickstart.yaml", [*TINY, f"output.dir={folder}", *overrides])
    table = ade20k150()
    torch.manual_seed(seed)
    model = build_model(cfg, num_scenes=len(SCENES), class_table=table)
    # Random heads give near-uniform scenes; a larger head makes the top-k order a real test of sorting.
    with torch.no_grad():
        model.head.weight.mul_(20.0)
    ckpt = {
        "format": FORMAT, "stage": "classifier", "model": model.state_dict(), "optimizer": {}, "scheduler": {},
        "scaler": {}, "epoch": 0, "step": 0, "batch_in_epoch": 0, "best": None, "config": config_to_dict(cfg),
        "class_table": table.to_dict(), "vocabulary": list(SCENES), "rng": None, "metrics": {},
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(ckpt, folder / "best.pth")
    save_config(cfg, folder / "config.yaml")
    SceneVocabulary.from_names(SCENES).save(folder / "vocabulary.json")
    (folder / "class_table.json").write_text(json.dumps(table.to_dict()))
    return folder


def shared_run(tmp_path_factory) -> Path:
    """One default run folder per test session, shared by both inference test files (building it takes seconds)."""
    folder = tmp_path_factory.getbasetemp() / "infer-shared-run" / "quickstart"
    return folder if (folder / "best.pth").is_file() else make_run(folder)


def photos() -> dict[str, np.ndarray]:
    """The real photographs of skimage.data at their native sizes, ``(H, W, 3)`` uint8."""
    from skimage import data

    return {name: getattr(data, name)() for name in ("coffee", "astronaut", "rocket", "chelsea")}
