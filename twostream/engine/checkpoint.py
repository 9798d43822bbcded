"""Checkpoints: plain dicts of unwrapped state, written atomically, loaded with ``weights_only=True``.

A checkpoint holds ``format``, ``stage``, ``model`` (state dict without ``module.`` prefixes), ``optimizer``,
``scheduler``, ``scaler``, ``epoch`` (epochs completed), ``step`` (optimizer steps taken), ``batch_in_epoch``
(batches of the current epoch already consumed, for a mid-epoch resume), ``config`` (the resolved config as a dict),
``vocabulary`` (scene names in class order), ``class_table`` (the segmenter's label set), ``rng`` and ``metrics``.
Only containers, numbers, strings and tensors go in, so ``torch.load(weights_only=True)`` reads it back.

A run folder keeps ``last.pth`` (the newest), ``best.pth`` (best validation metric) and the last K numbered
checkpoints ``ckpt_e{epoch}_s{step}.pth``. A write that fails (disk full, read-only folder) is one
:class:`CheckpointError` naming the file; the files written before stay as they were.

Wherever a trained model is accepted (``tools/eval.py``, ``tools/infer.py``, ``tools/build_graphs.py``, ``Predictor``,
:func:`load_segmenter`, ``model.segmenter.checkpoint``) it may be given three ways, resolved by
:func:`resolve_checkpoint` and read by :func:`load_trained`: a run folder (its ``best.pth``, else ``last.pth``), a
checkpoint file, or a model-only export (:func:`export_safetensors`: its folder or the ``model.safetensors`` in it), of
a classifier or of a segmenter alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import random
import re
import shlex
import shutil
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from twostream.atomic import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from twostream.config import Config

log = logging.getLogger(__name__)

__all__ = [
    "COMMAND_FILE",
    "EXPORT_FILES",
    "FORMAT",
    "STREAM_MEANS_FILE",
    "CheckpointError",
    "CheckpointManager",
    "atomic_torch_save",
    "capture_rng",
    "export_safetensors",
    "inference_config",
    "link_checkpoint",
    "load_checkpoint",
    "load_model_state",
    "load_segmenter",
    "load_trained",
    "read_commands",
    "record_command",
    "resolve_checkpoint",
    "resolve_segmenter_config",
    "restore_rng",
    "trained_input_size",
    "write_export",
]

FORMAT = "twostream-checkpoint-v1"
# What export_safetensors writes; vocabulary.json only for a classifier (a segmenter has no scenes).
EXPORT_FILES = ("model.safetensors", "config.yaml", "vocabulary.json", "class_table.json")
STREAM_MEANS_FILE = "stream_means.safetensors"  # optional in an export: the stream means of explanations


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, foreign, or does not fit the model. The message is one line."""


def write_error(path: Path, e: OSError, what: str = "the checkpoint") -> CheckpointError:
    """One line for a write that the file system refused, naming the file and the way out."""
    why = e.strerror or str(e) or type(e).__name__
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free disk space (or lower train.keep_last)"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = f"make {path.parent} writable or set output.dir to another folder"
    else:
        hint = "check the folder, or set output.dir to another folder"
    return CheckpointError(f"{path}: cannot write {what} ({why}); {hint}; the checkpoints written before are intact")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`twostream.atomic.atomic_write` (a temporary file in the same folder, flushed to
    disk, renamed over ``path``): a crash (or SIGKILL) at any moment leaves either the old file or the new one.

    Raises:
        CheckpointError: the file system refused the write (disk full, read-only or foreign folder); the temporary
            file is removed and the file at ``path``, if any, is untouched.
    """
    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:
            torch.save(obj, f)

    path = Path(path)
    try:
        return atomic_write(path, save, durable=True)
    except OSError as e:
        raise write_error(path, e) from None


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        # a read-only folder keeps its temporary file; its name is never mistaken for a checkpoint
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Read a twostream checkpoint file; raise :class:`CheckpointError` naming the file and what to do.

    ``mmap``: map the tensors instead of reading them (cheap when only the config is wanted).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train one with tools/train.py or pass the right path")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (0 bytes); it was never written completely, use another")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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

COMMAND_FILE = "command.txt"  # the command lines that trained a run (model cards quote them)


def record_command(run_dir: str | Path, argv: Sequence[str] | None = None) -> Path | None:
    """Append the command line that runs now (``python tools/train.py --config ...``) to ``<run_dir>/command.txt``.

    ``argv`` is ``sys.argv``-like (default: ``sys.argv``): a script and its arguments, recorded after ``python``, or
    the console command's words (``["twostream", "train", ...]``), recorded as they are. One line per distinct
    command: resuming with the same command adds nothing, a changed one (more epochs) is appended. Only rank 0 writes
    (``RANK`` unset or 0). Returns the file, or ``None`` on other ranks.
    """
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return None
    argv = list(sys.argv if argv is None else argv)
    line = shlex.join(argv if argv[:1] == ["twostream"] else ["python", *argv])
    path = Path(run_dir) / COMMAND_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = read_commands(path.parent)
    if not lines or lines[-1] != line:
        with path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
    return path


def read_commands(run_dir: str | Path) -> list[str]:
    """The commands :func:`record_command` wrote in ``run_dir``, oldest first (``[]`` when none were recorded)."""
    path = Path(run_dir) / COMMAND_FILE
    if not path.is_file():
        return []
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def link_checkpoint(target: str | Path, alias: str | Path) -> Path:
    """Make ``alias`` a hard link to ``target`` (a copy where the file system has no hard links), swapped in atomically.

    A run folder's ``last.pth`` / ``best.pth`` and its newest numbered checkpoint are then one file on disk, not three.

    Raises:
        CheckpointError: the file system refused the write; ``alias``, if it existed, still holds its old content.
    """
    target, alias = Path(target), Path(alias)
    tmp = alias.with_name(f".{alias.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(target, tmp)
        except OSError as e:  # file systems without hard links
            if e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT):
                raise
            shutil.copyfile(target, tmp)
        os.replace(tmp, alias)
    except OSError as e:
        _remove(str(tmp))
        raise write_error(alias, e) from None
    return alias


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
        """Write the numbered checkpoint, then point ``last.pth`` (and ``best.pth``) at it, then prune.

        Raises:
            CheckpointError: one line naming the file the file system refused; ``last.pth`` and ``best.pth`` then
                still hold the previous checkpoint (each is swapped in whole or not at all).
        """
        path = atomic_torch_save(state, self.run_dir / f"ckpt_e{epoch:03d}_s{step:07d}.pth")
        link_checkpoint(path, self.last)
        if is_best:
            link_checkpoint(path, self.best)
        for old in self.numbered()[: -self.keep_last]:
            try:
                old.unlink(missing_ok=True)
            except OSError as e:  # pruning is housekeeping: the new checkpoint is already safe
                log.warning("%s: could not remove an old checkpoint (%s)", old, e.strerror or e)
        return path



# --------------------------------------------------------------------------------------------------------------------
# Loading pieces for other tools
# --------------------------------------------------------------------------------------------------------------------


def resolve_checkpoint(path: str | Path) -> Path:
    """The file a trained-model argument names: a run folder -> its ``best.pth``, else ``last.pth``; an export folder
    -> its ``model.safetensors``; a file (``.pth`` or ``.safetensors``) -> itself.

    Raises:
        CheckpointError: one line saying what was looked for where.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("best.pth", "last.pth", "model.safetensors"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: folder holds no best.pth or last.pth (a run folder of tools/train.py) and no "
                              "model.safetensors (an export of tools/export.py); give one of those or a checkpoint "
                              "file (make demo writes runs/quickstart)")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (looked for a run folder, a checkpoint file or an export "
                              "folder); train one with tools/train.py (make demo writes runs/quickstart) or pass the "
                              "right path")
    return path


def _load_export(file: Path, weights: bool = True) -> dict:
    """An export folder's files as a checkpoint-like dict (no optimizer state); a missing or bad file is one line.
    ``weights=False``: ``model`` is empty and only the file's header is read."""
    import yaml
    from safetensors import safe_open

    from twostream.config import ConfigError, config_from_dict, config_to_dict

    folder = file.parent
    missing = [n for n in EXPORT_FILES[1:] if n != "vocabulary.json" and not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: model export lacks {', '.join(missing)}; export again with "
                              "tools/export.py (twostream.engine.checkpoint.export_safetensors)")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()} if weights else {}  # noqa: SIM118 (no __iter__)
    except Exception as e:  # safetensors raises its own error types for a truncated or foreign file
        raise CheckpointError(f"{file}: not a readable safetensors file "
                              f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    stage = meta.get("stage") or ("classifier" if (folder / "vocabulary.json").is_file() else "segmentation")
    if stage == "classifier" and not (folder / "vocabulary.json").is_file():
        raise CheckpointError(f"{folder}: model export of a classifier lacks vocabulary.json (its scene names); "
                              "export again with tools/export.py")
    try:  # the resolved config of a run, validated like a checkpoint's (config_from_dict)
        cfg = config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()) or {},
                               source=str(folder / "config.yaml"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{folder / 'config.yaml'}: not valid YAML ({getattr(e, 'problem', e)})") from None
    try:
        class_table = json.loads((folder / "class_table.json").read_text())
        vocabulary = None
        if stage == "classifier":
            from twostream.data.vocabulary import SceneVocabulary

            vocabulary = list(SceneVocabulary.load(folder / "vocabulary.json").names)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder}: bad vocabulary.json or class_table.json ({e})") from None
    step = meta.get("step", "0")
    out = {"format": FORMAT, "stage": stage, "model": state, "config": config_to_dict(cfg),
           "vocabulary": vocabulary, "class_table": class_table, "step": int(step) if step.isdigit() else 0}
    means_file = folder / STREAM_MEANS_FILE
    if means_file.is_file():
        try:
            with safe_open(str(means_file), framework="pt") as f:
                means: dict = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
                means["num_images"] = int((f.metadata() or {}).get("num_images", 0))
        except Exception as e:
            raise CheckpointError(f"{means_file}: not a readable safetensors file ({str(e).splitlines()[0][:200]});"
                                  " delete it (explanations then use a zero baseline) or export again") from None
        out["stream_means"] = means
    return out


def load_trained(path: str | Path, mmap: bool = False, weights: bool = True) -> dict:
    """A trained model from a run folder, a checkpoint file or an export (see :func:`resolve_checkpoint`).

    Returns the checkpoint dict (``stage``, ``model``, ``config``, ``class_table``, ``vocabulary``, ``step``, ...;
    an export has no optimizer state) with ``"path"``: the file it was read from. ``mmap``: a ``.pth`` file's tensors
    are memory-mapped, read only when touched. ``weights=False``: for a caller that wants the config and tables
    only; an export's ``model`` is then empty (its weights file is not read), a ``.pth`` file is memory-mapped.

    Raises:
        CheckpointError: one line: not found, truncated, foreign, or an incomplete export.
    """
    file = resolve_checkpoint(path)
    if file.suffix == ".safetensors":
        ckpt = _load_export(file, weights=weights)
    else:
        ckpt = load_checkpoint(file, mmap=mmap or not weights)
    ckpt["path"] = file
    return ckpt


def inference_config(cfg: Config) -> Config:
    """The training config, made to build the model from trained weights alone: no downloads, no second checkpoint."""
    m = cfg.model
    return dataclasses.replace(cfg, model=dataclasses.replace(
        m,
        segmenter=dataclasses.replace(m.segmenter, pretrained=False, pretrained_path="", checkpoint=""),
        image_encoder=dataclasses.replace(m.image_encoder, pretrained=False, pretrained_path=""),
    ))


def load_segmenter(path: str | Path | dict, device: str | torch.device = "cpu"):
    """A trained segmenter from a segmentation-stage checkpoint, a classifier checkpoint that contains one, or the
    export of either (a run folder resolves to its ``best.pth``; see :func:`resolve_checkpoint`); or from such a
    checkpoint already read with :func:`load_trained` (its dict), so that a caller holding it does not read it again.

    The segmenter is built from the checkpoint's own config: the checkpoint is the one source of truth for its
    architecture. Returns the :class:`~twostream.models.segmenter.Segmenter` in eval mode on ``device``, with the
    class table the checkpoint recorded.
    """
    from twostream.config import config_from_dict
    from twostream.data.classes import ClassTable
    from twostream.models.segmenter import build_segmenter

    ckpt = path if isinstance(path, dict) else load_trained(path)
    source = ckpt["path"]
    cfg = inference_config(config_from_dict(ckpt["config"], source=f"{source} (config)"))
    class_table = ClassTable.from_dict(ckpt["class_table"])
    state = ckpt["model"]
    if ckpt.get("stage") == "classifier":
        prefix = "segmenter."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state or cfg.model.segmenter.kind == "none":
            raise CheckpointError(f"{source}: this classifier checkpoint holds no segmenter (an image-only model, or "
                                  "graphs from annotations); give a segmentation-stage checkpoint")
    # The weights come from this checkpoint: inference_config fetches no ImageNet weights and no other checkpoint.
    segmenter = build_segmenter(cfg.model.segmenter, class_table)
    load_model_state(segmenter, state, source)
    return segmenter.to(device).eval()


def resolve_segmenter_config(cfg: Config) -> Config:
    """A classifier config whose ``model.segmenter`` names a trained UPSNet checkpoint, with the segmenter's
    architecture (:data:`~twostream.config.SEGMENTER_ARCHITECTURE`) taken from that checkpoint's own config.

    The checkpoint decides the architecture; a classifier config need not repeat it. A key the classifier config also
    sets (any value other than the default) must agree with the checkpoint's, else one :class:`ConfigError` names
    the first differing key and both values. ``checkpoint`` becomes the file it resolves to (a run folder's
    ``best.pth``, an export's ``model.safetensors``), so the run's config records which file it used and graph caches
    key on that file. ``input_size: null`` becomes the size the segmenter was trained at
    (:func:`trained_input_size`), so the run records the size its segmenter segments at. Other configs come back
    unchanged.
    """
    from twostream.config import (
        SEGMENTER_ARCHITECTURE,
        ConfigError,
        SegmenterConfig,
        config_from_dict,
        segmenter_needed,
    )
    from twostream.models.segmenter import segmenter_class

    seg = cfg.model.segmenter
    if (cfg.train.stage != "classifier" or seg.kind == "none" or not segmenter_class(seg.kind).weights_from_checkpoint
            or not seg.checkpoint or not segmenter_needed(cfg)):
        return cfg
    ckpt = load_trained(seg.checkpoint, weights=False)
    source = ckpt["path"]
    trained = config_from_dict(ckpt["config"], source=f"{source} (config)").model.segmenter
    if trained.kind != seg.kind:
        raise ConfigError(f"model.segmenter.checkpoint: {source} holds a '{trained.kind}' segmenter, not a trained "
                          f"'{seg.kind}' one; give a segmentation-stage checkpoint (configs/seg/*.yaml)")
    default = SegmenterConfig()
    for key in SEGMENTER_ARCHITECTURE:
        mine, theirs = getattr(seg, key), getattr(trained, key)
        if mine != theirs and mine != getattr(default, key):
            raise ConfigError(f"model.segmenter.{key} is {mine!r} but the segmenter checkpoint {source} was trained "
                              f"with {theirs!r}; the checkpoint decides the architecture: drop the key or set it to "
                              f"{theirs!r}")
    arch = {key: getattr(trained, key) for key in SEGMENTER_ARCHITECTURE}
    arch["checkpoint"] = str(source)
    if seg.input_size is None:  # segment at the size the segmenter was trained at (docs/resolution.md)
        # None when the checkpoint records none: the model then falls back to data.image_size, logged once there
        arch["input_size"] = trained_input_size(ckpt["config"])
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, segmenter=dataclasses.replace(seg, **arch)))


def trained_input_size(config: dict) -> tuple[int, int] | None:
    """The ``(H, W)`` a checkpoint's segmenter segments at, from the checkpoint's config as saved (a dict): its
    ``model.segmenter.input_size`` when set (a classifier that resolved it), else its ``data.image_size`` (the size a
    segmentation run trained at, or a classifier of earlier versions segmented at); ``None`` when it records neither."""
    seg = (config.get("model") or {}).get("segmenter") or {}
    size = seg.get("input_size") or (config.get("data") or {}).get("image_size")
    if not isinstance(size, list | tuple) or len(size) != 2:
        return None
    return int(size[0]), int(size[1])


def write_export(out_dir: str | Path, *, state: dict[str, torch.Tensor], config: Config, class_table: dict,
                 vocabulary=None, stage: str = "classifier", step: int | None = None,
                 stream_means: dict | None = None) -> Path:
    """The one writer of the export format (what :func:`load_trained` reads back, what ``tools/export.py`` and
    ``SceneClassifier.save_pretrained`` write): ``model.safetensors`` (``format`` / ``stage`` / ``step`` metadata;
    written to a temporary file and renamed), ``config.yaml``, ``class_table.json``, for a classifier
    ``vocabulary.json`` (a ``SceneVocabulary``, training counts kept, or a list of names) and, when the checkpoint
    has them, ``stream_means.safetensors`` (the training-set stream means explanations replace a stream by). No
    optimizer state, nothing pickled. Returns the weights file."""
    from safetensors.torch import save_file

    from twostream.config import save_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def save(tensors: dict[str, torch.Tensor], name: str, metadata: dict[str, str]) -> Path:
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        return atomic_write(out / name, lambda tmp: save_file(tensors, tmp, metadata=metadata), durable=True)

    weights = save(state, "model.safetensors", {"format": FORMAT, "stage": str(stage), "step": str(step)})
    save_config(config, out / "config.yaml")
    if vocabulary is not None:
        from twostream.data.vocabulary import SceneVocabulary

        if not isinstance(vocabulary, SceneVocabulary):
            vocabulary = SceneVocabulary.from_names(list(vocabulary))
        vocabulary.save(out / "vocabulary.json")
    atomic_write_text(out / "class_table.json", json.dumps(class_table))
    means = {k: v for k, v in (stream_means or {}).items() if isinstance(v, torch.Tensor)}
    (out / STREAM_MEANS_FILE).unlink(missing_ok=True)
    if means:
        save(means, STREAM_MEANS_FILE, {"num_images": str(int(stream_means.get("num_images", 0)))})
    return weights


def export_safetensors(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Model-only export for sharing (:func:`write_export`) of a checkpoint, a run folder or an export; everything
    that takes a checkpoint takes the folder back (:func:`load_trained`), a segmenter's export too."""
    from twostream.config import config_from_dict

    ckpt = load_trained(checkpoint)
    vocabulary = ckpt.get("vocabulary") or None
    run_vocabulary = Path(ckpt["path"]).parent / "vocabulary.json"
    if vocabulary and run_vocabulary.is_file():  # the run's own file keeps the training counts
        from twostream.data.vocabulary import SceneVocabulary

        saved = SceneVocabulary.load(run_vocabulary)
        vocabulary = saved if list(saved.names) == list(vocabulary) else vocabulary
    return write_export(out_dir, state=ckpt["model"], config=config_from_dict(ckpt["config"], source=str(checkpoint)),
                        class_table=ckpt["class_table"], vocabulary=vocabulary, stage=str(ckpt.get("stage")),
                        step=ckpt.get("step"), stream_means=ckpt.get("stream_means"))
