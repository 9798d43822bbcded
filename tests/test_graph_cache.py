"""Graph cache: build from annotations or predictions, read back, resume after an interruption, detect staleness,
and tools/build_graphs.py end to end on a synthetic ADE20K-layout dataset."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from twostream.config import load_config
from twostream.graph.builder import SceneGraphBuilder
from twostream.graph.cache import GraphCache, build_graph_cache, checkpoint_identity, default_cache_dir

REPO = Path(__file__).resolve().parents[1]


def _pairs(n: int = 10, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(f"img{i:02d}", np.kron(rng.integers(0, 8, (4, 5)), np.ones((4, 4), np.int64))) for i in range(n)]


class Counting:
    """A source that counts loads and can fail at one index (an interrupted build)."""

    def __init__(self, items: list, fail_at: int | None = None) -> None:
        self.items, self.fail_at, self.loaded = items, fail_at, []

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.items]

    def __getitem__(self, i: int):
        if i == self.fail_at:
            raise KeyboardInterrupt
        self.loaded.append(i)
        return self.items[i]


def test_gt_cache_serves_the_builders_graphs(tmp_path):
    items = _pairs()
    builder = SceneGraphBuilder(granularity="region", min_area=2)
    cache = build_graph_cache(tmp_path / "c", items, builder, shard_size=3, progress=False)
    assert len(cache) == 10 and cache.names == [n for n, _ in items] and "img04" in cache and "nope" not in cache
    for name, sem in items:
        assert cache.get(name).equal(builder(sem))
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["meta.json"] + [f"shard-0000{k}.pt" for k in range(4)]
    with pytest.raises(KeyError, match="nope: not in the graph cache"):
        cache.get("nope")
    assert GraphCache(tmp_path / "c", settings=builder.settings())["img09"].equal(builder(items[9][1]))
    with pytest.raises(ValueError, match="built with"):
        GraphCache(tmp_path / "c", settings=SceneGraphBuilder().settings())
    with pytest.raises(FileNotFoundError, match="no graph cache"):
        GraphCache(tmp_path / "elsewhere")


def test_worker_processes_build_the_same_cache(tmp_path):
    items = _pairs(6)
    builder = SceneGraphBuilder()
    one = build_graph_cache(tmp_path / "a", items, builder, shard_size=4, num_workers=0, progress=False)
    two = build_graph_cache(tmp_path / "b", items, builder, shard_size=4, num_workers=2, progress=False)
    assert all(one.get(n).equal(two.get(n)) for n, _ in items)


def test_interrupted_build_resumes_with_missing_shards_only(tmp_path):
    items, builder, out = _pairs(10), SceneGraphBuilder(), tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        build_graph_cache(out, Counting(items, fail_at=7), builder, shard_size=3, progress=False)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.pt", "shard-00001.pt"]  # 0-5 done, 6-8 not
    with pytest.raises(ValueError, match="incomplete"):
        GraphCache(out)
    (out / "shard-00002.pt.tmp").write_bytes(b"half a shard")  # a write cut short
    source = Counting(items)
    cache = build_graph_cache(out, source, builder, shard_size=3, progress=False)
    assert source.loaded == [6, 7, 8, 9]
    assert not list(out.glob("*.tmp"))
    fresh = build_graph_cache(tmp_path / "fresh", items, builder, shard_size=3, progress=False)
    assert all(cache.get(n).equal(fresh.get(n)) for n, _ in items)
    again = Counting(items)
    build_graph_cache(out, again, builder, shard_size=3, progress=False)
    assert again.loaded == []  # complete and current: nothing rebuilt


def test_stale_cache_is_rebuilt(tmp_path):
    items, out = _pairs(5), tmp_path / "c"
    build_graph_cache(out, items, SceneGraphBuilder(), shard_size=2, progress=False)
    region = SceneGraphBuilder(granularity="region", min_area=1)
    source = Counting(items)
    cache = build_graph_cache(out, source, region, shard_size=2, progress=False)
    assert source.loaded == [0, 1, 2, 3, 4]
    assert cache.settings == region.settings() and cache.get("img03").equal(region(items[3][1]))
    fewer = Counting(items[:4])  # other items: stale too
    build_graph_cache(out, fewer, region, shard_size=2, progress=False)
    assert fewer.loaded == [0, 1, 2, 3] and len(GraphCache(out)) == 4


def _fake_predict(images: torch.Tensor) -> torch.Tensor:
    """A stand-in segmenter: (B, 3, H, W) in [0, 1] -> (B, H, W) labels 0..9 from the red channel."""
    return (images[:, 0] * 9.99).long()


def test_pred_cache_with_injected_predict(tmp_path):
    gen = torch.Generator().manual_seed(0)
    items = []
    for i in range(5):
        image = torch.rand(3, 16, 20 if i == 3 else 16, generator=gen)  # one odd size: its own forward pass
        sem = torch.zeros(image.shape[1:], dtype=torch.int64)
        sem[:, -3:] = 255  # transform padding: void in the predicted graph too
        items.append({"name": f"p{i}", "image": image, "sem_seg": sem, "scene": -1})
    builder = SceneGraphBuilder(granularity="region", min_area=1)
    cache = build_graph_cache(tmp_path / "p", items, builder, kind="pred", predict=_fake_predict, checkpoint="ck1",
                              batch_size=2, shard_size=2, progress=False)
    for it in items:
        labels = _fake_predict(it["image"][None])[0]
        labels[it["sem_seg"] == 255] = 255
        assert cache.get(it["name"]).equal(builder(labels))
    assert cache.meta["source"] == "pred" and cache.meta["checkpoint"] == "ck1"
    source = Counting([(it["name"], it["image"]) for it in items])
    build_graph_cache(tmp_path / "p", source, builder, kind="pred", predict=_fake_predict, checkpoint="ck2",
                      batch_size=2, shard_size=2, progress=False)
    assert source.loaded == [0, 1, 2, 3, 4]  # another checkpoint: rebuilt
    with pytest.raises(ValueError, match="needs predict"):
        build_graph_cache(tmp_path / "q", items, builder, kind="pred", progress=False)


def test_default_cache_dir(tmp_path):
    cfg = load_config(None, [f"data.root={tmp_path}", "graph.source=gt", "model.segmenter.kind=none"])
    gt = default_cache_dir(cfg, "training")
    assert gt.parent == tmp_path / "graphs" and gt.name.startswith("training-gt-")
    assert default_cache_dir(cfg, "validation").name.startswith("validation-gt-")
    region = load_config(None, [f"data.root={tmp_path}", "graph.source=gt", "model.segmenter.kind=none",
                                "graph.granularity=region"])
    assert default_cache_dir(region, "training") != gt
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights two")
    assert checkpoint_identity(a) != checkpoint_identity(b)
    pa, pb = default_cache_dir(cfg, "training", "pred", str(a)), default_cache_dir(cfg, "training", "pred", str(b))
    assert pa != pb and pa.name.startswith("training-pred-")
    with pytest.raises(ValueError, match="checkpoint"):
        default_cache_dir(cfg, "training", "pred")
    with pytest.raises(ValueError, match="online"):
        default_cache_dir(cfg, "training", "online")


def _tool():
    spec = importlib.util.spec_from_file_location("build_graphs_tool", REPO / "tools" / "build_graphs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_graphs_tool_on_synthetic_dataset(tmp_path):
    from twostream.data.ade20k import ADE20KDataset
    from twostream.data.synthetic import make_synthetic

    root = tmp_path / "ade"
    make_synthetic(root, train_per_scene=1, val_per_scene=1, size=(32, 32), scenes=["bedroom", "street"])
    config = tmp_path / "cfg.yaml"
    config.write_text(f"data:\n  root: {root}\n  image_size: [32, 32]\n  num_workers: 0\n"
                      "graph:\n  source: gt\nmodel:\n  segmenter:\n    kind: none\n")
    tool = _tool()
    args = tool.get_args_parser().parse_args(["--config", str(config), "--split", "validation", "--no-progress",
                                              "--opts", "graph.granularity=region"])
    assert tool.main(args) == 0
    cfg = load_config(config, ["graph.granularity=region"])
    cache = GraphCache(default_cache_dir(cfg, "validation"))
    dataset = ADE20KDataset(root, "validation", vocabulary=None)
    assert cache.names == dataset.names
    from twostream.data.transforms import build_transforms

    item = ADE20KDataset(root, "validation", None, transform=build_transforms(cfg.data, train=False))[0]
    assert cache.get(item["name"]).equal(SceneGraphBuilder.from_config(cfg.graph)(item["sem_seg"]))


def test_real_ade20k_sample_annotations(tmp_path):
    sample = REPO.parent / "shared" / "ade20k" / "sample"
    if not sample.is_dir():
        pytest.skip("../shared/ade20k/sample is not present")
    from twostream.data.ade20k import ADE20KDataset
    from twostream.data.io import load_label

    dataset = ADE20KDataset(sample, "validation", vocabulary=None)
    builder = SceneGraphBuilder()
    cache = build_graph_cache(tmp_path / "real", dataset, builder, progress=False)
    assert cache.names == ["ADE_val_00000001", "ADE_val_00000002"]
    label = load_label(sample / "annotations" / "validation" / "ADE_val_00000001.png")
    graph = cache.get("ADE_val_00000001")
    assert graph.image_size == label.shape
    assert graph.labels.tolist() == sorted(set(np.unique(label).tolist()) - {0})
    assert graph.area.sum().item() == pytest.approx((label > 0).mean(), rel=1e-5)


def test_published_segmenters_get_their_own_cache_folders(tmp_path):
    from twostream.config import load_config
    from twostream.graph.cache import default_cache_dir, segmenter_identity

    base = [f"data.root={tmp_path}", "graph.source=pred"]
    hub_a = load_config(None, [*base, "model.segmenter.kind=hf", "model.segmenter.hf_model=org/seg-a"])
    hub_b = load_config(None, [*base, "model.segmenter.kind=hf", "model.segmenter.hf_model=org/seg-b"])
    assert segmenter_identity(hub_a.model.segmenter) == "hf:org/seg-a"
    assert default_cache_dir(hub_a, "training") != default_cache_dir(hub_b, "training")
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"one")
    local = load_config(None, [*base, "model.segmenter.kind=hf", f"model.segmenter.hf_model={folder}"])
    before = default_cache_dir(local, "validation")
    (folder / "model.safetensors").write_bytes(b"two")  # retrained in place: new weights, new folder
    assert default_cache_dir(local, "validation") != before
    d2 = load_config(None, [*base, "model.segmenter.kind=detectron2", "model.segmenter.d2_config=zoo/pfpn.yaml"])
    assert segmenter_identity(d2.model.segmenter) == "d2:zoo/pfpn.yaml@"
