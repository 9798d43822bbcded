"""The quick start (``make demo``) as one process: the same tool commands, run one after another in one interpreter.

Each step is exactly a command a user could type (:func:`steps`: ``make-synthetic``, ``train --config
seg/quickstart.yaml``, ``build-graphs``, ``train --config quickstart.yaml``, ``eval``, ``infer``), run by calling that
tool's own parser and ``main`` (:func:`twostream.commands.run_command`), so the tools' parsing, logging and error
handling apply. It prints them as ``python tools/<tool>.py ...`` (``tools/quickstart.py``, ``make demo``) or as
``twostream <command> ...`` (``twostream quickstart``, where there may be no checkout). What one process saves is the
start-up: every tool imports torch, torch_geometric (which imports transformers, pandas and requests), torchmetrics
(scipy, matplotlib) and timm before it does anything, ~6 s of CPU per process on the 2-core development machine;
five tools paid it five times (docs/quickstart.md). Every step is resumable as before: a finished training run or
graph cache is reused.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

__all__ = ["PHOTOS", "Step", "run_steps", "steps", "typed"]

PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg")  # real photographs scikit-image ships

Step = tuple[str, list[str]]  # (command, its arguments): ("train", ["--config", "quickstart.yaml"])


def _photo_folder() -> Path:
    try:
        import skimage
    except ImportError:
        raise ImportError("the quick start predicts on the photographs scikit-image ships: pip install scikit-image "
                          "(the dev extra has it)") from None
    return Path(skimage.__file__).parent / "data"


def steps(*, console: bool = False) -> list[Step]:
    """The quick start's commands. ``console``: configs by their shipped names (``seg/quickstart.yaml``), as a user
    without a checkout types them; else as in a checkout (``configs/seg/quickstart.yaml``). Both find the same file."""
    photos = [str(_photo_folder() / name) for name in PHOTOS]
    seg, classifier = ("seg/quickstart.yaml", "quickstart.yaml") if console else \
        ("configs/seg/quickstart.yaml", "configs/quickstart.yaml")
    return [
        ("make-synthetic", ["--out", "datasets/synthetic"]),
        ("train", ["--config", seg]),
        ("build-graphs", ["--config", classifier, "--no-progress"]),
        ("train", ["--config", classifier]),
        ("eval", ["--checkpoint", "runs/quickstart"]),
        ("infer", [*photos, "--checkpoint", "runs/quickstart", "--out", "runs/quickstart/infer", "--save", "all"]),
    ]


def typed(step: Step, *, console: bool = False) -> str:
    """The command line of ``step`` as a user types it: ``twostream train ...`` or ``python tools/train.py ...``."""
    from twostream.commands import tool_name

    command, args = step
    head = ["twostream", command] if console else ["python", f"tools/{tool_name(command)}.py"]
    return shlex.join([*head, *args])


def run_steps(commands: list[Step], *, console: bool = False, dry_run: bool = False) -> int:
    """Run each command in turn in this process, printing it first (``$ ...``) and its wall time after; stop at the
    first that fails and return its exit status."""
    from twostream.commands import run_command

    for step in commands:
        print(f"$ {typed(step, console=console)}", flush=True)
        if dry_run:
            continue
        start = time.perf_counter()
        rc = run_command(*step, as_tool=not console)
        print(f"  ({time.perf_counter() - start:.1f} s{'' if rc == 0 else f', exit status {rc}'})", flush=True)
        if rc != 0:
            return rc
    return 0
