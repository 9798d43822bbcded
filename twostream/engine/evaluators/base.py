"""The evaluator protocol and the one loop that feeds it (detectron2's ``DatasetEvaluator`` / ``inference_on_dataset``).

An evaluator sees every batch of a split and says what it measured::

    evaluator.reset()                     # forget everything
    evaluator.process(inputs, outputs)    # one batch: inputs = the collated batch dict ("image", "sem_seg", "scene",
                                          #   "name", "graph", "instances"), outputs = the model's output dict
                                          #   ("logits", "sem_logits", "graphs", "panoptic", ...)
    evaluator.evaluate() -> dict          # sums its state over the ranks, once, then computes its metrics

:func:`inference_on_dataset` runs a model over a loader and feeds one evaluator (or :class:`Evaluators`, several by
name). Training validation (``engine/tasks.py``) and ``tools/eval.py`` (``engine/evaluate.py``) both use it.

One way to reduce across ranks: an evaluator's state is a tensor of sums (a confusion matrix, hit counts, PQ counts),
each rank processes its own shard of the split (no padded sampler, so no image counts twice), and ``evaluate`` calls
:func:`sum_over_ranks` once on the whole state. Counts reduce exactly, so any number of processes gives the numbers of
one (sums of per-image real values, PQ's matched IoUs and the macro graph scores, to float64 rounding); every rank
gets the result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from twostream.engine.distributed import all_reduce_sum, get_world_size

__all__ = ["Evaluator", "Evaluators", "inference_on_dataset", "run_classifier", "run_segmenter", "sum_over_ranks",
           "to_device"]


def sum_over_ranks(state: Tensor) -> Tensor:
    """The evaluators' one reduction: ``state`` summed over the ranks of the default process group (a copy, on
    ``state``'s device). Without a process group it is a copy. NCCL sums CUDA tensors only: a CPU state travels to
    the current CUDA device and back."""
    if get_world_size() == 1:
        return state.detach().clone()
    import torch.distributed as dist

    device = state.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        state = state.to(torch.device("cuda", torch.cuda.current_device()))
    return all_reduce_sum(state).to(device)


def _move(value, device: torch.device):
    """Tensors (and PyG batches) to ``device``, inside lists and dicts too (per-image instance targets)."""
    if isinstance(value, list | tuple):
        return type(value)(_move(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value.to(device, non_blocking=True) if hasattr(value, "to") and not isinstance(value, str) else value


def to_device(batch: dict, device: torch.device) -> dict:
    """A collated batch with every tensor on ``device`` (names and other plain values stay as they are)."""
    return {key: _move(value, device) for key, value in batch.items()}


class Evaluator:
    """Base class: ``reset()``, ``process(inputs, outputs)`` per batch, ``evaluate() -> dict``.

    ``evaluate`` is collective under DDP: every rank calls it, and it sums the state with :func:`sum_over_ranks`
    once before computing. The defaults do nothing, so a subclass overrides what it needs.
    """

    def reset(self) -> None:
        """Forget every processed batch."""

    def process(self, inputs: dict, outputs: dict) -> None:
        """Take one batch: ``inputs`` as the loader collated it (on the model's device), ``outputs`` as the model
        returned them."""

    def evaluate(self) -> dict:
        """The metrics of everything processed since :meth:`reset`, over all ranks."""
        return {}


class Evaluators(Evaluator):
    """Several evaluators fed together.

    Args:
        evaluators: ``{name: evaluator}``: ``evaluate()`` returns ``{name: its results}``; or a sequence, whose
            results are merged into one dict (a key two of them return is an error, as in detectron2).
    """

    def __init__(self, evaluators: Mapping[str, Evaluator] | Sequence[Evaluator]) -> None:
        self.named = isinstance(evaluators, Mapping)
        self.evaluators: dict[str, Evaluator] = (dict(evaluators) if isinstance(evaluators, Mapping) else
                                                 {str(i): e for i, e in enumerate(evaluators)})

    def __getitem__(self, name: str) -> Evaluator:
        return self.evaluators[name]

    def reset(self) -> None:
        for evaluator in self.evaluators.values():
            evaluator.reset()

    def process(self, inputs: dict, outputs: dict) -> None:
        for evaluator in self.evaluators.values():
            evaluator.process(inputs, outputs)

    def evaluate(self) -> dict:
        if self.named:
            return {name: evaluator.evaluate() for name, evaluator in self.evaluators.items()}
        merged: dict = {}
        for evaluator in self.evaluators.values():
            for key, value in evaluator.evaluate().items():
                if key in merged:
                    raise ValueError(f"Evaluators: two evaluators return '{key}'; give them names (a dict)")
                merged[key] = value
        return merged


def run_classifier(model: nn.Module, batch: dict) -> dict:
    """A scene classifier's forward pass on a batch: ``model(image, graph)`` (graphs where the batch has them)."""
    return model(batch.get("image"), batch.get("graph"))


def run_segmenter(model: nn.Module, batch: dict) -> dict:
    """A segmenter's forward pass on a batch, without targets: ``model(image)``."""
    return model(batch["image"])


def inference_on_dataset(model: nn.Module, loader, evaluator: Evaluator | Mapping[str, Evaluator] |
                         Sequence[Evaluator], *, forward: Callable[[nn.Module, dict], dict],
                         device: torch.device | str, amp_dtype: torch.dtype | None = None) -> dict:
    """Run ``model`` over ``loader`` in eval mode without gradients and feed every batch to ``evaluator``.

    Args:
        model: the model (a DDP wrapper or the module itself); put back in its training mode afterwards.
        loader: yields collated batch dicts; ``None`` batches (every item failed to load) are passed over.
        evaluator: an :class:`Evaluator`, or several (a dict by name or a list, see :class:`Evaluators`).
        forward: ``(model, batch) -> outputs``: :func:`run_classifier`, :func:`run_segmenter` or your own.
        device: where batches go before the forward pass.
        amp_dtype: autocast dtype of the forward pass (``None`` = full precision).

    Returns:
        ``evaluator.evaluate()``: collective under DDP (call it on every rank, each with its shard of the split).

    Gradients are off (``torch.no_grad``, not ``inference_mode``), so an evaluator that needs them (explanations)
    can turn them on inside ``process`` with ``torch.enable_grad()``.
    """
    if not isinstance(evaluator, Evaluator):
        evaluator = Evaluators(evaluator)
    device = torch.device(device)
    evaluator.reset()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                if batch is None:
                    continue
                inputs = to_device(batch, device)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    outputs = forward(model, inputs)
                evaluator.process(inputs, outputs)
    finally:
        model.train(was_training)
    return evaluator.evaluate()
