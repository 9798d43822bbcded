"""twostream.atomic: the one whole-file writer (checkpoints, exports, configs, graph stores, ablation records)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from twostream.atomic import atomic_write, atomic_write_text


def test_writes_replace_whole_and_leave_no_temporary_file(tmp_path):
    path = tmp_path / "new" / "folder" / "config.yaml"  # the folder is created
    assert atomic_write_text(path, "a: 1\n") == path and path.read_text() == "a: 1\n"
    atomic_write_text(path, "a: 2\n")
    assert path.read_text() == "a: 2\n" and sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary_file(tmp_path):
    path = tmp_path / "last.pth"
    torch.save({"step": 1}, path)
    seen = []

    def half_then_fail(tmp):
        seen.append(tmp)
        tmp.write_bytes(b"\0" * 4096)  # half a checkpoint
        raise OSError(28, os.strerror(28))

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, half_then_fail, durable=True)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".last.pth.") and seen[0].suffix == ".tmp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_temporary_names_differ_for_writers_of_one_file(tmp_path):
    names = []
    for _ in range(2):
        atomic_write(tmp_path / "store.json", lambda tmp: names.append(tmp.name) or tmp.write_text("{}"))
    assert len(set(names)) == 2  # two processes writing one name never share a temporary file


def test_permissions_follow_the_umask_not_mkstemps_private_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "model.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # a shared model folder is readable by others


def test_durable_writes_are_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    atomic_write_text(tmp_path / "a.txt", "x")
    assert events == ["replace"]  # not durable: no fsync
    events.clear()
    atomic_write(tmp_path / "b.pth", lambda tmp: torch.save({"w": torch.ones(2)}, tmp), durable=True)
    assert events == ["fsync", "replace"]
