"""twostream: two-stream scene understanding (scene graphs from segmentation + a vision transformer, fused).

The public API is one import away and costs nothing until used (PEP 562: torch and the models load on first access)::

    from twostream import SceneClassifier

    model = SceneClassifier.from_pretrained("runs/quickstart")     # a run folder, a saved folder or a Hub id
    result = model.predict("photo.jpg")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it; imported on first attribute access
_LAZY = {
    "SceneClassifier": "twostream.api",
    "Prediction": "twostream.inference",
    "Predictor": "twostream.inference",
    "SceneGraph": "twostream.graph.scene_graph",
    "load_config": "twostream.config",
}

__all__ = ["Prediction", "Predictor", "SceneClassifier", "SceneGraph", "__version__", "load_config"]

if TYPE_CHECKING:  # pragma: no cover
    from twostream.api import SceneClassifier
    from twostream.config import load_config
    from twostream.graph.scene_graph import SceneGraph
    from twostream.inference import Prediction, Predictor


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'twostream' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
