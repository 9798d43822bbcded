"""What every tool (``tools/*.py``, ``twostream <command>``) shares: logging set-up and turning user mistakes into one
line and a non-zero exit."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence

from twostream.logger import setup_logging

__all__ = ["run_cli"]


def _user_errors() -> tuple[type[BaseException], ...]:
    from twostream.config import ConfigError
    from twostream.data.io import DataError
    from twostream.engine.checkpoint import CheckpointError
    from twostream.engine.trainer import TrainingError

    # ValueError: the project raises it (with one line naming the thing) for every other user mistake; OSError: an
    # unreachable hub name, a missing file; ImportError: an optional extra (transformers, detectron2) not installed.
    return (ConfigError, CheckpointError, TrainingError, DataError, ValueError, OSError, ImportError)


def run_cli(get_parser: Callable[[], argparse.ArgumentParser], main: Callable[[argparse.Namespace], int],
            argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), set up logging, run ``main``; a known user error prints
    ``error: <one line>`` and returns 2. ``tools/*.py`` and the ``twostream`` command (:mod:`twostream.commands`) run
    every tool through it."""
    args = get_parser().parse_args(None if argv is None else list(argv))
    setup_logging(getattr(args, "log_level", "INFO"))
    from twostream.allocator import tune_allocator

    tune_allocator()  # large CPU tensors reuse heap memory instead of faulting in fresh pages every step
    # torch_geometric's import calls torch.jit.script, which torch 2.9+ deprecates: noise for every tool run.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    try:
        status = main(args)
    except _user_errors() as e:
        logging.getLogger("twostream").debug("details", exc_info=True)  # --log-level DEBUG shows the traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    # A main that returns nothing succeeded, as sys.exit(None) does: a caller comparing with 0 must not stop there.
    return 0 if status is None else int(status)
