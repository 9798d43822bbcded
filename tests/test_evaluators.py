"""The evaluator protocol: one loop feeds several evaluators; under a 2-process gloo group each rank evaluates its own
shard and the reduced results equal a one-process run exactly; a new metric is one small class."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from twostream.data.classes import ade20k150
from twostream.engine.data import ShardSampler, collate
from twostream.engine.evaluators import (
    Evaluator,
    Evaluators,
    PanopticEvaluator,
    SceneEvaluator,
    SceneGraphEvaluator,
    SemSegEvaluator,
    SubsetEvaluator,
    inference_on_dataset,
    run_classifier,
    sum_over_ranks,
)
from twostream.graph.builder import SceneGraphBuilder
from twostream.models.label_alignment import LOW_LOGIT

TABLE = ade20k150()
LABELS = [TABLE.index(n) for n in ("wall", "floor", "person", "car")]  # two stuff, two thing classes
SCENES = ["bedroom", "kitchen", "street"]
N, SIZE = 11, 16  # an odd count: the two shards differ in size


class Items(torch.utils.data.Dataset):
    """Blocky label maps of four classes; the image encodes the map (channel 0 = label slot / 4) plus noise, so the
    fake model below gets most pixels right; one instance per thing class present."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        slots = torch.randint(0, 4, (4, 4), generator=g).repeat_interleave(4, 0).repeat_interleave(4, 1)
        sem = torch.tensor(LABELS)[slots]
        sem[0, : i % 5] = 255  # some ignored pixels
        image = torch.rand(3, SIZE, SIZE, generator=g) * 0.2
        image[0] = slots.float() / 4 + 0.1 * torch.randn(SIZE, SIZE, generator=g)
        things = [c for c in LABELS[2:] if (sem == c).any()]
        instances = {"labels": torch.tensor(things, dtype=torch.long),
                     "masks": torch.stack([sem == c for c in things]) if things else torch.zeros(0, SIZE, SIZE,
                                                                                               dtype=torch.bool)}
        return {"image": image, "sem_seg": sem, "scene": i % 3, "name": f"img_{i:02d}", "instances": instances}


class FakeModel(nn.Module):
    """Scene logits from image statistics; semantic logits decoded from channel 0; one panoptic segment per class."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(3, len(SCENES))
        with torch.no_grad():
            self.mix.weight.copy_(torch.tensor([[3.0, -1.0, 0.5], [-2.0, 4.0, 1.0], [0.5, 0.5, -3.0]]))
            self.mix.bias.zero_()

    def forward(self, images, graphs=None) -> dict:
        b = images.shape[0]
        logits = self.mix(images.std(dim=(2, 3)) * 10)  # (B, S)
        slot = (images[:, 0] * 4).round().clamp(0, 3).long()  # (B, H, W)
        sem_logits = images.new_full((b, len(TABLE), SIZE, SIZE), LOW_LOGIT)
        sem_logits.scatter_(1, torch.tensor(LABELS, device=images.device)[slot][:, None], 0.0)
        panoptic = []
        for labels in sem_logits.argmax(dim=1):
            ids = torch.zeros_like(labels, dtype=torch.int32)
            segments = []
            for k, c in enumerate(labels.unique().tolist(), start=1):
                ids[labels == c] = k
                segments.append({"id": k, "category_id": c, "isthing": c in LABELS[2:]})
            panoptic.append((ids, segments))
        return {"logits": logits, "sem_logits": sem_logits, "panoptic": panoptic}


def make_evaluators() -> dict[str, Evaluator]:
    builder = SceneGraphBuilder(class_table=TABLE)
    return {"scenes": SceneEvaluator(SCENES, topk=2), "segmentation": SemSegEvaluator(TABLE),
            "panoptic": PanopticEvaluator(TABLE), "graph_quality": SceneGraphEvaluator(builder),
            "subsets": SubsetEvaluator({"odd": [f"img_{i:02d}" for i in range(1, N, 2)], "first": ["img_00"]},
                                       SCENES, topk=2)}


def evaluate_shard(rank: int, world: int) -> dict:
    dataset = Items()
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=ShardSampler(dataset, world, rank),
                                         collate_fn=collate)
    return inference_on_dataset(FakeModel(), loader, make_evaluators(), forward=run_classifier, device="cpu")


def _worker(rank: int, world: int, folder: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        torch.save(evaluate_shard(rank, world), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def same(a, b) -> bool:
    """Equal through dicts and lists, NaN equal to NaN; floats to 1e-12 relative: counts reduce exactly, while sums of
    per-image real values (PQ's matched IoUs, macro graph scores) add up in another order over two ranks."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, float):
        return isinstance(b, float) and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    return a == b


def test_the_loop_feeds_every_evaluator_and_each_matches_an_independent_count():
    results = evaluate_shard(0, 1)
    assert set(results) == {"scenes", "segmentation", "panoptic", "graph_quality", "subsets"}
    model, items = FakeModel(), [Items()[i] for i in range(N)]
    with torch.no_grad():
        outputs = [model(it["image"][None]) for it in items]
    predicted = [int(o["logits"].argmax()) for o in outputs]
    truth = [it["scene"] for it in items]
    assert results["scenes"]["num_images"] == N
    assert results["scenes"]["top1"] == pytest.approx(sum(p == t for p, t in zip(predicted, truth)) / N)
    odd = [i for i in range(1, N, 2)]
    assert results["subsets"]["odd"]["num_images"] == len(odd)
    assert results["subsets"]["odd"]["top1"] == pytest.approx(sum(predicted[i] == truth[i] for i in odd) / len(odd))
    assert results["subsets"]["first"] == {"top1": float(predicted[0] == truth[0]), "top2": pytest.approx(
        float(truth[0] in torch.stack([o["logits"][0] for o in outputs[:1]]).topk(2).indices[0].tolist())),
        "mean_class_accuracy": float(predicted[0] == truth[0]), "num_images": 1}
    pred_maps = torch.cat([o["sem_logits"].argmax(dim=1) for o in outputs])
    target = torch.stack([it["sem_seg"] for it in items])
    scored = target != 255
    assert results["segmentation"]["pixel_accuracy"] == pytest.approx(
        float((pred_maps[scored] == target[scored]).float().mean()))
    assert results["segmentation"]["num_images"] == results["panoptic"]["num_images"] == N
    assert results["graph_quality"]["images"] == N and 0 < results["panoptic"]["pq"] <= 1


@pytest.mark.distributed
def test_two_processes_reduce_to_the_one_process_results(tmp_path):
    import torch.multiprocessing as mp

    single = evaluate_shard(0, 1)
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    reduced = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert same(reduced[0], reduced[1])  # every rank gets the result
    assert same(reduced[0], single), (reduced[0], single)
    for key in ("scenes", "segmentation", "subsets"):  # from integer counts: bit for bit
        assert reduced[0][key] == single[key], key
    assert single["scenes"]["num_images"] == N  # each image counted once: the shards have 6 and 5 images


class ImagesWithoutFloor(Evaluator):
    """A new metric in one class: the fraction of images whose predicted map has no floor."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.counts = torch.zeros(2, dtype=torch.long)  # images without floor, images

    def process(self, inputs: dict, outputs: dict) -> None:
        maps = outputs["sem_logits"].argmax(dim=1)
        self.counts += torch.tensor([int((~(maps == TABLE.index("floor")).flatten(1).any(1)).sum()), len(maps)])

    def evaluate(self) -> dict:
        without, images = sum_over_ranks(self.counts).tolist()
        return {"no_floor": without / images if images else float("nan"), "images": images}


def test_a_new_metric_plugs_in_and_lists_merge_or_clash():
    dataset = Items()
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate)
    results = inference_on_dataset(FakeModel(), loader, [ImagesWithoutFloor(), SceneEvaluator(SCENES, 2)],
                                   forward=run_classifier, device="cpu")
    assert results["images"] == N and 0 <= results["no_floor"] <= 1 and results["num_images"] == N  # merged
    with pytest.raises(ValueError, match="two evaluators return 'no_floor'"):
        Evaluators([ImagesWithoutFloor(), ImagesWithoutFloor()]).evaluate()
    model = FakeModel().train()
    inference_on_dataset(model, [None], ImagesWithoutFloor(), forward=run_classifier, device="cpu")
    assert model.training  # the loop puts the model back as it found it


def test_sum_over_ranks_is_a_copy_without_a_group():
    state = torch.arange(3)
    out = sum_over_ranks(state)
    out += 1
    assert state.tolist() == [0, 1, 2]

