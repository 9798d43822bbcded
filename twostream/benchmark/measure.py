"""Timing and memory primitives of the benchmark: synchronised wall-clock medians and peak-memory probes.

Timing: ``warmup`` untimed calls, then up to ``iters`` timed calls (``time.perf_counter``, with
``torch.cuda.synchronize`` before and after each call on a GPU); the figure is the median. A measurement stops early
once it has ``min_iters`` calls and has spent ``budget_s`` seconds, so one slow model cannot stretch the run.

Memory:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``: the peak of tensor memory, weights
  included.
- CPU (Linux): the growth of the process's resident-set high-water mark (``VmHWM``) over the call. Before the call,
  freed heap pages are returned to the system (``malloc_trim``) and the high-water mark is reset to the current RSS
  (writing ``5`` to ``/proc/self/clear_refs``), so the figure is the memory the call itself needed (activations and
  workspaces), without the weights that were resident before.
- CPU elsewhere: the same growth sampled every millisecond by a thread with ``psutil`` when it is installed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import re
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["MemoryProbe", "Timing", "sync", "time_calls"]

_MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (a no-op on CPU), so that wall-clock time covers the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Seconds per call of one measurement: every timed call, and their median."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def iters(self) -> int:
        return len(self.times)

    def rate(self, items: int) -> float:
        """Items per second at the median time (``items`` per call)."""
        return items / self.median

    def add(self, seconds: float) -> None:
        self.times.append(seconds)


def time_calls(fn: Callable[[], Any], device: torch.device, *, warmup: int = 1, iters: int = 5, min_iters: int = 3,
               budget_s: float = 15.0) -> Timing:
    """Median wall-clock seconds of ``fn()`` after ``warmup`` untimed calls.

    Times up to ``iters`` calls; stops after ``min(min_iters, iters)`` of them once ``budget_s`` seconds have gone
    into timed calls.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    timing = Timing()
    spent = 0.0
    for i in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        seconds = time.perf_counter() - t0
        timing.add(seconds)
        spent += seconds
        if i + 1 >= min(min_iters, iters) and spent > budget_s:
            break
    return timing


# --------------------------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------------------------

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field_name: str) -> int:
    match = re.search(rf"^{field_name}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{field_name} not in {_STATUS}")
    return int(match.group(1))


def _malloc_trim() -> None:
    """Hand freed heap pages back to the system (glibc), so that RSS is live memory only."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(name).malloc_trim(0)


def _can_reset_hwm() -> bool:
    try:
        _status_kib("VmHWM")
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class _Sampler:
    """Polls the RSS (psutil) from a thread; ``peak`` is the largest value seen."""

    def __init__(self, interval_s: float = 0.001) -> None:
        import psutil

        self.process, self.interval_s = psutil.Process(), interval_s
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.process.memory_info().rss)


class MemoryProbe:
    """Peak memory of the calls made between :meth:`start` and :meth:`stop`, in MiB (see the module docstring).

    ``method`` says how it is measured on this machine; ``stop`` returns ``None`` where nothing can measure it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = "CUDA max_memory_allocated (peak tensor memory, weights included)"
            self._kind = "cuda"
        elif _can_reset_hwm():
            self.method = "peak RSS growth (Linux VmHWM after malloc_trim; activations, not weights)"
            self._kind = "hwm"
        else:
            try:
                import psutil  # noqa: F401

                self.method = "peak RSS growth (psutil, sampled every 1 ms; activations, not weights)"
                self._kind = "psutil"
            except ImportError:
                self.method = "not measured (no /proc/self/clear_refs and no psutil)"
                self._kind = "none"
        self._base = 0
        self._sampler: _Sampler | None = None

    def start(self) -> None:
        gc.collect()
        if self._kind == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self._kind == "hwm":
            _malloc_trim()
            _CLEAR_REFS.write_text("5")  # VmHWM := VmRSS
            self._base = _status_kib("VmRSS") * 1024
        elif self._kind == "psutil":
            _malloc_trim()
            self._sampler = _Sampler()
            self._base = self._sampler.peak

    def stop(self) -> float | None:
        if self._kind == "cuda":
            sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) / _MIB
        if self._kind == "hwm":
            return max(0, _status_kib("VmHWM") * 1024 - self._base) / _MIB
        if self._kind == "psutil" and self._sampler is not None:
            peak, self._sampler = self._sampler.stop(), None
            return max(0, peak - self._base) / _MIB
        return None
