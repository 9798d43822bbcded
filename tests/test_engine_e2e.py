"""The training engine end to end on tiny synthetic data: loss falls, DDP matches one process, a non-finite loss stops
the run with the step named and the last checkpoint intact. Resume after SIGKILL and SIGTERM:
tests/test_engine_resume.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from twostream.config import save_config
from twostream.engine.checkpoint import load_checkpoint
from twostream.engine.trainer import TrainingError, train

REPO = Path(__file__).resolve().parents[1]


def records(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def run_tool(args: list[str], env_extra: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_short_run_loss_falls_and_run_folder_is_complete(synthetic_root, tiny_config, tmp_path):
    cfg = tiny_config(synthetic_root, tmp_path / "run", "train.epochs=6")
    metrics = train(cfg)
    losses = [r["loss"] for r in records(tmp_path / "run")]
    assert len(losses) == 6 * 4  # 32 images / batch 8, 6 epochs, every step logged
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4  # mean loss of the first and the last epoch
    assert last < 0.75 * first, losses
    run = tmp_path / "run"
    for name in ("config.yaml", "vocabulary.json", "class_table.json", "last.pth", "best.pth", "final_metrics.json"):
        assert (run / name).is_file(), name
    ckpt = load_checkpoint(run / "last.pth")
    assert ckpt["step"] == 24 and ckpt["epoch"] == 5 and ckpt["stage"] == "classifier"
    assert ckpt["vocabulary"] == ["bathroom", "bedroom", "kitchen", "street"]
    assert metrics["num_images"] == 16 and 0.0 <= metrics["top1"] <= 1.0


@pytest.mark.distributed
def test_two_process_ddp_matches_single_process(synthetic_root, tiny_config, tmp_path):
    """Global batch 8 as 1 process x 8 or 2 processes x 4 sees the same images per step: the losses agree."""
    single = tiny_config(synthetic_root, tmp_path / "one", "train.epochs=1")
    save_config(single, tmp_path / "one.yaml")
    double = tiny_config(synthetic_root, tmp_path / "two", "train.epochs=1", "train.batch_size=4")
    save_config(double, tmp_path / "two.yaml")
    r1 = run_tool(["tools/train.py", "--config", str(tmp_path / "one.yaml")])
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         "tools/train.py", "--config", str(tmp_path / "two.yaml")], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r2.returncode == 0, r2.stderr[-3000:]
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5), (one, two)
    e1, e2 = records(tmp_path / "one", "eval")[-1], records(tmp_path / "two", "eval")[-1]
    assert e2["num_images"] == e1["num_images"] == 16  # metrics reduced over ranks, each image counted once
    assert e2["top1"] == pytest.approx(e1["top1"])
    # the run records the command that trained it once, on rank 0 (the model card quotes it)
    for run, name in ((tmp_path / "one", "one.yaml"), (tmp_path / "two", "two.yaml")):
        [line] = (run / "command.txt").read_text().splitlines()
        assert line.startswith("python tools/train.py --config") and line.endswith(name)


def test_resume_refuses_a_different_config(synthetic_root, tiny_config, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(synthetic_root, run, "train.epochs=1"))
    with pytest.raises(TrainingError, match=r"holds a run with another config \(differs in train\.lr\)"):
        train(tiny_config(synthetic_root, run, "train.epochs=2", "train.lr=1e-2"))
    train(tiny_config(synthetic_root, run, "train.epochs=2"))  # more epochs of the same run is a resume
    assert load_checkpoint(run / "last.pth")["step"] == 8


def test_non_finite_loss_stops_with_step_and_batch_named(synthetic_root, tiny_config, tmp_path, monkeypatch):
    from twostream.engine import tasks

    real_loss = tasks.ClassificationTask.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):
        loss, n = real_loss(self, model, batch)
        calls["n"] += 1
        return (loss * float("nan"), n) if calls["n"] == 3 else (loss, n)

    monkeypatch.setattr(tasks.ClassificationTask, "loss", poisoned)
    run = tmp_path / "run"
    cfg = tiny_config(synthetic_root, run, "train.checkpoint_every=1")
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 1, optimizer step 2, batch 2 \(images ADE_train_"):
        train(cfg)
    last = load_checkpoint(run / "last.pth")
    assert last["step"] == 2 and all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_train_tool_errors_are_one_line(synthetic_root, tiny_config, tmp_path):
    cfg = tiny_config(tmp_path / "no_such_dataset", tmp_path / "run")
    save_config(cfg, tmp_path / "cfg.yaml")
    r = run_tool(["tools/train.py", "--config", str(tmp_path / "cfg.yaml")])
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no_such_dataset" in last
    r = run_tool(["tools/train.py", "--config", str(tmp_path / "cfg.yaml"), "--opts", "train.epocs=1"])
    assert r.returncode == 2 and "unknown key 'train.epocs' (did you mean 'epochs'?)" in r.stderr


def test_print_config_round_trips(tmp_path):
    r = run_tool(["tools/train.py", "--config", "configs/quickstart.yaml", "--print-config"])
    assert r.returncode == 0, r.stderr
    (tmp_path / "printed.yaml").write_text(r.stdout)
    from twostream.config import load_config

    assert load_config(tmp_path / "printed.yaml") == load_config("configs/quickstart.yaml")
    shutil.rmtree(tmp_path)
