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
  blocks of that size (token arrays of a batch, ~0.2-2 MiB) come from the heap,
  whose holes are not returned. A fixed threshold keeps them in their own
  mappings, unmapped when freed; a low trim threshold returns the heap's top.

`bounded_allocators()` switches Arrow's pool for the duration of a run.
`fix_glibc_thresholds()` is called by the process that decides and writes
once its worker processes are forked: the workers' MinHash and tokeniser
temporaries (up to tens of MiB, every batch) are faster reused from the heap,
and their memory does not grow anyway. glibc's settings are process-wide and
stay (there is no call to undo them); they only change where large blocks come
from, not what a program computes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import contextlib
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
LARGE_BLOCK = 128 * 1024  # glibc's initial mmap threshold, kept fixed
_applied = False


def fix_glibc_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds and cap its arenas (False where libc is not glibc)."""
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt; nothing to do
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in
                   ((M_MMAP_THRESHOLD, LARGE_BLOCK), (M_TRIM_THRESHOLD, LARGE_BLOCK), (M_ARENA_MAX, 2)))
    return _applied


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
