"""Graph store: build from annotations or predictions, read back by name and position, optional fields stored
generically, resume after an interruption, staleness, builds split over ranks identical byte for byte, JSON folders,
and the old shard cache converted."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from twostream.graph.builder import SceneGraphBuilder
from twostream.graph.store import GraphStore, StoreError, is_store
from twostream.graph.store_build import build_chunks, build_graph_store, plan_build, run_build

REPO = Path(__file__).resolve().parents[1]


def _pairs(n: int = 10, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(f"img{i:02d}", np.kron(rng.integers(0, 8, (4, 5)), np.ones((4, 4), np.int64))) for i in range(n)]


class Counting:
    """A source that counts loads, records scenes and can fail at one index (an interrupted build)."""

    def __init__(self, items: list, fail_at: int | None = None) -> None:
        self.items, self.fail_at, self.loaded = items, fail_at, []
        self.scene_names = {name: "kitchen" if i % 2 else "street" for i, (name, _) in enumerate(items)}

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


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_gt_store_serves_the_builders_graphs(tmp_path):
    items = _pairs()
    builder = SceneGraphBuilder(granularity="region", min_area=2)
    store = build_graph_store(tmp_path / "s", Counting(items), builder, chunk_size=3, progress=False)
    assert len(store) == 10 and store.names == [n for n, _ in items] and "img04" in store and "nope" not in store
    for i, (name, sem) in enumerate(items):
        assert store.get(name).equal(builder(sem)) and store.graph(i).equal(builder(sem))
        assert store.index(name) == i and store.name_at(i) == name
    assert store.scenes()[:2] == ["street", "kitchen"] and store.scene_table == ["kitchen", "street"]
    assert store.fields["labels"] == {"kind": "node", "dtype": "int64", "stored": "int32", "shape": []}
    assert store.fields["edge_index"]["shape"] == [2] and store.fields["image_size"]["kind"] == "graph"
    assert not (tmp_path / "s" / "parts").exists() and not (tmp_path / "s" / "build.json").exists()
    with pytest.raises(KeyError, match="nope: not in the graph store"):
        store.get("nope")
    assert GraphStore(tmp_path / "s", settings=builder.settings())["img09"].equal(builder(items[9][1]))
    with pytest.raises(StoreError, match="built with"):
        GraphStore(tmp_path / "s", settings=SceneGraphBuilder().settings())
    with pytest.raises(StoreError, match="no graph store here"):
        GraphStore(tmp_path / "elsewhere")
    again = pickle.loads(pickle.dumps(store))  # spawn workers get the folder and reopen the maps
    assert again._arrays is None and again.get("img03").equal(builder(items[3][1]))


def test_optional_node_and_edge_fields_need_no_store_change(tmp_path):
    """Any extra to_tensors() key with a leading node or edge dimension is stored and read back, bit for bit."""
    builder = SceneGraphBuilder()
    gen = torch.Generator().manual_seed(0)
    graphs = []
    for name, sem in _pairs(5):
        t = builder(sem).to_tensors()
        n, e = t["labels"].numel(), t["edge_index"].shape[1]
        t["features"] = torch.randn(n, 3, generator=gen)  # (N, C)
        t["confidence"] = torch.rand(n, generator=gen)  # (N,), what the segmenter's max-softmax gives
        t["edge_weight"] = torch.rand(e, generator=gen)  # a per-edge field the store has never heard of
        graphs.append((name, t))
    plan, _ = plan_build(tmp_path / "s", source="gt", settings=builder.settings(), class_table=builder.class_table,
                         segmenter=None, names=[n for n, _ in graphs], num_items=5, chunk_size=2)
    build_chunks(plan, lambda idx: ((i, graphs[i]) for i in idx), range(plan.num_chunks))
    from twostream.graph.store_build import finish_build

    store = finish_build(plan)
    assert {k: v["kind"] for k, v in store.fields.items()} == {
        "area": "node", "bbox": "node", "boundary": "edge", "centroid": "node", "confidence": "node",
        "edge_index": "edge", "edge_weight": "edge", "features": "node", "image_size": "graph", "labels": "node"}
    for i, (_, t) in enumerate(graphs):
        back = store.tensors(i)
        assert set(back) == set(t) and all(torch.equal(back[k], t[k]) and back[k].dtype == t[k].dtype for k in t)
    assert store.graph(2).features is not None


def test_worker_processes_build_the_same_store(tmp_path):
    items, builder = _pairs(6), SceneGraphBuilder()
    build_graph_store(tmp_path / "a", items, builder, chunk_size=4, num_workers=0, progress=False)
    build_graph_store(tmp_path / "b", items, builder, chunk_size=4, num_workers=2, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_interrupted_build_resumes_with_missing_chunks_only(tmp_path):
    items, builder, out = _pairs(10), SceneGraphBuilder(), tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        build_graph_store(out, Counting(items, fail_at=7), builder, chunk_size=3, progress=False)
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["chunk-000000.npz", "chunk-000001.npz"]
    with pytest.raises(StoreError, match=r"incomplete .* run the same tools/build_graphs.py command again"):
        GraphStore(out)  # never read half-written
    (out / "parts" / "chunk-000002.npz.tmp").write_bytes(b"half a chunk")  # a write cut short
    source = Counting(items)
    build_graph_store(out, source, builder, chunk_size=3, progress=False)
    assert source.loaded == [6, 7, 8, 9]
    build_graph_store(tmp_path / "fresh", Counting(items), builder, chunk_size=3, progress=False)
    assert _files(out) == _files(tmp_path / "fresh")
    again = Counting(items)
    build_graph_store(out, again, builder, chunk_size=5, progress=False)
    assert again.loaded == []  # complete and current (the chunk size does not change the graphs): nothing rebuilt


def test_stale_store_is_rebuilt(tmp_path):
    items, out = _pairs(5), tmp_path / "s"
    build_graph_store(out, items, SceneGraphBuilder(), chunk_size=2, progress=False)
    region = SceneGraphBuilder(granularity="region", min_area=1)
    source = Counting(items)
    store = build_graph_store(out, source, region, chunk_size=2, progress=False)
    assert source.loaded == [0, 1, 2, 3, 4]
    assert store.settings == region.settings() and store.get("img03").equal(region(items[3][1]))
    fewer = Counting(items[:4])  # other items: stale too
    build_graph_store(out, fewer, region, chunk_size=2, progress=False)
    assert fewer.loaded == [0, 1, 2, 3] and len(GraphStore(out)) == 4


def test_repeated_names_keep_their_first_graph(tmp_path):
    """A dataset that replaces a bad item by the next one yields that name twice."""
    items = _pairs(4)
    items[1] = (items[2][0], items[1][1])  # item 1 reported under item 2's name, with another graph
    builder = SceneGraphBuilder()
    store = build_graph_store(tmp_path / "s", items, builder, chunk_size=1, progress=False)
    assert store.names == ["img00", "img02", "img03"] and store.get("img02").equal(builder(items[1][1]))


def _fake_predict(images: torch.Tensor) -> torch.Tensor:
    """A stand-in segmenter: (B, 3, H, W) in [0, 1] -> (B, H, W) labels 0..9 from the red channel."""
    return (images[:, 0] * 9.99).long()


def test_pred_store_with_injected_predict(tmp_path):
    gen = torch.Generator().manual_seed(0)
    items = []
    for i in range(5):
        image = torch.rand(3, 16, 20 if i == 3 else 16, generator=gen)  # one odd size: its own forward pass
        sem = torch.zeros(image.shape[1:], dtype=torch.int64)
        sem[:, -3:] = 255  # transform padding: void in the predicted graph too
        items.append({"name": f"p{i}", "image": image, "sem_seg": sem, "scene": -1})
    builder = SceneGraphBuilder(granularity="region", min_area=1)
    store = build_graph_store(tmp_path / "p", items, builder, kind="pred", predict=_fake_predict, segmenter="ck1",
                              batch_size=2, chunk_size=2, progress=False)
    for it in items:
        labels = _fake_predict(it["image"][None])[0]
        labels[it["sem_seg"] == 255] = 255
        assert store.get(it["name"]).equal(builder(labels))
    assert store.source == "pred" and store.segmenter == "ck1"
    source = Counting([(it["name"], it["image"]) for it in items])
    build_graph_store(tmp_path / "p", source, builder, kind="pred", predict=_fake_predict, segmenter="ck2",
                      batch_size=2, chunk_size=2, progress=False)
    assert source.loaded == [0, 1, 2, 3, 4]  # another segmenter: rebuilt
    with pytest.raises(ValueError, match="needs predict"):
        build_graph_store(tmp_path / "q", items, builder, kind="pred", progress=False)


def test_ranks_sharing_a_folder_build_the_one_process_store(tmp_path):
    """Two ranks (threads here; processes under torchrun, see test_torchrun_*) split the chunks: same bytes."""
    from twostream.graph.store_build import plan_graph_build
    from twostream.graph.store_sources import item_results, scene_lookup

    items, builder = Counting(_pairs(9)), SceneGraphBuilder()
    build_graph_store(tmp_path / "one", items, builder, chunk_size=2, progress=False)
    out, stores = tmp_path / "two", {}

    def rank(r: int) -> None:
        stores[r] = run_build(lambda write: plan_graph_build(out, items, builder, kind="gt", predict=None,
                                                             segmenter=None, chunk_size=2, write=write),
                              item_results(items, builder, kind="gt"), scene_of=scene_lookup(items), progress=False,
                              desc="", rank=r, world_size=2, poll_s=0.01)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert stores[1] is None and len(stores[0]) == 9
    assert _files(out) == _files(tmp_path / "one")


def test_old_shard_cache_converts_in_place_bit_for_bit(tmp_path):
    from twostream.graph.cache import ShardCache, convert_shard_cache, pack_shard, write_shard_cache

    items, builder = _pairs(7), SceneGraphBuilder(granularity="region", min_area=1)
    graphs = [builder(sem).to_tensors() for _, sem in items]
    shards = [pack_shard([n for n, _ in items[k:k + 3]], graphs[k:k + 3]) for k in range(0, 7, 3)]  # shards of 3
    old = write_shard_cache(tmp_path / "c", shards, settings=builder.settings(), class_table=builder.class_table,
                            source="pred", checkpoint="abc", shard_size=3)
    before = {n: ShardCache(old).get(n) for n, _ in items}
    with pytest.raises(StoreError, match=r"old shard format; convert it with .*--convert"):
        GraphStore(old)
    store = convert_shard_cache(old, scenes={"img00": "bedroom"})
    assert sorted(p.name for p in old.glob("shard-*")) == [] and not (old / "meta.json").exists()
    assert store.segmenter == "abc" and store.source == "pred" and store.scenes()[:2] == ["bedroom", None]
    assert all(store.get(n).equal(g) for n, g in before.items())
    # the store a build of the same items would write is current: nothing is rebuilt
    source = Counting(items)
    _, done = plan_build(old, source="pred", settings=builder.settings(), class_table=builder.class_table,
                         segmenter="abc", names=source.names, num_items=7, write=False)
    assert done


def test_store_from_json_files(tmp_path):
    from twostream.data.classes import ClassTable
    from twostream.graph.store_json import build_store_from_json

    builder = SceneGraphBuilder()
    folder = tmp_path / "preds"
    folder.mkdir()
    expected = {}
    for i, (name, sem) in enumerate(_pairs(4)):
        graph = builder(sem)
        expected[name] = graph
        if i % 2:  # what tools/infer.py --out writes: a prediction with its graph and extra keys
            body = {"image_size": [16, 20], "scenes": [{"scene": "street", "prob": 0.9}], "graph": graph.to_json(),
                    "image": f"/photos/{name}.jpg", "sem_seg": f"{name}_sem.png"}
        else:  # a scene-graph JSON
            body = graph.to_json()
        (folder / f"{name}.json").write_text(json.dumps(body))
    (folder / "notes.json").write_text('{"hello": 1}')
    (folder / "broken.json").write_text("{not json")
    (folder / "image_only.json").write_text('{"image_size": [4, 4], "scenes": [], "graph": null}')
    other = builder(_pairs(1)[0][1])
    other.class_table = ClassTable("coco", ("a",) * 151, np.zeros((151, 3), np.uint8))
    (folder / "zz_coco.json").write_text(json.dumps(other.to_json()))  # after the others: its table differs
    store = build_store_from_json(folder, tmp_path / "store", scenes={"img00": "street", "img01": "kitchen"},
                                  progress=False)
    assert store.names == ["img00", "img01", "img02", "img03"] and store.source == "json" and store.settings is None
    assert all(store.get(n).equal(g) for n, g in expected.items())
    assert store.scenes() == ["street", "kitchen", None, None]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.json").write_text("[]")
    with pytest.raises(StoreError, match="none of its 1 JSON files holds a scene graph"):
        build_store_from_json(empty, tmp_path / "s2", progress=False)
    assert not is_store(tmp_path / "s2")
