"""twostream.allocator: with glibc's thresholds raised, a large buffer allocated and freed again and again is reused
instead of faulting in fresh pages every time (the cost that made a third of a CPU training step system time)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = """
import resource, sys
import numpy as np
from twostream.allocator import tune_allocator
tuned = tune_allocator() if sys.argv[1] == "1" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    a = np.ones(48 << 20, dtype=np.uint8)  # 48 MB: above glibc's largest default mmap threshold (32 MB)
    del a
print(int(tuned), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_large_buffers_are_reused_after_tuning():
    def faults(tune: str) -> tuple[int, int]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", CODE, tune], capture_output=True, text=True, env=env, check=True)
        tuned, count = map(int, out.stdout.split())
        return tuned, count

    tuned, with_tuning = faults("1")
    if not tuned:
        pytest.skip("not glibc (no mallopt)")
    _, without = faults("0")
    # every round faults the buffer in again (in 4 KB or transparent huge pages), against once and then reuse
    assert without > 8 * max(with_tuning, 1), (without, with_tuning)


def test_users_own_settings_win(monkeypatch):
    from twostream.allocator import tune_allocator

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert tune_allocator() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("TWOSTREAM_MALLOC_TUNING", "0")
    assert tune_allocator() is False
