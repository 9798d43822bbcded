"""The shipped configs are package data: a bare name resolves from any directory, a built wheel carries them, and a
package installed from that wheel (no checkout anywhere) loads them by name and runs its console command: ``twostream
<command>`` with the parsers of ``tools/*.py``, a short real training run and a prediction included."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from twostream.config import CONFIG_DIR, ConfigError, load_config, resolve_config_path, shipped_configs

REPO = Path(__file__).resolve().parents[1]


def test_bare_names_resolve_to_the_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository
    for name in ("swin_gat.yaml", "swin_gat", "configs/swin_gat.yaml", "seg/quickstart.yaml", "seg/quickstart"):
        path = resolve_config_path(name)
        assert path.is_file() and path.parent.name in ("configs", "seg"), name
    assert load_config("swin_gat.yaml").model.gnn.type == "gat"  # its _base_ resolves beside it
    assert load_config("seg/quickstart", ["train.epochs=1"]).train.stage == "segmentation"
    # the shipped set is the repository's configs/ (one set of files: twostream/configs links to it)
    assert sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("[!_]*.yaml")) == \
        shipped_configs()
    assert (CONFIG_DIR / "swin_gat.yaml").read_bytes() == (REPO / "configs" / "swin_gat.yaml").read_bytes()
    # a local file of the same name wins
    (tmp_path / "swin_gat.yaml").write_text("train:\n  epochs: 1\n")
    assert load_config("swin_gat.yaml").train.epochs == 1
    with pytest.raises(ConfigError, match=r"swin_gta\.yaml: config file not found here or among the shipped "
                                          r"configs \(did you mean 'swin_gat\.yaml'\?\); shipped: .*vit_gcn\.yaml"):
        load_config("swin_gta.yaml")


def test_train_tool_finds_a_config_by_name_from_elsewhere(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--config", "seg/quickstart.yaml",
                           "--print-config"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "stage: segmentation" in proc.stdout and "backbone: resnet18" in proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The package as a user installs it: a wheel built from a copy of the checkout's files, installed with
    ``pip install --target`` (no checkout on the path), and an environment that finds it first."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "configs", src / "configs")
    shutil.copytree(REPO / "twostream", src / "twostream", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    assert (src / "twostream" / "configs").is_symlink()  # the checkout's layout, as git stores it
    dist = tmp / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(dist)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [wheel] = dist.glob("twostream-*.whl")
    site = tmp / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return {"wheel": wheel, "site": site, "env": env, "twostream": site / "bin" / "twostream"}


@pytest.mark.slow
def test_wheel_carries_the_configs_and_installs_without_a_checkout(installed, tmp_path):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for cfg in ["_base_.yaml", "seg/_base_.yaml", *shipped_configs()]:
        assert f"twostream/configs/{cfg}" in names, cfg
    assert "twostream/data/tables/ade20k150.csv" in names and "twostream/viz/static/viewer.js" in names
    site = installed["site"]
    code = (f"import twostream.config as c; assert str(c.CONFIG_DIR).startswith({str(site)!r}), c.CONFIG_DIR; "
            "cfg = c.load_config('swin_gat.yaml'); print(cfg.model.image_encoder.name, len(c.shipped_configs()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=installed["env"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["swin_tiny_patch4_window7_224", str(len(shipped_configs()))]


def _twostream(installed: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(installed["twostream"]), *args], capture_output=True, text=True, cwd=cwd,
                          env=installed["env"], timeout=300)


@pytest.mark.slow
def test_the_console_command_of_the_installed_package(installed, tmp_path):
    """``twostream <command>`` from a folder outside the repository: every tool's help (the tools' own parsers),
    a shipped config by bare name, errors as one line and exit 2."""
    from twostream.commands import COMMANDS

    assert installed["twostream"].is_file(), sorted(p.name for p in installed["site"].iterdir())
    listing = _twostream(installed, tmp_path)  # no command: the list, exit 2
    assert listing.returncode == 2 and all(f"  {name} " in listing.stdout for name in COMMANDS), listing.stdout
    for name in COMMANDS:
        proc = _twostream(installed, tmp_path, name, "--help")
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
        assert proc.stdout.startswith(f"usage: twostream {name} "), proc.stdout[:200]
        assert "python tools/" not in proc.stdout, f"{name} --help still says python tools/...: {proc.stdout}"
    proc = _twostream(installed, tmp_path, "train", "--config", "quickstart.yaml", "--print-config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "name: vit_tiny_patch16_224" in proc.stdout and "root: datasets/synthetic" in proc.stdout
    bad = _twostream(installed, tmp_path, "train", "--config", "swin_gta.yaml")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: swin_gta.yaml: config file not found here or among the shipped configs (did you mean 'swin_gat.yaml'?)")
    typo = _twostream(installed, tmp_path, "trian")
    assert typo.returncode == 2 and "did you mean 'train'?" in typo.stderr
    assert not list(tmp_path.iterdir())  # help and config printing write nothing


@pytest.mark.slow
def test_a_short_real_run_through_the_console_command(installed, tmp_path):
    """make-synthetic -> train (the shipped quick-start config by name, at 64 px with tiny widths, one epoch, graphs
    built online by its segmenter) -> eval -> infer, each an installed ``twostream`` process in a folder outside the
    repository; the run records the console command that started it, for its model card."""
    def run(*args: str) -> subprocess.CompletedProcess:
        proc = _twostream(installed, tmp_path, *args)
        assert proc.returncode == 0, f"twostream {' '.join(args)}: {proc.stderr[-3000:]}"
        return proc

    run("make-synthetic", "--out", "data", "--train-per-scene", "2", "--val-per-scene", "1", "--size", "64",
        "--scenes", "bedroom", "street", "kitchen")
    train = ["train", "--config", "quickstart.yaml", "--opts", "data.root=data", "data.image_size=[64,64]",
             "data.num_workers=0", "graph.source=online", "model.segmenter.checkpoint=",
             "model.segmenter.backbone=resnet10t", "model.segmenter.fpn_channels=16",
             "model.segmenter.head_channels=8", "model.image_encoder.name=test_vit", "model.gnn.hidden_dim=16",
             "model.gnn.heads=2", "model.gnn.class_embed_dim=8", "model.fusion.dim=16", "train.epochs=1",
             "train.batch_size=8", "eval.every_epochs=1", "output.dir=runs/tiny", "output.tensorboard=false"]
    run(*train)
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "best.pth").is_file() and (run_dir / "config.yaml").is_file()
    [command] = (run_dir / "command.txt").read_text().splitlines()
    assert command == shlex.join(["twostream", *train])
    run("eval", "--checkpoint", "runs/tiny")
    metrics = json.loads((run_dir / "eval-validation" / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and 0.0 <= metrics["top1"] <= 1.0
    photo = sorted((tmp_path / "data" / "images" / "validation").glob("*.jpg"))[0]
    infer = run("infer", str(photo), "--checkpoint", "runs/tiny", "--out", "pred", "--topk", "2")
    assert f"{photo.name} (64x64)" in infer.stdout and "scenes:" in infer.stdout and "objects:" in infer.stdout
    record = json.loads((tmp_path / "pred" / f"{photo.stem}.json").read_text())
    assert len(record["scenes"]) == 2 and record["graph"]["class_table"] == "ade20k150"
