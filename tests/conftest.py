"""Shared fixtures: a small synthetic ADE20K-format dataset and tiny experiment configs for end-to-end runs."""

from __future__ import annotations

import functools
import logging
import os
import runpy
import shutil
import sys
from pathlib import Path

import pytest

from twostream.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_ADE = REPO.parent / "shared" / "ade20k"

# The most a test may leave in its tmp_path. CI machines have been seen with a few hundred MB of free disk, and
# pyproject.toml's tmp_path_retention_policy = "failed" frees a test's folder only once it passes; a test over this
# fails, naming its largest files (a Swin-T checkpoint alone is 330 MB: tests use timm's test_vit).
TEST_DISK_BUDGET_MB = 200

# Four scene types, 64 px: enough for a loss to fall in a few steps, small enough for seconds per epoch.
E2E_SCENES = ("bedroom", "kitchen", "street", "bathroom")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """``{4 scenes} x (8 train + 4 val)`` images at 64x64 in the ADEChallengeData2016 layout."""
    from twostream.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synthetic") / "ade"
    make_synthetic(root, train_per_scene=8, val_per_scene=4, size=64, seed=0, scenes=list(E2E_SCENES))
    return root


def module_dir(request: pytest.FixtureRequest, name: str) -> Path:
    """A new folder for a module-scoped fixture, removed when the module's tests are done (so the suite's module
    fixtures do not pile up on disk until the session ends, as ``tmp_path_factory.mktemp`` folders do)."""
    path = request.getfixturevalue("tmp_path_factory").mktemp(name)
    request.addfinalizer(functools.partial(shutil.rmtree, path, ignore_errors=True))
    return path


def _file_sizes(root: Path) -> dict[Path, int]:
    """Bytes of each file under ``root``, hard links counted once."""
    sizes, seen = {}, set()
    for folder, _, files in os.walk(root):
        for name in files:
            st = os.lstat(path := Path(folder, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                sizes[path] = st.st_blocks * 512
    return sizes


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if tmp is not None and (total := sum((sizes := _file_sizes(tmp)).values())) > TEST_DISK_BUDGET_MB * 2**20:
        largest = ", ".join(f"{p.relative_to(tmp)} {n / 2**20:.0f} MB"
                            for p, n in sorted(sizes.items(), key=lambda kv: -kv[1])[:3])
        raise AssertionError(f"the test left {total / 2**20:.0f} MB in tmp_path, over TEST_DISK_BUDGET_MB = "
                             f"{TEST_DISK_BUDGET_MB} (tests/conftest.py); largest: {largest}")
    return result


def tiny_classifier_config(root: Path, out: Path, *extra: str) -> Config:
    """A two-stream classifier small enough for CPU tests: timm's test_vit, a 2-layer GAT over ground-truth graphs,
    no augmentation and no dropout (so runs are exactly comparable)."""
    overrides = [
        f"data.root={root}", "data.image_size=[64, 64]", "data.scenes.mode=all", "data.num_workers=0",
        "data.augment.hflip=0", "data.augment.scale=[1.0, 1.0]", "data.augment.ratio=[1.0, 1.0]",
        "data.augment.color_jitter=0",
        "graph.source=gt", "model.segmenter.kind=none",
        "model.image_encoder.name=test_vit", "model.image_encoder.pretrained=false",
        "model.image_encoder.drop_path_rate=0",
        "model.gnn.hidden_dim=16", "model.gnn.heads=2", "model.gnn.num_layers=2", "model.gnn.class_embed_dim=8",
        "model.gnn.dropout=0", "model.fusion.dim=16", "model.fusion.dropout=0",
        "train.epochs=2", "train.batch_size=8", "train.lr=3e-3", "train.warmup_steps=2", "train.device=cpu",
        "train.amp=fp32", "train.log_every=1", "train.label_smoothing=0", "eval.batch_size=16", "eval.topk=2",
        f"output.dir={out}", "output.tensorboard=false",
    ]
    return load_config(None, overrides + list(extra))


@pytest.fixture
def tiny_config():
    return tiny_classifier_config


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Test models are tiny: they gain nothing from intra-op threads, and on a shared 2-core machine OpenMP threads
    wait on each other (files ran 4-10x slower with 2 threads under load). Subprocesses get OMP_NUM_THREADS=1."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_twostream_log_levels():
    """Tools run in-process (runpy) quiet some loggers (``twostream.models`` to WARNING); later tests that read
    ``caplog`` must see the levels every test starts with."""
    import logging

    def levels() -> dict[str, int]:
        return {name: logging.getLogger(name).level for name in list(logging.root.manager.loggerDict)
                if name.startswith("twostream")}

    before = levels()
    yield
    for name in levels():
        logging.getLogger(name).setLevel(before.get(name, logging.NOTSET))


def run_tool(script: str | Path, *args, capsys) -> tuple[int, str, str]:
    """Run a ``tools/`` script (a path, or relative to the repository) as ``__main__`` in this process, as
    ``python tools/x.py ARGS`` would; -> (exit status, stdout, stderr). The command line, the root logger's handlers
    (the tool pointed them at the captured stderr) and every logger's level (tools quiet some) are put back."""
    argv, root = sys.argv, logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    sys.argv = [str(REPO / script), *map(str, args)]
    try:
        runpy.run_path(str(REPO / script), run_name="__main__")
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = argv
        root.handlers[:], root.level = handlers, level
        for name, lg in logging.root.manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))
    out, err = capsys.readouterr()
    return rc, out, err


def register_segmenter_kind(monkeypatch, name: str, cls: type) -> type:
    """Add a segmenter kind for one test as a user would: its table entry, and its name in the config's ``kind``
    Literal (which tests/test_config.py keeps equal to the table)."""
    import typing

    from twostream.config import SegmenterConfig
    from twostream.models.segmenter import SEGMENTERS

    monkeypatch.setitem(SEGMENTERS, name, cls)
    hint = SegmenterConfig.__annotations__["kind"]
    monkeypatch.setitem(SegmenterConfig.__annotations__, "kind", hint.replace("'none'", f"'{name}', 'none'")
                        if "'none'" in hint else hint.replace('"none"', f'"{name}", "none"'))
    assert name in typing.get_args(typing.get_type_hints(SegmenterConfig)["kind"])
    return cls
