"""Checkpoints: plain dicts of unwrapped state, written atomically, loaded with ``weights_only=True``.

A checkpoint holds ``format``, ``stage``, ``model`` (state dict without ``module.`` prefixes), ``optimizer``,
``scheduler``, ``scaler``, ``epoch`` (epochs completed), ``step`` (optimizer steps taken), ``batch_in_epoch``
(batches of the current epoch already consumed, for a mid-epoch resume), ``config`` (the resolved config as a dict),
``vocabulary`` (scene names in class order), ``class_table`` (the segmenter's label set), ``rng`` and ``metrics``.
Only containers, numbers, strings and tensors go in, so ``torch.load(weights_only=True)`` reads it back.

A run folder keeps ``last.pth`` (the newest), ``best.pth`` (best validation metric) and the last K numbered
checkpoints ``ckpt_e{epoch}_s{step}.pth``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "CheckpointError",
    "CheckpointManager",
    "atomic_torch_save",
    "capture_rng",
    "export_safetensors",
    "load_checkpoint",
    "load_model_state",
    "load_segmenter",
    "restore_rng",
]

FORMAT = "twostream-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, foreign, or does not fit the model. The message is one line."""


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, flush to disk, then rename over ``path``.

    A crash (or SIGKILL) at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a twostream checkpoint; raise :class:`CheckpointError` naming the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train one with tools/train.py or pass the right path")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (0 bytes); it was never written completely, use another")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: checkpoint is truncated or corrupt ({first}); "
                              "use an older one (ckpt_*.pth) or retrain") from None
    except Exception as e:  # weights_only refuses pickled objects: not one of ours
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: not a twostream checkpoint (cannot be loaded safely: {first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a twostream checkpoint (format {found!r}, expected {FORMAT!r}); "
                              "for a bare state dict of weights use model.pretrained_path instead")
    return ckpt


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` strictly; a mismatch names the first parameter and says the checkpoint is from another config."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    for key, tensor in state.items():
        if key in own and tuple(own[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: parameter '{key}' has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(own[key].shape)} in the model; the checkpoint comes from another config "
                "(load it with its own config.yaml)")
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(
            f"{source}: checkpoint does not fit the model ({len(missing)} missing, {len(unexpected)} unexpected "
            f"keys, e.g. {what}); it comes from another config (load it with its own config.yaml)")
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------------------------------------


def capture_rng() -> dict:
    """Python, numpy and torch RNG states as weights_only-safe values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------------------------
# Run-folder bookkeeping
# --------------------------------------------------------------------------------------------------------------------

_NUMBERED = re.compile(r"ckpt_e(\d+)_s(\d+)\.pth$")


class CheckpointManager:
    """Writes ``ckpt_e{epoch}_s{step}.pth``, keeps the last ``keep_last``, and keeps ``last.pth`` / ``best.pth``.

    ``last.pth`` and ``best.pth`` are hard links to (or copies of) a numbered file, swapped in atomically.
    """

    def __init__(self, run_dir: str | Path, keep_last: int = 3) -> None:
        self.run_dir = Path(run_dir)
        self.keep_last = max(1, keep_last)

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pth"

    @property
    def best(self) -> Path:
        return self.run_dir / "best.pth"

    def numbered(self) -> list[Path]:
        files = [p for p in self.run_dir.glob("ckpt_e*_s*.pth") if _NUMBERED.search(p.name)]
        return sorted(files, key=lambda p: tuple(int(g) for g in _NUMBERED.search(p.name).groups()))

    def save(self, state: dict, epoch: int, step: int, is_best: bool = False) -> Path:
        path = atomic_torch_save(state, self.run_dir / f"ckpt_e{epoch:03d}_s{step:07d}.pth")
        self._alias(path, self.last)
        if is_best:
            self._alias(path, self.best)
        for old in self.numbered()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def _alias(self, target: Path, alias: Path) -> None:
        tmp = alias.with_name(f".{alias.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(target, tmp)
        except OSError:  # file systems without hard links
            import shutil

            shutil.copyfile(target, tmp)
        os.replace(tmp, alias)


# --------------------------------------------------------------------------------------------------------------------
# Loading pieces for other tools
# --------------------------------------------------------------------------------------------------------------------


def load_segmenter(path: str | Path, device: str | torch.device = "cpu"):
    """A trained segmenter from a segmentation-stage checkpoint or from a classifier checkpoint that contains one.

    Returns the :class:`~twostream.models.segmenter.Segmenter` in eval mode on ``device``, with the class table the
    checkpoint recorded.
    """
    from twostream.config import config_from_dict
    from twostream.data.classes import ClassTable
    from twostream.models.segmenter import build_segmenter

    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"], source=f"{path} (config)")
    class_table = ClassTable.from_dict(ckpt["class_table"])
    seg_cfg = cfg.model.segmenter
    # The weights come from this checkpoint: do not also fetch ImageNet weights or another checkpoint.
    seg_cfg = type(seg_cfg)(**{**seg_cfg.__dict__, "pretrained": False, "pretrained_path": "", "checkpoint": ""})
    segmenter = build_segmenter(seg_cfg, class_table)
    state = ckpt["model"]
    if ckpt.get("stage") == "classifier":
        prefix = "segmenter."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{path}: this classifier checkpoint holds no segmenter (an image-only model?)")
    load_model_state(segmenter, state, path)
    return segmenter.to(device).eval()


def export_safetensors(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Model-only export for sharing: ``model.safetensors`` + ``config.yaml`` + ``vocabulary.json`` +
    ``class_table.json`` in ``out_dir`` (no optimizer state; loads without pickle)."""
    import json

    from safetensors.torch import save_file

    from twostream.config import config_from_dict, save_config

    ckpt = load_checkpoint(checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in ckpt["model"].items()}
    save_file(tensors, str(out / "model.safetensors"),
              metadata={"format": FORMAT, "stage": str(ckpt.get("stage")), "step": str(ckpt.get("step"))})
    save_config(config_from_dict(ckpt["config"], source=str(checkpoint)), out / "config.yaml")
    if ckpt.get("vocabulary"):
        from twostream.data.vocabulary import SceneVocabulary

        SceneVocabulary.from_names(ckpt["vocabulary"]).save(out / "vocabulary.json")
    (out / "class_table.json").write_text(json.dumps(ckpt["class_table"]))
    return out / "model.safetensors"
