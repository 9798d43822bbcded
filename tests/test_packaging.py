"""The shipped configs are package data: a bare name resolves from any directory, a built wheel carries them, and a
package installed from that wheel (no checkout anywhere) loads them by name."""

from __future__ import annotations

import os
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


@pytest.mark.slow
def test_wheel_carries_the_configs_and_installs_without_a_checkout(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "configs", src / "configs")
    shutil.copytree(REPO / "twostream", src / "twostream", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    assert (src / "twostream" / "configs").is_symlink()  # the checkout's layout, as git stores it
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(dist)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [wheel] = dist.glob("twostream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for cfg in ["_base_.yaml", "seg/_base_.yaml", *shipped_configs()]:
        assert f"twostream/configs/{cfg}" in names, cfg
    assert "twostream/data/tables/ade20k150.csv" in names and "twostream/viz/static/viewer.js" in names

    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (f"import twostream.config as c; assert str(c.CONFIG_DIR).startswith({str(site)!r}), c.CONFIG_DIR; "
            "cfg = c.load_config('swin_gat.yaml'); print(cfg.model.image_encoder.name, len(c.shipped_configs()))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["swin_tiny_patch4_window7_224", str(len(shipped_configs()))]
