"""Reading a dataset item with a bad one replaced by the next good one (``data.skip_bad``).

A bad item (unreadable image, annotation of another size, ...) raises :class:`~twostream.data.io.DataError` naming
its file. With ``skip_bad`` it is logged once, remembered (never read twice), counted in ``skipped`` and replaced by
the next good item, so a long run loses one image rather than the epoch; without it the error propagates.
"""

from __future__ import annotations

import logging
from typing import Any

from twostream.data.io import DataError

log = logging.getLogger(__name__)

MAX_SUBSTITUTES = 20  # consecutive bad items tolerated before giving up (the dataset is then broken, not noisy)


class SubstitutesBadItems:
    """Mixin for map-style datasets: ``__getitem__`` reads ``_item(i)`` and substitutes bad items.

    The dataset sets ``skip_bad`` (bool), ``bad`` (``{index: reason}``, empty) and ``skipped`` (0), and implements
    ``_item(index) -> dict`` and ``_unreadable_message(index, count) -> str`` (the one line raised when ``count``
    consecutive items from ``index`` are all bad: which folder, and what to run).
    """

    skip_bad: bool
    bad: dict[int, str]
    skipped: int

    def _item(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def _unreadable_message(self, index: int, count: int) -> str:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)  # type: ignore[arg-type]
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        tries = min(MAX_SUBSTITUTES, n)
        for attempt in range(tries):
            i = (index + attempt) % n
            if i in self.bad:
                continue
            try:
                return self._item(i)
            except DataError as e:
                if not self.skip_bad:
                    raise
                self.bad[i] = str(e)
                self.skipped += 1
                log.warning("skipping bad item: %s", e)
        raise DataError(self._unreadable_message(index, tries))
