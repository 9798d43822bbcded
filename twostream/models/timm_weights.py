"""The project's two ways of loading timm weights, shared by the segmenter's backbones and the image encoder.

``pretrained: true`` is timm's own download; ``pretrained_path`` is a local file that timm loads *like* a download
(``pretrained_cfg_overlay=dict(file=...)``), so its checkpoint conversion (``checkpoint_filter_fn``) and
position-embedding resampling apply and the classifier is dropped.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["local_weights_overlay", "weights_mismatch"]


def local_weights_overlay(pretrained: bool, pretrained_path: str, *, what: str,
                          config_key: str) -> tuple[bool, dict | None]:
    """``(pretrained, pretrained_cfg_overlay)`` for ``timm.create_model``.

    Args:
        what: the part, for messages (``"backbone"``). config_key: the key that set ``pretrained_path``.

    Raises:
        FileNotFoundError: ``pretrained_path`` is given and does not exist.
    """
    if not pretrained_path:
        return pretrained, None
    path = Path(pretrained_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights file {path} not found ({config_key})")
    return True, dict(file=str(path))


def weights_mismatch(err: RuntimeError, pretrained_path: str, name: str, *, what: str,
                     choice: str) -> ValueError | None:
    """The one-line error for a local weights file that ``load_state_dict`` rejected, or ``None`` when ``err`` is
    something else (re-raise it then). ``choice`` names what to pick instead (``"backbone name"``)."""
    if not pretrained_path or "state_dict" not in str(err):
        return None
    # torch's message is a header line, then one line per problem (missing keys, size mismatches): quote one
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    detail = (lines[1] if len(lines) > 1 else lines[0] if lines else repr(err))[:200]
    return ValueError(f"{what} weights in {pretrained_path} do not fit timm model '{name}' ({detail}); save them "
                      f"from timm.create_model('{name}').state_dict() or pick the matching {choice}")
