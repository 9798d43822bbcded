"""Where a graph-store build's graphs come from: the items of a dataset, as ``(item index, result)`` pairs for
:func:`~twostream.graph.store_build.build_chunks` (``result`` = ``(name, SceneGraph.to_tensors())`` or ``None`` for an
item that failed to load).

- ``gt``: each item's label map (``sem_seg``) through the builder, inside DataLoader workers;
- ``pred``: each item's image through ``predict`` (a segmenter) in batches on ``device``, then ``build_batch``.
  ``predict`` returns class logits ``(B, K, H, W)`` (computed once: the labels are their argmax and each node also
  carries the segmenter's mean confidence, :func:`~twostream.graph.builder.labels_and_confidence`) or label maps
  ``(B, H, W)`` (no confidence). Pixels labelled 255 in an item's ``sem_seg`` (padding the transforms added) are
  void in predicted graphs too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from twostream.data.classes import IGNORE_INDEX
from twostream.graph.builder import SceneGraphBuilder, labels_and_confidence

__all__ = ["Predict", "Result", "item_names", "item_results", "scene_lookup"]

Predict = Callable[[Tensor], Tensor]
Result = tuple[str, dict[str, Tensor]] | None  # (item name, SceneGraph.to_tensors()) or None for a failed item


# --------------------------------------------------------------------------------------------------------------------


def _item_name_and_array(item: Any, key: str, what: str) -> tuple[str, Any, Any]:
    """``(name, array, sem_seg or None)`` from a data-contract dict or a ``(name, array)`` pair."""
    if isinstance(item, dict):
        if "name" not in item or key not in item:
            raise ValueError(f"{what}: dataset items must hold 'name' and '{key}', got keys {sorted(item)}")
        return item["name"], item[key], item.get("sem_seg")
    if isinstance(item, tuple | list) and len(item) == 2:
        return item[0], item[1], None
    raise ValueError(f"{what}: items must be dicts with 'name' and '{key}' or (name, array) pairs, "
                     f"got {type(item).__name__}")


def item_names(source: Sequence) -> list[str] | None:
    """Item names without loading the items, when the source can tell (``ADE20KDataset.names``, pairs)."""
    names = getattr(source, "names", None)
    if names is not None:
        return list(names)
    if isinstance(source, list | tuple) and all(isinstance(it, tuple | list) and len(it) == 2 for it in source):
        return [it[0] for it in source]
    return None


def scene_lookup(source: Any) -> Callable[[str], str | None] | None:
    """Item name -> scene name, when the source records scenes (``scene_names``), else ``None``."""
    scenes = getattr(source, "scene_names", None)
    return scenes.get if scenes is not None else None


class _GtGraphs(Dataset):
    """Items -> ``(name, graph tensors)``, built inside DataLoader workers (the parallel part of a ``gt`` build)."""

    def __init__(self, source: Sequence, builder: SceneGraphBuilder) -> None:
        self.source, self.builder = source, builder

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Result:
        item = self.source[index]
        if item is None:  # a dataset that reports a failed item as None (it logged it)
            return None
        name, labels, _ = _item_name_and_array(item, "sem_seg", "graph store (gt)")
        return name, self.builder(labels).to_tensors()


class _Images(Dataset):
    """Items -> ``(name, image (3, H, W), padding mask (H, W) bool or None)`` for a ``pred`` build."""

    def __init__(self, source: Sequence) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[str, Tensor, Tensor | None] | None:
        item = self.source[index]
        if item is None:
            return None
        name, image, sem_seg = _item_name_and_array(item, "image", "graph store (pred)")
        image = torch.as_tensor(image)
        pad = torch.as_tensor(sem_seg) == IGNORE_INDEX if sem_seg is not None else None
        return name, image, pad


def _as_list(batch: list) -> list:
    return batch


def _same_size_groups(items: list) -> Iterator[list]:
    """Consecutive ``(index, name, image, pad)`` items whose images share a size (one segmenter batch)."""
    group: list = []
    for it in items:
        if group and tuple(it[2].shape) != tuple(group[0][2].shape):
            yield group
            group = []
        group.append(it)
    if group:
        yield group


def _predict_graphs(batch: list, builder: SceneGraphBuilder, predict: Predict,
                    device: str | torch.device) -> list[Result]:
    """Segment a batch (grouped by image size) and build its graphs on ``device``."""
    out: dict[int, tuple[str, dict[str, Tensor]]] = {}
    present = [(i, it) for i, it in enumerate(batch) if it is not None]
    for group in _same_size_groups([(i, *it) for i, it in present]):
        images = torch.stack([img for _, _, img, _ in group]).to(device)
        with torch.inference_mode():
            predicted = predict(images)
        confidence = None
        if predicted.is_floating_point() and predicted.ndim == 4:  # class logits: labels and confidence from one pass
            labels, confidence = labels_and_confidence(predicted)
        else:
            labels = predicted
        if tuple(labels.shape) != (len(group), *images.shape[-2:]):
            raise ValueError(f"graph store (pred): predict returned shape {tuple(predicted.shape)} for images "
                             f"{tuple(images.shape)}; expected (B, K, H, W) logits or (B, H, W) label maps")
        labels = labels.long()
        if builder.ignore_index is not None and any(pad is not None for _, _, _, pad in group):
            pads = torch.stack([pad if pad is not None else torch.zeros(images.shape[-2:], dtype=torch.bool)
                                for _, _, _, pad in group]).to(labels.device)
            labels = labels.masked_fill(pads, builder.ignore_index)
        graphs = builder.build_batch(labels, confidence=confidence)
        for (i, name, _, _), graph in zip(group, graphs):
            out[i] = (name, graph.to_tensors())
    return [out.get(i) for i in range(len(batch))]


def _gt_results(source: Sequence, builder: SceneGraphBuilder, indices: list[int],
                num_workers: int) -> Iterator[tuple[int, Result]]:
    loader = DataLoader(_GtGraphs(source, builder), batch_size=None, sampler=indices, num_workers=num_workers)
    yield from zip(indices, loader)


def _pred_results(source: Sequence, builder: SceneGraphBuilder, indices: list[int], num_workers: int,
                  predict: Predict, device: str | torch.device, batch_size: int) -> Iterator[tuple[int, Result]]:
    loader = DataLoader(_Images(source), batch_size=batch_size, sampler=indices, num_workers=num_workers,
                        collate_fn=_as_list)
    position = 0
    for batch in loader:
        batch_indices = indices[position: position + len(batch)]
        position += len(batch)
        yield from zip(batch_indices, _predict_graphs(batch, builder, predict, device))


def item_results(source: Sequence, builder: SceneGraphBuilder, *, kind: str, predict: Predict | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 8,
                 num_workers: int = 0) -> Callable[[list[int]], Iterator[tuple[int, Result]]]:
    """``indices -> (index, result)`` pairs for :func:`build_chunks`: graphs of ``source``'s items."""
    if batch_size < 1:
        raise ValueError(f"build_graph_store: batch_size must be >= 1, got {batch_size}")
    if kind == "gt":
        return lambda indices: _gt_results(source, builder, indices, num_workers)
    return lambda indices: _pred_results(source, builder, indices, num_workers, predict, device, batch_size)

