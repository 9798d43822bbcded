"""Scene metrics of named subsets of a split, beside the whole split (``tools/eval.py``).

Subsets come from two places:

- the dataset's ``synthetic.json`` (written by :func:`~twostream.data.synthetic.make_synthetic`): every top-level list
  of image names with at least one image of the evaluated split is a subset of that name (``relation_only``: the
  images whose scene only an adjacency tells);
- ``--subset NAME=FILE``: a text file with one item name per line, as the split's reader names its items
  (``ADE_val_00000001``; ``kitchen/a1`` for folder data; an image extension is dropped, and a path such as
  ``images/validation/ADE_val_00000001.jpg`` names the split's ``ADE_val_00000001``; blank lines and lines starting
  with ``#`` are skipped). Every name must be an item of the split; listed images the evaluation leaves out
  (outside the scene vocabulary, beyond ``data.max_items``, unreadable) are simply not scored.

``metrics.json`` gains ``"subsets": {name: {"top1", "top{k}", "mean_class_accuracy", "num_images"}}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import torch

from twostream.engine.evaluators.base import Evaluators, sum_over_ranks
from twostream.engine.evaluators.scenes import SceneEvaluator

log = logging.getLogger(__name__)

__all__ = ["SubsetEvaluator", "parse_subset_arg", "read_subset_file", "read_subsets",
           "synthetic_subsets"]

SYNTHETIC_META = "synthetic.json"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def parse_subset_arg(text: str) -> tuple[str, str]:
    """``"NAME=FILE"`` -> ``(NAME, FILE)``; another form is one ``ValueError`` line."""
    name, sep, file = text.partition("=")
    name, file = name.strip(), file.strip()
    if not sep or not name or not file:
        raise ValueError(f"--subset '{text}': expected NAME=FILE (e.g. hard=hard_images.txt)")
    return name, file


def read_subset_file(path: str | Path) -> list[str]:
    """The image stems a subset file lists, in order, each once; a stem keeps its folders (the names of Places365 and
    folder data have them: ``kitchen/a1``), which :func:`read_subsets` drops for a split whose names have none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: subset file not found (--subset NAME=FILE: one image stem per line)")
    stems: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        stem = line.rsplit(".", 1)[0] if line.lower().endswith(_IMAGE_SUFFIXES) else line
        stems[stem.replace("\\", "/")] = None
    return list(stems)


def synthetic_subsets(root: str | Path, split_stems: Collection[str]) -> dict[str, list[str]]:
    """The lists of image names in ``<root>/synthetic.json`` that name images of the split, restricted to them
    (``{}`` when the dataset has no such file)."""
    path = Path(root) / SYNTHETIC_META
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable (%s); its subsets are not scored", path, e)
        return {}
    split = set(split_stems)
    out = {}
    for key, value in meta.items() if isinstance(meta, dict) else ():
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            stems = [v for v in value if v in split]
            if stems:
                out[key] = stems
    return out


def read_subsets(root: str | Path, split: str, split_stems: Collection[str] | Callable[[], Collection[str]],
                 files: Mapping[str, str | Path] | Sequence[tuple[str, str | Path]] = ()) -> dict[str, list[str]]:
    """Every subset of ``split`` to score: those of ``synthetic.json``, then the given ``{name: file}`` (a name
    given twice, or given as a file and by ``synthetic.json``, takes the file).

    ``split_stems``: every image stem of the split, or a function giving them (called only when there is a
    ``synthetic.json`` or a file to check, so a split without subsets is never listed).

    Raises:
        FileNotFoundError: a subset file does not exist.
        ValueError: a file lists stems that are not images of ``split`` (one line: how many, the first few).
    """
    files = list(files.items() if isinstance(files, Mapping) else files)
    if not files and not (Path(root) / SYNTHETIC_META).is_file():
        return {}
    split_set = set(split_stems() if callable(split_stems) else split_stems)
    subsets = synthetic_subsets(root, split_set)
    for name, file in files:
        listed = read_subset_file(file)
        if not listed:
            raise ValueError(f"--subset {name}={file}: the file lists no image stems")
        # a path such as images/validation/ADE_val_00000001.jpg names the split's ADE_val_00000001
        stems = list(dict.fromkeys(s if s in split_set or Path(s).name not in split_set else Path(s).name
                                   for s in listed))
        unknown = [s for s in stems if s not in split_set]
        if unknown:
            shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
            raise ValueError(f"--subset {name}={file}: {len(unknown)} of {len(stems)} stems are not images of the "
                             f"{split} split ({shown}); list stems of that split, one per line")
        subsets[name] = stems
    return subsets


class SubsetEvaluator(Evaluators):
    """Scene metrics of each named subset of images (by ``inputs["name"]``): a :class:`SceneEvaluator` per subset, fed
    together as :class:`Evaluators` are, with one reduction for all of them.

    Args:
        subsets: ``{name: image stems}``.
        names: scene names in class order. topk: the k of top-k accuracy. device: where the state lives.

    ``evaluate()`` returns ``{subset: {"top1", "top{k}", "mean_class_accuracy", "num_images"}}``, the same numbers
    :class:`SceneEvaluator` gives on the subset's images alone.
    """

    def __init__(self, subsets: Mapping[str, Collection[str]], names: Sequence[str], topk: int = 5,
                 device: torch.device | str = "cpu") -> None:
        super().__init__({name: SceneEvaluator(names, topk, device, images=stems) for name, stems in subsets.items()})

    def evaluate(self) -> dict:  # one reduction of every subset's state, not one per subset
        if not self.evaluators:
            return {}
        states = sum_over_ranks(torch.stack([e.state() for e in self.evaluators.values()]))
        out = {}
        for (name, evaluator), state in zip(self.evaluators.items(), states):
            m = evaluator.metrics(state)
            out[name] = {"top1": m["top1"], f"top{evaluator.k}": m[f"top{evaluator.k}"],
                         "mean_class_accuracy": m["mean_class_accuracy"], "num_images": m["num_images"]}
        return out
