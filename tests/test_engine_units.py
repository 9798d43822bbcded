"""Engine pieces on their own: checkpoints, schedule, samplers, scene metrics against hand-computed values."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from twostream.config import TrainConfig
from twostream.engine.checkpoint import (
    FORMAT,
    CheckpointError,
    CheckpointManager,
    atomic_torch_save,
    load_checkpoint,
    load_model_state,
)
from twostream.engine.data import ItemKey, ResumableSampler, SeededItems, ShardSampler, collate, make_loaders
from twostream.engine.evaluators import SceneEvaluator, format_per_class_table, save_confusion_png
from twostream.engine.optim import build_optimizer, lr_factor


def _ckpt(step: int = 0) -> dict:
    return {"format": FORMAT, "stage": "classifier", "model": nn.Linear(3, 2).state_dict(), "step": step}


# ---------------------------------------------------------------------------------------------------- checkpoints


def test_atomic_save_round_trip_and_no_temp_left(tmp_path):
    path = atomic_torch_save(_ckpt(5), tmp_path / "a.pth")
    assert load_checkpoint(path)["step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["a.pth"]


def test_truncated_empty_missing_and_foreign_checkpoints(tmp_path):
    good = atomic_torch_save(_ckpt(), tmp_path / "good.pth")
    data = good.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pth: checkpoint is truncated or corrupt"):
        load_checkpoint(tmp_path / "trunc.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: checkpoint is empty"):
        load_checkpoint(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match=r"nothere\.pth: checkpoint not found"):
        load_checkpoint(tmp_path / "nothere.pth")
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match=r"bare\.pth: not a twostream checkpoint"):
        load_checkpoint(tmp_path / "bare.pth")
    torch.save({"x": nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a pickled module: refused by weights_only
    with pytest.raises(CheckpointError, match=r"pickled\.pth: not a twostream checkpoint"):
        load_checkpoint(tmp_path / "pickled.pth")


def test_shape_mismatch_names_the_parameter(tmp_path):
    state = nn.Sequential(nn.Linear(3, 4)).state_dict()
    with pytest.raises(CheckpointError, match=r"parameter '0\.weight' has shape \(4, 3\) in the checkpoint but "
                                              r"\(5, 3\) in the model; the checkpoint comes from another config"):
        load_model_state(nn.Sequential(nn.Linear(3, 5)), state, "x.pth")
    with pytest.raises(CheckpointError, match=r"2 missing, 0 unexpected keys, e.g. missing .1.weight."):
        load_model_state(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4)), state, "x.pth")


def test_manager_keeps_last_k_and_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in range(1, 6):
        manager.save(_ckpt(step), epoch=0, step=step, is_best=step == 2)
    assert [p.name for p in manager.numbered()] == ["ckpt_e000_s0000004.pth", "ckpt_e000_s0000005.pth"]
    assert load_checkpoint(manager.last)["step"] == 5
    assert load_checkpoint(manager.best)["step"] == 2  # still readable after its numbered file was pruned


# ---------------------------------------------------------------------------------------------------- schedule


def test_warmup_then_cosine_to_floor():
    cfg = TrainConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    factors = [lr_factor(s, 20, cfg) for s in range(20)]
    assert factors[0] == pytest.approx(1 / 5) and factors[3] == pytest.approx(4 / 5)
    assert factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))  # monotone decay after warmup
    assert lr_factor(20, 20, cfg) == pytest.approx(0.1)
    mid = 4 + 8  # halfway through the decay
    assert lr_factor(mid, 20, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_poly_and_constant():
    poly = TrainConfig(warmup_steps=0, schedule="poly", min_lr_ratio=0.0)
    assert lr_factor(5, 10, poly) == pytest.approx(0.5**0.9)
    const = TrainConfig(warmup_steps=0, schedule="constant")
    assert lr_factor(7, 10, const) == 1.0


def test_optimizer_skips_decay_for_norms_biases_embeddings():
    model = nn.ModuleDict({"emb": nn.Embedding(5, 4), "lin": nn.Linear(4, 4), "norm": nn.LayerNorm(4)})
    model["lin"].weight.requires_grad_(True)
    opt = build_optimizer(model, TrainConfig(weight_decay=0.05))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model["lin"].weight)}
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen, TrainConfig())


# ---------------------------------------------------------------------------------------------------- samplers


def _indices(sampler) -> list[int]:
    return [key.index for key in sampler]


def test_resumable_sampler_skips_exactly_what_was_seen():
    data = list(range(10))
    full = list(ResumableSampler(data, num_replicas=1, rank=0, seed=3))
    assert all(isinstance(k, ItemKey) and k.epoch == 0 for k in full)
    sampler = ResumableSampler(data, num_replicas=1, rank=0, seed=3)
    sampler.set_start(4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.set_epoch(1)
    sampler.set_start(0)
    assert _indices(sampler) != _indices(full) and sorted(_indices(sampler)) == data
    assert {k.epoch for k in sampler} == {1}  # the epoch travels with each index, to the item's seed


def test_two_ranks_see_the_same_samples_as_one_process():
    data = list(range(8))
    one = _indices(ResumableSampler(data, num_replicas=1, rank=0, seed=0))
    r0 = _indices(ResumableSampler(data, num_replicas=2, rank=0, seed=0))
    r1 = _indices(ResumableSampler(data, num_replicas=2, rank=1, seed=0))
    # the first global batch of 4 on one process = the first local batches of 2 on each rank
    assert sorted(one[:4]) == sorted(r0[:2] + r1[:2])


class _RandomItems(torch.utils.data.Dataset):
    """Each item draws from torch's, numpy's and Python's global generators, as augmentation does."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> dict:
        import random

        import numpy as np

        draws = [torch.rand(()).item(), float(np.random.rand()), random.random()]
        return {"index": index, "draws": torch.tensor(draws, dtype=torch.float64)}


def test_seeded_items_depend_on_seed_epoch_and_index_only():
    items = SeededItems(_RandomItems(), seed=7)
    a = items[ItemKey(epoch=2, index=5)]["draws"]
    torch.rand(10)  # whatever the caller's generators did before
    assert torch.equal(items[ItemKey(2, 5)]["draws"], a)
    assert not torch.equal(items[ItemKey(3, 5)]["draws"], a)  # another epoch augments again
    assert not torch.equal(items[ItemKey(2, 6)]["draws"], a)
    assert not torch.equal(SeededItems(_RandomItems(), seed=8)[ItemKey(2, 5)]["draws"], a)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    items[ItemKey(0, 1)]
    assert torch.equal(torch.rand(3), expected)  # the caller's stream is left where it was


def test_a_batch_is_the_same_whichever_worker_draws_it_and_after_a_resume():
    """Mid-epoch resume with workers: the batches after the resume point equal those of the uninterrupted epoch,
    though the workers now start at other items (the round-robin of batches to workers shifted)."""

    def epoch_batches(num_workers: int, start: int) -> list:
        loaders = make_loaders(_RandomItems(), _RandomItems(), batch_size=2, eval_batch_size=4,
                               num_workers=num_workers, rank=0, world_size=1, seed=0)
        loaders.train_sampler.set_epoch(1)
        loaders.train_sampler.set_start(start)
        return [b["draws"] for b in loaders.train]

    full = epoch_batches(num_workers=2, start=0)
    assert len(full) == 6
    resumed = epoch_batches(num_workers=2, start=2 * 3)  # three batches seen
    assert all(torch.equal(a, b) for a, b in zip(full[3:], resumed, strict=True))
    in_process = epoch_batches(num_workers=0, start=0)
    assert all(torch.equal(a, b) for a, b in zip(full, in_process, strict=True))


def test_shard_sampler_covers_each_item_once():
    data = list(range(7))
    shards = [list(ShardSampler(data, 3, r)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == data
    assert [len(ShardSampler(data, 3, r)) for r in range(3)] == [3, 2, 2]


def test_collate_drops_failed_items():
    item = {"image": torch.zeros(3, 4, 4), "scene": 1, "name": "a"}
    batch = collate([item, None, dict(item, scene=2, name="b")])
    assert batch["image"].shape == (2, 3, 4, 4)
    assert batch["scene"].tolist() == [1, 2] and batch["name"] == ["a", "b"]
    assert collate([None, None]) is None


# ---------------------------------------------------------------------------------------------------- metrics


def test_scene_metrics_against_hand_computed_values(tmp_path):
    names = ["bedroom", "kitchen", "street"]
    # truth:      0  0  0  1  1  2
    # top-1 pred: 0  0  1  1  2  2   -> 4/6 correct; per class 2/3, 1/2, 1/1; mean = (2/3 + 1/2 + 1) / 3
    # top-2 hits: the 3rd sample has class 0 second-best, the 5th has class 1 second-best -> 6/6
    logits = torch.tensor([
        [3.0, 1.0, 0.0], [2.0, 0.0, 1.0], [1.0, 2.0, 0.0],
        [0.0, 3.0, 1.0], [0.0, 1.0, 2.0], [0.0, 1.0, 4.0],
    ])
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    metrics = SceneEvaluator(names, topk=2)
    metrics.update(logits[:4], target[:4])
    metrics.update(logits[4:], target[4:])
    m = metrics.evaluate()
    assert m["num_images"] == 6
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top2"] == pytest.approx(1.0)
    assert m["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["per_class"]["kitchen"] == {"accuracy": pytest.approx(0.5), "support": 2}
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    table = format_per_class_table(m)
    assert table.splitlines()[2].startswith("| bedroom | 3 | 66.7% |")
    png = save_confusion_png(m, tmp_path / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scene_metrics_class_without_images_is_left_out_of_the_mean():
    metrics = SceneEvaluator(["a", "b", "c"], topk=5)
    metrics.update(torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([0, 0]))
    m = metrics.evaluate()
    assert m["per_class"]["c"]["accuracy"] is None
    assert m["mean_class_accuracy"] == pytest.approx(0.5)  # only class a has images
    assert "top3" in m  # k clipped to the number of classes
