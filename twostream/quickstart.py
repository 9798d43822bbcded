"""The quick start (``make demo``) as one process: the same tool commands, run one after another in one interpreter.

Each step is exactly a command a user could type (:func:`steps`: ``tools/make_synthetic.py``, ``tools/train.py
--config seg/quickstart.yaml``, ``tools/build_graphs.py``, ``tools/train.py --config quickstart.yaml``,
``tools/eval.py``, ``tools/infer.py``), run by executing that script as ``__main__`` with its arguments
(:func:`run_step`), so the tools' own parsing, logging and error handling apply. What one process saves is the
start-up: every tool imports torch, torch_geometric (which imports transformers, pandas and requests),
torchmetrics (scipy, matplotlib) and timm before it does anything, ~6 s of CPU per process on the 2-core
development machine; five tools paid it five times (docs/quickstart.md). Every step is resumable as before: a finished
training run or graph cache is reused.
"""

from __future__ import annotations

import logging
import runpy
import shlex
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["PHOTOS", "run_step", "run_steps", "steps"]

PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg")  # real photographs scikit-image ships


def _photo_folder() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def steps(tools: str | Path = "tools") -> list[list[str]]:
    """The quick start's commands, as ``[script, *arguments]``."""
    tools = Path(tools)
    photos = [str(_photo_folder() / name) for name in PHOTOS]
    return [
        [str(tools / "make_synthetic.py"), "--out", "datasets/synthetic"],
        [str(tools / "train.py"), "--config", "configs/seg/quickstart.yaml"],
        [str(tools / "build_graphs.py"), "--config", "configs/quickstart.yaml", "--no-progress"],
        [str(tools / "train.py"), "--config", "configs/quickstart.yaml"],
        [str(tools / "eval.py"), "--checkpoint", "runs/quickstart"],
        [str(tools / "infer.py"), *photos, "--checkpoint", "runs/quickstart", "--out", "runs/quickstart/infer",
         "--save", "all"],
    ]


def run_step(argv: list[str]) -> int:
    """Run ``python <argv>`` in this process; returns its exit status (a tool's ``sys.exit`` is caught)."""
    saved = sys.argv
    sys.argv = list(argv)
    try:
        runpy.run_path(argv[0], run_name="__main__")
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = saved


def run_steps(commands: list[list[str]], *, dry_run: bool = False) -> int:
    """Run each command in turn, printing it first (``$ python ...``) and its wall time after; stop at the first
    that fails and return its exit status."""
    for argv in commands:
        print(f"$ python {shlex.join(argv)}", flush=True)
        if dry_run:
            continue
        start = time.perf_counter()
        rc = run_step(argv)
        print(f"  ({time.perf_counter() - start:.1f} s{'' if rc == 0 else f', exit status {rc}'})", flush=True)
        if rc != 0:
            return rc
    return 0
