"""Allocator settings that keep a long `data prepare` run's memory flat.

The pipeline's own structures are bounded (a few batches in flight, a few open
packing bins, one Parquet row group) except the dedup index. Measured on a
400k-row corpus, two allocators still made the preparing process's peak grow
with the input, about 20 bytes a row beyond the index:

- Arrow's default pool (mimalloc) keeps freed Parquet-encoding buffers for a
  while before it gives them back: the process's anonymous memory swung by
  ~30 MiB, and a longer run meets a higher swing. Arrow's system pool frees at
  once.
- glibc raises its mmap threshold after a large block is freed, so later
  blocks of that size come from the heap, and its threshold follows the
  largest block freed so far: the heap's high-water mark grew with the run.
  A fixed threshold (4 MiB) keeps it from moving. Blocks below it come from
  the heap and are reused batch after batch: a batch's arrays and Parquet's
  buffers (~0.1-2 MiB each). With glibc's initial 128 KiB threshold instead,
  each of them was a new mapping, faulted in page by page: 5 page faults a
  row, and 22 us a row of system time (8.9 s for 400k rows; 3.0 s now).
- What the heap frees in its middle stays resident until it is trimmed
  (`release_free_heap()`, malloc_trim). `HeapTrimmer` trims whenever the
  process has grown by `TRIM_SLACK` (16 MiB) since the last trim, so its peak
  is its live memory plus the slack plus one batch, however long the run.

`bounded_allocators()` switches Arrow's pool for the duration of a run.
`fix_glibc_thresholds()` is called by the process that decides and writes
once its worker processes are forked: the workers' MinHash and tokeniser
temporaries (up to tens of MiB, every batch) are faster reused from the heap,
and their memory does not grow anyway. glibc's settings are process-wide and
stay (there is no call to undo them); they only change where large blocks come
from, not what a program computes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 4 << 20  # blocks from this size up get their own mapping, unmapped when freed
TRIM_THRESHOLD = 128 << 10  # glibc's initial: free memory at the heap's top past this is returned
TRIM_SLACK = 16 << 20  # HeapTrimmer: growth in resident bytes since the last trim that triggers the next
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_applied = False
_libc = None


def fix_glibc_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds and cap its arenas (False where libc is not glibc)."""
    global _applied, _libc
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt, _ = libc.mallopt, libc.malloc_trim  # both or neither
    except (OSError, AttributeError):  # musl, macOS: no mallopt; nothing to do
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_ARENA_MAX, 2),
        )
    )
    _libc = libc if _applied else None
    return _applied


def release_free_heap() -> None:
    """Give the heap's free pages back to the system (after `fix_glibc_thresholds`; else nothing)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def resident_bytes() -> int:
    """This process's resident set size (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


class HeapTrimmer:
    """Gives the heap's free pages back whenever this process has grown by
    `slack` resident bytes since the last time (`release_free_heap`).

    A fixed period would not bound the memory: the free pages a batch leaves
    behind accumulate faster as a long run's heaps fragment (measured at 400k
    rows with a trim every 16 batches: 10 MiB between trims at the start, 30 at
    the end). Trimming on growth bounds the peak to the live memory plus
    `slack` plus one batch, at any length, and trims only as often as needed
    (trimming every batch would fault the reused pages back in: 3x the page
    faults). Calling it costs one read of /proc/self/statm.
    """

    def __init__(self, slack: int | None = None):
        self.slack = TRIM_SLACK if slack is None else slack
        self.floor = resident_bytes()
        self.trims = 0

    def __call__(self) -> bool:
        """Trim if the process grew by `slack` since the last trim; whether it trimmed."""
        if _libc is None or resident_bytes() - self.floor < self.slack:
            return False
        release_free_heap()
        self.floor = resident_bytes()
        self.trims += 1
        return True


@contextlib.contextmanager
def bounded_allocators() -> Iterator[None]:
    """Arrow's system memory pool for one run (the previous pool is restored after)."""
    import pyarrow as pa

    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)
