"""The segmenter contract: what every segmentation stream (UPSNet, a Hugging Face checkpoint, a detectron2 model)
is and declares.

Every segmenter takes RGB images in [0, 1] and returns per-class logits at input size together with the class table
those logits refer to; the class table travels with the segmenter into the scene graph, the GNN's class embedding and
every output. Beyond that, a segmenter *declares* what it can do, so the code that uses it asks the declaration
instead of probing the object:

==========================  ===========================================================================================
``kind``                    its name in :data:`~twostream.models.segmenter.SEGMENTERS`, ``model.segmenter.kind`` and
                            the ``--segmenter KIND:...`` spec
``spec_form``               the spec's form for messages, e.g. ``"hf:NAME"``
``feature_dim``             channels of its ``"features"`` map (node features pool under it), or ``None``
``shares_backbone``         ``forward_features`` / ``forward_from_features`` / ``backbone_dim``: the image stream can
                            read its backbone's last map (``model.shared_backbone``)
``weights_from_checkpoint`` its trained weights are a twostream checkpoint (``model.segmenter.checkpoint``, the
                            segmentation stage's output) rather than published weights its builder loads itself
``resizes_input``           it resizes images itself (its own processor): predictors feed images at their own size,
                            and ``model.segmenter.input_size: null`` gives it images as they are
``stride``                  its input's sides must be multiples of this (UPSNet: 32); inputs at its own size
                            (:mod:`~twostream.models.segmenter_input`) are padded up to it and the padding cropped off
``from_config``             the builder: ``SegmenterConfig`` + project class table -> segmenter
``config_from_spec``        the ``--segmenter`` spec (the part after ``KIND:``) -> ``SegmenterConfig``
``cache_identity``          what graphs of its predictions depend on, from the config alone (no model is built)
==========================  ===========================================================================================

This module imports no adapter; the adapters import it, and :mod:`twostream.models.segmenter` holds the table.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from twostream.config import SegmenterConfig, json_hash
from twostream.data.classes import ClassTable

__all__ = ["CAPABILITIES", "Segmenter", "content_hash", "json_hash", "lacks_capability", "predict_labels"]

# The optional capabilities, with what each one means (for the one-line refusal when a kind lacks one).
CAPABILITIES = {
    "shares_backbone": "to share its backbone with the image stream: forward_features, forward_from_features, "
                       "backbone_dim",
    "feature_dim": "to return a 'features' map of known width for node features to pool under",
}


def lacks_capability(segmenter: type[Segmenter] | Segmenter, capability: str, needed_by: str) -> str:
    """The one-line refusal: ``needed_by`` needs ``capability``, which this segmenter's class does not declare."""
    cls = segmenter if isinstance(segmenter, type) else type(segmenter)
    return (f"{needed_by} needs a segmenter with the capability {capability} ({CAPABILITIES[capability]}); "
            f"segmenter kind '{cls.kind}' ({cls.__name__}) does not declare it")


def content_hash(path: str | Path, what: str = "segmenter checkpoint") -> str:
    """A short (16 hex digits) SHA-256 of a file's bytes: a retrained checkpoint at the same path gets a new hash.

    Each file is read once per process while its size and modification time stay the same: the graph-store
    lookups of every split (and their build commands) ask for the identity of one segmenter checkpoint of hundreds
    of MB several times.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    st = path.stat()
    return _file_hash(str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


# inode, size and mtime key the cache: a checkpoint saved again (a new file renamed over it) or rewritten misses it
@functools.lru_cache(maxsize=64)
def _file_hash(path: str, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


class Segmenter(nn.Module):
    """Base class and contract: images in, per-class logits out; capabilities declared (module docstring).

    ``forward(images, targets=None) -> dict``:
        images: ``(B, 3, H, W)`` float RGB in ``[0, 1]``; each segmenter normalises with its own mean/std.
        targets: training only: ``{"sem_seg": (B, H, W) int64, 255 = ignore}`` and, for an instance head,
            ``"instances"``: a list of per-image dicts (``boxes (M, 4)``, ``labels (M,)``, ``masks (M, H, W)``).
    Returns:
        ``"sem_logits"``: ``(B, K, H, W)`` float, ``K = len(self.class_table)``;
        ``"features"`` (when ``feature_dim`` is not ``None``): ``(B, feature_dim, H/4, W/4)``;
        ``"panoptic"`` (optional): per image ``(panoptic_map (H, W) int32, segments_info list[dict])``;
        ``"losses"`` (when ``targets`` is given and it trains): ``dict[str, Tensor]`` of scalar losses.

    A subclass sets the class attributes, implements ``forward``, ``from_config``, ``config_from_spec`` and
    ``cache_identity``, and, where it declares ``shares_backbone``, the three backbone members.
    """

    kind: ClassVar[str] = ""
    spec_form: ClassVar[str] = ""
    shares_backbone: ClassVar[bool] = False
    weights_from_checkpoint: ClassVar[bool] = False
    resizes_input: ClassVar[bool] = False
    stride: ClassVar[int] = 1

    class_table: ClassTable

    # ---- what it returns -------------------------------------------------------------------------------------------

    @property
    def feature_dim(self) -> int | None:
        """Channels of the ``"features"`` output, or ``None`` when it returns none."""
        return None

    def segment(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, K, H, W)`` class logits, the semantic path only (what graphs are built
        from: the label map is their argmax, each node's confidence their max softmax)."""
        return self(images)["sem_logits"]

    def predict(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, H, W)`` int64 label map in ``self.class_table``."""
        return self.segment(images).argmax(dim=1)

    # ---- shared backbone (when ``shares_backbone``) ----------------------------------------------------------------

    @property
    def backbone_dim(self) -> int:
        """Channels of the backbone's last map (what the image stream reads with ``model.shared_backbone``)."""
        raise NotImplementedError(lacks_capability(self, "shares_backbone", "backbone_dim"))

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """The backbone alone: ``(B, 3, H, W)`` -> its maps, finest first (the last one feeds the image stream)."""
        raise NotImplementedError(lacks_capability(self, "shares_backbone", "forward_features"))

    def forward_from_features(self, feats: list[Tensor], image_size: tuple[int, int],
                              targets: dict | None = None) -> dict:
        """Everything after the backbone: ``feats`` from :meth:`forward_features` -> the ``forward`` dict."""
        raise NotImplementedError(lacks_capability(self, "shares_backbone", "forward_from_features"))

    # ---- construction and identity ---------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: SegmenterConfig, class_table: ClassTable) -> Segmenter:
        """Build from ``model.segmenter``. Loads published weights the kind names (hub, model zoo) but never
        ``cfg.checkpoint``, which the engine loads. ``class_table`` is the project's (ADE20K-150); a kind whose
        weights have another label set replaces it, so read ``segmenter.class_table`` afterwards."""
        raise NotImplementedError(f"{cls.__name__}: segmenter kind '{cls.kind}' implements no from_config")

    @classmethod
    def config_from_spec(cls, rest: str, base: SegmenterConfig) -> SegmenterConfig:
        """``--segmenter KIND:REST`` -> ``base`` with ``kind`` and this kind's fields set from ``REST``."""
        raise NotImplementedError(f"{cls.__name__}: segmenter kind '{cls.kind}' implements no config_from_spec")

    @classmethod
    def cache_identity(cls, cfg: SegmenterConfig) -> str:
        """What graphs built from this segmenter's predictions depend on, as a short string (from ``cfg`` and the
        files it names; nothing is built): a graph store keys its content on it."""
        raise NotImplementedError(f"{cls.__name__}: segmenter kind '{cls.kind}' implements no cache_identity")


@torch.no_grad()
def predict_labels(segmenter: Segmenter, images: Tensor) -> Tensor:
    """Inference helper: eval-mode, no-grad ``(B, H, W)`` int64 label maps."""
    was_training = segmenter.training
    segmenter.eval()
    try:
        return segmenter.predict(images)
    finally:
        segmenter.train(was_training)
