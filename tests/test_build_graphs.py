"""tools/build_graphs.py and the store folders training computes: end to end on a synthetic ADE20K-layout dataset
and on the real ADE20K sample, in one process and across two torchrun processes (gt, and pred with a published
segmenter), identical byte for byte, resumed after a rank died; store folders per segmenter."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from twostream.config import load_config, save_config
from twostream.engine.graph_caches import checkpoint_identity, default_cache_dir, map_size, segmenter_identity
from twostream.graph.builder import SceneGraphBuilder
from twostream.graph.store import GraphStore
from twostream.graph.store_build import build_graph_store

REPO = Path(__file__).resolve().parents[1]


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
    from twostream.atomic import atomic_write
    from twostream.models.segmenter_base import _file_hash, content_hash

    reads = _file_hash.cache_info().misses
    assert [content_hash(a) for _ in range(3)] == [checkpoint_identity(a)] * 3
    assert _file_hash.cache_info().misses == reads  # read once per process, not per lookup
    before = content_hash(a)
    atomic_write(a, lambda tmp: tmp.write_bytes(b"weights ONE"))  # retrained and saved again, same size
    assert content_hash(a) != before and content_hash(a) == content_hash(tmp_path / "a.pth")
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
    cache = GraphStore(default_cache_dir(cfg, "validation"))
    dataset = ADE20KDataset(root, "validation", vocabulary=None)
    assert cache.names == dataset.names
    assert cache.scenes() == [dataset.scene_names[n] for n in dataset.names]  # recorded for graphs-only training
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
    cache = build_graph_store(tmp_path / "real", dataset, builder, progress=False)
    assert cache.names == ["ADE_val_00000001", "ADE_val_00000002"]
    label = load_label(sample / "annotations" / "validation" / "ADE_val_00000001.png")
    graph = cache.get("ADE_val_00000001")
    assert graph.image_size == label.shape
    assert graph.labels.tolist() == sorted(set(np.unique(label).tolist()) - {0})
    assert graph.area.sum().item() == pytest.approx((label > 0).mean(), rel=1e-5)


def test_published_segmenters_get_their_own_cache_folders(tmp_path):
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


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _torchrun(*args: str, nproc: int = 2) -> str:
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                        str(REPO / "tools" / "build_graphs.py"), *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    from twostream.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("ade") / "ade"
    make_synthetic(root, train_per_scene=5, val_per_scene=1, size=(32, 32), scenes=["bedroom", "street"])
    return root


@pytest.mark.distributed
def test_torchrun_two_processes_build_the_one_process_store(small_root, tmp_path):
    """gt graphs: a 2-process build whose rank 1 died (its chunks missing, a half-written file left), run again under
    torchrun with 2 CPU processes, keeps rank 0's chunks and writes the same bytes as one process."""
    from twostream.data.ade20k import ADE20KDataset
    from twostream.data.transforms import build_transforms
    from twostream.graph.store_build import build_chunks, plan_graph_build
    from twostream.graph.store_sources import item_results, scene_lookup

    config = tmp_path / "cfg.yaml"
    config.write_text(f"data:\n  root: {small_root}\n  image_size: [32, 32]\n  num_workers: 0\n"
                      "graph:\n  source: gt\nmodel:\n  segmenter:\n    kind: none\n")
    common = ["--config", str(config), "--split", "training", "--chunk-size", "2", "--no-progress"]
    tool = _tool()
    assert tool.main(tool.get_args_parser().parse_args([*common, "--out", str(tmp_path / "one")])) == 0
    assert len(GraphStore(tmp_path / "one")) == 10

    # rank 0 of a killed 2-process build had finished its chunks (0, 2, 4); rank 1 left a half-written chunk
    cfg = load_config(config)
    dataset = ADE20KDataset(small_root, "training", None, transform=build_transforms(cfg.data, train=False))
    builder = SceneGraphBuilder.from_config(cfg.graph)
    plan, _ = plan_graph_build(tmp_path / "killed", dataset, builder, kind="gt", predict=None, segmenter=None,
                               chunk_size=2, map_size=map_size(cfg, "gt"))
    build_chunks(plan, item_results(dataset, builder, kind="gt"), [0, 2, 4], scene_of=scene_lookup(dataset))
    (plan.chunk_path(1).with_name("chunk-000001.npz.123.tmp")).write_bytes(b"cut short")
    log = _torchrun(*common, "--out", str(tmp_path / "killed"))
    import re

    kept = re.search(r"(\d) of 5 chunks already built; building the rest", log)
    assert kept and int(kept.group(1)) >= 3  # rank 0's three at least (rank 1 may have finished one before it looked)
    assert _files(tmp_path / "killed") == _files(tmp_path / "one")


@pytest.mark.distributed
def test_torchrun_pred_build_with_a_published_segmenter(small_root, tmp_path):
    """pred graphs from a (tiny, randomly initialised) Hugging Face SegFormer: 2 processes = 1 process."""
    pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    from test_hf_segmenter import HF_ADE20K_NAMES, _save_segformer

    folder = _save_segformer(tmp_path / "segformer", HF_ADE20K_NAMES)
    config = tmp_path / "cfg.yaml"
    save_config(load_config(None, [f"data.root={small_root}", "data.image_size=[32, 32]", "data.num_workers=0",
                                   "model.segmenter.kind=hf", f"model.segmenter.hf_model={folder}"]), config)
    common = ["--config", str(config), "--source", "pred", "--split", "training", "--chunk-size", "3",
              "--batch-size", "2", "--device", "cpu", "--no-progress"]
    tool = _tool()
    assert tool.main(tool.get_args_parser().parse_args([*common, "--out", str(tmp_path / "one")])) == 0
    _torchrun(*common, "--out", str(tmp_path / "two"))
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    store = GraphStore(tmp_path / "two")
    assert store.source == "pred" and store.segmenter.startswith("hf:") and len(store) == 10
