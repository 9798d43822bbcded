"""Data loading for the engine: graphs attached to dataset items, samplers that resume mid-epoch, per-item
augmentation seeds, collation.

Where graphs come from is ``cfg.graph.source``:
  - ``gt``: built in the loader workers from each item's (augmented) annotation — an oracle upper bound;
  - ``pred``: read from the graph store ``tools/build_graphs.py`` wrote with a trained segmenter (built from the
    un-augmented image: a crop or flip of the image does not change its cached graph);
  - ``online``: not loaded at all; the model segments each batch and builds graphs itself.

Exact resume. The training sampler yields :class:`ItemKey` ``(epoch, index)`` and :class:`SeededItems` runs each
item with torch's, numpy's and Python's random generators seeded from ``(train.seed, epoch, index)`` alone, so an
item's crop, flip and colour jitter do not depend on which loader worker draws it, on how many items that worker drew
before, on the number of workers or on the number of processes. A run resumed in the middle of an epoch (the sampler
skips what was seen) therefore draws exactly the batches the interrupted run would have drawn.
"""

from __future__ import annotations

import logging
import math
import random
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

log = logging.getLogger(__name__)

__all__ = ["ItemKey", "Loaders", "ResumableSampler", "SeededItems", "ShardSampler", "WithGraphs", "collate",
           "item_seed", "make_loaders"]


class WithGraphs(Dataset):
    """Adds ``item["graph"]`` (a ``torch_geometric.data.Data``) to every item of ``dataset``.

    Args:
        dataset: yields dicts with ``"sem_seg" (H, W)`` and ``"name"``.
        builder: a ``SceneGraphBuilder``; used when ``cache`` is ``None`` (graphs from the item's annotation).
        cache: a ``GraphStore``; graphs are looked up by the item's name.
    """

    def __init__(self, dataset: Dataset, builder=None, cache=None) -> None:
        if (builder is None) == (cache is None):
            raise ValueError("WithGraphs needs exactly one of builder (graphs from annotations) or cache")
        self.dataset, self.builder, self.cache = dataset, builder, cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # vocabulary, skipped counts, ... of the wrapped dataset
        if name in ("dataset", "builder", "cache"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict | None:
        item = self.dataset[index]
        if item is None:
            return None
        # padding (255) belongs to no node
        graph = self.cache.get(item["name"]) if self.cache is not None else self.builder(item["sem_seg"])
        item["graph"] = graph.to_pyg()
        return item


def collate(items: Sequence[dict | None]) -> dict | None:
    """Stack a list of dataset items; items that failed to load (``None``) are dropped (the dataset logged them).

    Returns ``{"image": (B, 3, H, W), "sem_seg": (B, H, W), "scene": (B,), "name": list[str],
    "graph": torch_geometric Batch, "instances": list of B dicts, "sem_seg_original": list of B (H_i, W_i)}`` (keys
    present in the items only), or ``None`` if every item failed. Per-image entries of variable size
    (``"instances"``: ``boxes (M_i, 4)``, ``labels (M_i,)``, ``masks (M_i, H, W)``, as the segmenter's targets take
    them; ``"sem_seg_original"``: the annotation at the image's own size, what evaluation scores against) stay a
    list, one entry per image.
    """
    items = [it for it in items if it is not None]
    if not items:
        return None
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key == "graph":
            from torch_geometric.data import Batch

            out[key] = Batch.from_data_list(values)
        elif key in ("instances", "sem_seg_original"):
            out[key] = values  # M (instances) or the image's own size (annotations) differs: nothing to stack
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], int | float):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


class ItemKey(NamedTuple):
    """What the training sampler yields: the item ``index`` and the ``epoch`` it is drawn in (for its seed)."""

    epoch: int
    index: int


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends on ``(seed, epoch, index)`` only (numpy's ``SeedSequence`` mixes them)."""
    entropy = [v & 0xFFFFFFFFFFFFFFFF for v in (seed, epoch, index)]  # SeedSequence takes non-negative words
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


class SeededItems(Dataset):
    """``dataset[index]`` run with the random generators seeded per item from ``(seed, epoch, index)``.

    Indexed by :class:`ItemKey` (plain ints count as epoch 0). The generators of torch (CPU), numpy and Python are
    seeded for the call and restored afterwards, so augmentation neither depends on nor disturbs the stream of the
    process it runs in (the model's dropout in the main process, with ``num_workers=0``). CUDA generators are not
    touched: items are prepared on the CPU.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # vocabulary, skipped counts, ... of the wrapped dataset
        if name in ("dataset", "seed"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: ItemKey | int) -> Any:
        epoch, index = (key.epoch, key.index) if isinstance(key, ItemKey) else (0, int(key))
        s = item_seed(self.seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(s)  # not torch.manual_seed: that would reseed CUDA too
            random.seed(s)
            np.random.seed(s % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (also for one process) that can skip the first ``start`` samples of this rank's epoch.

    Yields :class:`ItemKey` ``(epoch, index)`` for :class:`SeededItems`. The order depends only on ``seed`` and the
    epoch, so a resumed run sees exactly the batches it had not seen.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def __iter__(self) -> Iterator[ItemKey]:
        indices = list(super().__iter__())
        return iter([ItemKey(self.epoch, i) for i in indices[self.start:]])

    def __len__(self) -> int:
        return self.num_samples - self.start

    def set_start(self, start: int) -> None:
        self.start = max(0, min(start, self.num_samples))


class ShardSampler(Sampler):
    """Evaluation sampler: rank r takes items r, r + world, ...; no padding, so no item is counted twice."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        self.n, self.num_replicas, self.rank = len(dataset), num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return max(0, math.ceil((self.n - self.rank) / self.num_replicas))


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    train_sampler: ResumableSampler


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers ignore SIGTERM and SIGUSR1: a scheduler signals every process of a job, and the trainer (not
    its workers) decides when to stop; workers end with their loader, or when the trainer is gone."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def make_loaders(train_set: Dataset, val_set: Dataset, *, batch_size: int, eval_batch_size: int, num_workers: int,
                 rank: int, world_size: int, seed: int) -> Loaders:
    """Training loader (shuffled, resumable, sharded over ranks, items seeded per ``(seed, epoch, index)``) and
    validation loader (sharded, in order)."""
    sampler = ResumableSampler(train_set, num_replicas=world_size, rank=rank, seed=seed)
    generator = torch.Generator().manual_seed(seed + rank)
    common = {"num_workers": num_workers, "collate_fn": collate, "persistent_workers": False,
              "pin_memory": torch.cuda.is_available(),
              "worker_init_fn": ignore_stop_signals if num_workers > 0 else None}
    train = DataLoader(SeededItems(train_set, seed), batch_size=batch_size, sampler=sampler, drop_last=False,
                       generator=generator, **common)
    val = DataLoader(val_set, batch_size=eval_batch_size, sampler=ShardSampler(val_set, world_size, rank), **common)
    return Loaders(train=train, val=val, train_sampler=sampler)
