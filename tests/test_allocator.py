"""twostream.allocator: with glibc's thresholds raised, a large buffer allocated and freed again and again is reused
instead of faulting in fresh pages every time (the cost that made a third of a CPU training step system time)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = """
import ctypes, sys
import numpy as np
from twostream.allocator import tune_allocator

class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
tuned = tune_allocator() if sys.argv[1] == "1" else False
a = np.ones(48 << 20, dtype=np.uint8)  # 48 MB: above glibc's largest default mmap threshold (32 MB)
mapped = libc.mallinfo2().hblkhd  # bytes held in separate mmap regions (returned to the system on free)
del a
b = np.ones(48 << 20, dtype=np.uint8)
print(int(tuned), mapped, libc.mallinfo2().arena)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_large_buffers_come_from_the_heap_after_tuning():
    def run(tune: str) -> tuple[int, int, int]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", CODE, tune], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            pytest.skip(f"no glibc mallinfo2 here: {out.stderr.strip().splitlines()[-1]}")
        tuned, mapped, arena = map(int, out.stdout.split())
        return tuned, mapped, arena

    tuned, mapped, arena = run("1")
    if not tuned:
        pytest.skip("not glibc (no mallopt)")
    assert mapped < (1 << 20) and arena >= 48 << 20  # on the heap, where the freed block is reused
    _, mapped, _ = run("0")
    assert mapped >= 48 << 20  # glibc's default: its own mmap, unmapped on free and faulted in again next time


def test_users_own_settings_win(monkeypatch):
    from twostream.allocator import tune_allocator

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert tune_allocator() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("TWOSTREAM_MALLOC_TUNING", "0")
    assert tune_allocator() is False
