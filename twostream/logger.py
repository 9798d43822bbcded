"""One logging format for the whole project, filtered by distributed rank."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"


def setup_logging(level: int | str = logging.INFO, rank: int | None = None) -> None:
    """Configure the root logger once: ``HH:MM:SS L name: message`` on stderr.

    Ranks other than 0 log warnings and errors only, so a multi-process run prints each message once.
    """
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT if rank == 0 else f"[rank {rank}] {FORMAT}", DATEFMT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
