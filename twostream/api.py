"""SceneClassifier: the public front door of twostream, in the Hugging Face Hub's conventions.

::

    >>> from twostream import SceneClassifier
    >>> model = SceneClassifier.from_pretrained("runs/quickstart")        # run folder, saved folder or Hub id
    >>> result = model.predict("kitchen.jpg", topk=3)                     # path, PIL image, array or tensor
    >>> result.scenes
    [('kitchen', 0.81), ('dining_room', 0.07), ('bathroom', 0.03)]
    >>> result.graph.num_nodes, result.sem_map.shape                      # the scene graph; labels at photo size
    (9, (480, 640))
    >>> model.save_pretrained("exports/quickstart")                       # safetensors + config + model card
    >>> model.push_to_hub("me/twostream-quickstart")                      # the same folder, on the Hub

It is a thin layer over :class:`twostream.inference.Predictor`, the engine that runs the model: loading goes through
``Predictor.from_checkpoint`` (run folder | checkpoint | export folder), prediction through ``Predictor.predict`` and
results are its :class:`~twostream.inference.Prediction` objects. Saving and pushing come from huggingface_hub's
``ModelHubMixin``; the folder is the export format of :func:`~twostream.engine.checkpoint.export_safetensors`,
written from the weights in memory by :func:`write_model_folder` (every tool reads it: ``tools/infer.py
--checkpoint FOLDER``), plus ``config.json`` and the model card ``README.md``
(:mod:`twostream.model_card`). Nothing is pickled.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelHubMixin

from twostream.atomic import atomic_write_text
from twostream.engine.checkpoint import EXPORT_FILES, STREAM_MEANS_FILE, CheckpointError
from twostream.inference import Prediction, Predictor
from twostream.model_card import HUB_FORMAT, REPO_URL, TAGS, ModelInfo, collect_info, hub_config, model_card

log = logging.getLogger(__name__)

__all__ = ["ImageInput", "SceneClassifier", "as_rgb", "write_model_folder"]

ImageInput = Any  # str | Path | PIL.Image.Image | np.ndarray | torch.Tensor (typing PIL would import it eagerly)
# What a saved folder must hold is the export format (EXPORT_FILES); a Hub download also takes the optional stream
# means (explanations) and README.md and config.json, which are for the Hub, not for loading.
REQUIRED_FILES = EXPORT_FILES
HUB_FILES = [*EXPORT_FILES, STREAM_MEANS_FILE, "config.json", "README.md"]


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------


def _float_to_uint8(a: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(a).all():
        raise ValueError(f"SceneClassifier: {what} holds NaN or infinite values")
    lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
    if lo < 0 or hi > 1:
        raise ValueError(f"SceneClassifier: float {what} must be RGB in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                         "pass uint8 (0..255) for 8-bit pixels")
    return np.rint(a * 255.0).astype(np.uint8)


def _array_to_rgb(a: np.ndarray, what: str = "array") -> np.ndarray:
    """``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` uint8 (or float in [0, 1]) -> ``(H, W, 3)`` uint8."""
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"SceneClassifier: expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {what} of "
                         f"shape {tuple(a.shape)}; tensors are (3, H, W) or (B, 3, H, W)")
    if a.dtype == np.uint8:
        pass
    elif np.issubdtype(a.dtype, np.floating):
        a = _float_to_uint8(a.astype(np.float64), what)
    else:
        raise ValueError(f"SceneClassifier: {what} of dtype {a.dtype}; give uint8 (0..255) or float in [0, 1]")
    if a.shape[2] == 4:  # composite on white, as load_image shows transparent pixels
        rgb, alpha = a[..., :3].astype(np.float32), a[..., 3:].astype(np.float32) / 255.0
        a = np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    elif a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if min(a.shape[:2]) < 1:
        raise ValueError(f"SceneClassifier: empty image of shape {tuple(a.shape)}")
    return np.ascontiguousarray(a)


def as_rgb(image: ImageInput) -> np.ndarray | Path:
    """One image in any accepted form -> what ``Predictor.predict`` takes: a path (read there with
    :func:`~twostream.data.io.load_image`, EXIF orientation applied) or an ``(H, W, 3)`` uint8 RGB array.

    Accepted: a path (``str`` / ``Path``); a PIL image (any mode, converted as files are); a numpy array ``(H, W)``,
    ``(H, W, 3)`` or ``(H, W, 4)``; a tensor ``(3, H, W)`` or ``(1, H, W)`` (channels first, torchvision's layout).
    Arrays and tensors are uint8 (0..255) or float in [0, 1] (rounded to 8 bits, as the model was trained on 8-bit
    files).
    """
    if isinstance(image, str | Path):
        return Path(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        elif t.ndim != 2:
            raise ValueError(f"SceneClassifier: expected a tensor of shape (3, H, W) or (B, 3, H, W), got "
                             f"{tuple(image.shape)}")
        return _array_to_rgb(t.numpy(), "tensor")
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        from twostream.data.io import pil_to_rgb

        return pil_to_rgb(image)
    raise TypeError(f"SceneClassifier: cannot read an image from {type(image).__name__}; give a path, a PIL image, "
                    "an (H, W, 3) uint8 array or a (3, H, W) tensor")


def _split_inputs(images: ImageInput | Sequence[ImageInput]) -> tuple[list, bool]:
    """``(list of single images, whether one image was given)``; a batch array/tensor is many images."""
    if isinstance(images, list | tuple):
        return list(images), False
    if isinstance(images, np.ndarray | torch.Tensor) and images.ndim == 4:
        return list(images), False
    return [images], True


# --------------------------------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------------------------------


def write_model_folder(out_dir: str | Path, *, state: dict[str, torch.Tensor], config, vocabulary,
                       class_table: dict, stage: str = "classifier", step: int | None = None,
                       stream_means: dict | None = None) -> Path:
    """The export files (:func:`~twostream.engine.checkpoint.write_export`, the one writer of the format) from
    weights in memory; returns the weights file."""
    from twostream.engine.checkpoint import write_export

    return write_export(out_dir, state=state, config=config, class_table=class_table, vocabulary=vocabulary,
                        stage=stage, step=step, stream_means=stream_means)


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def _hub_error(model_id: str, err: Exception) -> CheckpointError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return CheckpointError(
        f"{model_id}: no such folder or file here, and the Hugging Face Hub gave no model of that id "
        f"({type(err).__name__}: {first[:160]}); check the path, or the id and your network (HF_HUB_OFFLINE=1 uses "
        "the local cache only)")


def _check_local(path: Path) -> None:
    """A local source is a saved folder, a run folder or a checkpoint; say which file is missing otherwise."""
    if path.is_dir():
        if any((path / n).is_file() for n in ("best.pth", "last.pth")):
            return  # a run folder: Predictor.from_checkpoint reads it
        missing = [n for n in REQUIRED_FILES if not (path / n).is_file()]
        if missing:
            raise CheckpointError(
                f"{path}: not a saved model: {', '.join(missing)} missing (a saved folder holds "
                f"{', '.join(REQUIRED_FILES)}; a run folder of tools/train.py holds best.pth or last.pth)")
        cfg_json = path / "config.json"
        if cfg_json.is_file():
            import json

            try:
                fmt = json.loads(cfg_json.read_text()).get("format")
            except (ValueError, AttributeError):
                fmt = None
            if fmt is not None and fmt != HUB_FORMAT:
                raise CheckpointError(f"{cfg_json}: format {fmt!r}, not a twostream model ({HUB_FORMAT!r})")
    elif not path.is_file():
        raise CheckpointError(f"{path}: not found; give a saved model folder, a run folder, a checkpoint or a Hub id")


def _looks_local(name: str) -> bool:
    """Paths that cannot be Hub ids (``org/name``): absolute, ``./``, ``~``, more than one ``/``, a file suffix."""
    p = Path(name)
    return (p.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
            or p.suffix in (".pth", ".pt", ".safetensors"))


# --------------------------------------------------------------------------------------------------------------------
# SceneClassifier
# --------------------------------------------------------------------------------------------------------------------


class SceneClassifier(ModelHubMixin, library_name="twostream", tags=TAGS, repo_url=REPO_URL,
                      pipeline_tag="image-classification", license="apache-2.0"):
    """A trained two-stream scene classifier: images in; scene top-k, semantic map and scene graph out.

    Build it with :meth:`from_pretrained`; ``SceneClassifier(predictor)`` wraps a
    :class:`~twostream.inference.Predictor` you already have.

    Args:
        predictor: the engine (a classifier; a segmenter-only predictor has no scenes to report).
        info: provenance for the model card (default: what the predictor knows).
    """

    def __init__(self, predictor: Predictor, info: ModelInfo | None = None) -> None:
        if predictor.model is None:
            raise ValueError("SceneClassifier needs a scene classifier; a segmenter-only Predictor gives graphs "
                             "without scenes (use it directly)")
        from twostream.data.vocabulary import SceneVocabulary

        self.predictor = predictor
        self.info = info or ModelInfo(vocabulary=SceneVocabulary.from_names(predictor.scenes))

    def __repr__(self) -> str:
        return f"SceneClassifier({self.predictor!r}, source={self.info.source or None!r})"

    # ------------------------------------------------------------------------------------------------ properties

    @property
    def scenes(self) -> list[str]:
        """Scene names in class order."""
        return list(self.predictor.scenes)

    @property
    def class_table(self):
        """The label set of ``sem_map`` and the graphs (:class:`~twostream.data.classes.ClassTable`)."""
        return self.predictor.class_table

    @property
    def config(self):
        """The :class:`~twostream.config.Config` that builds the model (what ``config.yaml`` holds)."""
        return self.predictor.cfg

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    @property
    def supports_explanations(self) -> bool:
        """Whether ``predict(..., explain=True)`` works with this installation's Predictor."""
        return "explain" in inspect.signature(self.predictor.predict).parameters

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, device: str | torch.device = "auto",
                        precision: str = "fp32", revision: str | None = None, cache_dir: str | Path | None = None,
                        force_download: bool = False, token: str | bool | None = None,
                        local_files_only: bool = False, **kwargs) -> SceneClassifier:
        """Load a model from a local folder (``save_pretrained``, ``tools/export.py``), a run folder or checkpoint of
        ``tools/train.py``, or a Hugging Face Hub id (``user/name``, downloaded once into the Hub cache).

        Args:
            device: ``auto`` (a GPU when visible), ``cpu``, ``cuda``, ``cuda:N``.
            precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 needs a GPU).
            revision, cache_dir, force_download, token, local_files_only: as ``huggingface_hub.snapshot_download``.

        Raises:
            CheckpointError: one line: a folder that is not a saved model (naming the missing file), a Hub id that
                cannot be reached, weights that do not fit the saved config (naming the parameter).
        """
        if kwargs:
            raise TypeError(f"SceneClassifier.from_pretrained: unexpected arguments {', '.join(sorted(kwargs))}")
        return cls._from_pretrained(model_id=str(pretrained_model_name_or_path), revision=revision,
                                    cache_dir=cache_dir, force_download=force_download,
                                    local_files_only=local_files_only, token=token, device=device,
                                    precision=precision)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         device: str | torch.device = "auto", precision: str = "fp32", **_: Any) -> SceneClassifier:
        """ModelHubMixin's loading hook: resolve ``model_id`` to a local folder (downloading it from the Hub when it
        is no local path), then let the Predictor build the model."""
        path, hub_id = Path(model_id).expanduser(), None
        if not path.exists() and not _looks_local(model_id):
            hub_id = model_id
            path = cls._download(model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                                 local_files_only=local_files_only, token=token)
        _check_local(path)
        predictor = Predictor.from_checkpoint(path, device=device, precision=precision)
        return cls(predictor, collect_info(path, predictor, hub_id=hub_id))

    @staticmethod
    def _download(repo_id: str, **kwargs) -> Path:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id=repo_id, allow_patterns=HUB_FILES, **kwargs))
        except Exception as e:  # HTTP, connection, offline, validation and not-found errors: one line each
            raise _hub_error(repo_id, e) from None

    # ------------------------------------------------------------------------------------------------ prediction

    def predict(self, images: ImageInput | Sequence[ImageInput], topk: int = 5, *, explain: bool = False,
                explain_scene: str | None = None, batch_size: int = 8) -> Prediction | list[Prediction]:
        """Predict for one image or many.

        Args:
            images: a path, PIL image, ``(H, W, 3)`` array or ``(3, H, W)`` tensor (:func:`as_rgb`), or a list of
                them, or a ``(B, H, W, 3)`` array / ``(B, 3, H, W)`` tensor.
            topk: scenes to report per image.
            explain: also explain each prediction (``Prediction.explanation``: which graph nodes and edges, which
                image regions and how much each stream counted); needs :mod:`twostream.explain`.
            explain_scene: the scene to explain (default: the top-1 scene).
            batch_size: images per forward pass.

        Returns:
            One :class:`~twostream.inference.Prediction` for one image (``.scenes`` ``[(name, probability), ...]``,
            ``.sem_map`` ``(H, W)`` labels of ``class_table``, ``.graph`` the
            :class:`~twostream.graph.scene_graph.SceneGraph`), a list of them for many.
        """
        items, single = _split_inputs(images)
        inputs = [as_rgb(im) for im in items]
        kwargs: dict[str, Any] = {"topk": topk, "batch_size": batch_size}
        if explain or explain_scene is not None:
            if not self.supports_explanations:
                raise ValueError("SceneClassifier.predict: explain=True needs twostream.explain, which this "
                                 "installation's Predictor does not provide yet; predict without explain")
            kwargs.update(explain=True, explain_scene=explain_scene)
        preds = self.predictor.predict(inputs, **kwargs)
        return preds[0] if single else preds

    __call__ = predict

    # ------------------------------------------------------------------------------------------------ saving

    def _save_pretrained(self, save_directory: Path) -> None:
        """ModelHubMixin's saving hook: the export files and ``config.json``; the mixin then writes the card
        (:meth:`generate_model_card`), regenerated on every save (an old card would report old figures)."""
        import json

        save_directory = Path(save_directory)
        self._saving_to = save_directory  # the card's usage example names the folder (or the Hub id, when pushing)
        write_model_folder(save_directory, state=self.predictor.model.state_dict(), config=self.predictor.cfg,
                           vocabulary=self.info.vocabulary, class_table=self._class_table_dict(), stage="classifier",
                           step=self.info.step, stream_means=self.predictor.stream_means)
        atomic_write_text(save_directory / "config.json", json.dumps(hub_config(self.predictor, self.info), indent=1)
                          + "\n")
        (save_directory / "README.md").unlink(missing_ok=True)

    def _class_table_dict(self) -> dict:
        """The segmenter's label set; an image-only model has none in use (its predictions carry no labels), so the
        export format's ``class_table.json`` gets the default table."""
        if self.predictor.class_table is not None:
            return self.predictor.class_table.to_dict()
        from twostream.data.classes import ade20k150

        return ade20k150().to_dict()

    def generate_model_card(self, *args, repo_id: str | None = None, **kwargs):
        """The model card (README.md) of this model: :func:`twostream.model_card.model_card`."""
        return model_card(self.predictor, self.info, repo_id=repo_id or getattr(self, "_saving_to", None))

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Save into a temporary folder and upload it as the Hub repository ``repo_id`` (``user/name``); the card's
        usage example names ``repo_id``. Keyword arguments as ``ModelHubMixin.push_to_hub`` (``private``, ``token``,
        ``commit_message``, ``branch``, ``create_pr``, ...)."""
        card_kwargs = {"repo_id": repo_id, **(kwargs.pop("model_card_kwargs", None) or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=card_kwargs, **kwargs)
