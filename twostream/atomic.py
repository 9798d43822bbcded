"""Whole-file writes: a file at its final name is always complete, the old one or the new one, never half of one.

The files a later run or tool reads back (checkpoints, exports and saved models, a run folder's config, vocabulary
and class table, metrics, graph stores and caches, the full-ADE20K index, a synthetic set's scene list and marker,
ablation records) go through :func:`atomic_write`: the content is written to a temporary file in the same folder
(``.{name}.{random}.tmp``, so concurrent writers of one name never share it), optionally flushed to disk, given the
permissions a plain ``open`` would give, and renamed over the target. A crash or SIGKILL at any moment leaves the
old file and, at worst, a ``*.tmp`` leftover that readers never open::

    >>> atomic_write(Path("run/config.yaml"), lambda tmp: tmp.write_text(text))
    >>> atomic_write(Path("run/last.pth"), lambda tmp: torch.save(state, tmp), durable=True)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text"]


def _umask() -> int:
    """The process's umask. Linux reports it in /proc; elsewhere it is read by setting it, which for an instant
    leaves it 0 for the process's other threads."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], object], *, durable: bool = False) -> Path:
    """``write(tmp)``, then rename ``tmp`` to ``path``; returns ``path``.

    Args:
        path: the file to (re)place; its folder is created.
        write: writes the whole content to the path it is given (``torch.save``, ``np.save``, ``save_file``, ...).
        durable: ``fsync`` the file before the rename, so that a power cut after the call still finds the new
            content (for checkpoints; cheap next to writing them).

    Raises:
        OSError: the file system refused the write; the temporary file is removed and ``path`` is untouched. Any
            error ``write`` raises propagates the same way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; a run folder or a model is shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a read-only folder keeps it; its name is never mistaken for the file
            tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
