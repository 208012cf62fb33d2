"""The allocator settings `data prepare` runs under (data.memory)."""

import platform

import pyarrow as pa
import pytest

from data import memory


def test_arrow_uses_the_system_pool_during_a_run_and_gets_its_own_back():
    before = pa.default_memory_pool().backend_name
    with memory.bounded_allocators():
        assert pa.default_memory_pool().backend_name == "system"
        assert pa.array(list(range(100_000)), type=pa.int32()).nbytes == 400_000
    assert pa.default_memory_pool().backend_name == before


def test_the_pool_is_restored_when_the_run_fails():
    before = pa.default_memory_pool().backend_name
    with pytest.raises(RuntimeError, match="boom"), memory.bounded_allocators():
        raise RuntimeError("boom")
    assert pa.default_memory_pool().backend_name == before


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_thresholds_are_fixed():
    assert memory.fix_glibc_thresholds() is True
    assert memory._applied is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_free_heap_pages_are_given_back(tmp_path):
    """Blocks below the fixed mmap threshold come from the heap; once freed,
    release_free_heap returns their pages (the resident size falls back)."""
    import subprocess
    import sys

    script = (
        "import ctypes, sys\n"
        "from data import memory\n"
        "assert memory.fix_glibc_thresholds()\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "before = rss()\n"
        # 64 MiB in 1 MiB heap blocks, each followed by a live one (too large to come from a free
        # list: it comes after its block): freed, the 1 MiB blocks are holes
        # in the middle of the heap, which cannot shrink from its end
        "blocks = [(libc.malloc(1 << 20), libc.malloc(300_000)) for _ in range(64)]\n"
        "for b, _ in blocks: ctypes.memset(b, 1, 1 << 20)\n"
        "for b, _ in blocks: libc.free(b)\n"
        "held = rss() - before\n"
        "memory.release_free_heap()\n"
        "print(held >> 20, (rss() - before) >> 20)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
    )
    held, after = map(int, out.stdout.split())
    assert held >= 60 and after <= 8, out.stdout


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_heap_is_trimmed_when_the_process_has_grown_by_the_slack():
    """Free pages are kept while they are fewer than the slack (they are reused
    by the next batch), and given back once the process has grown past it."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import ctypes\n"
        "from data import memory\n"
        "assert memory.fix_glibc_thresholds()\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "def holes(mib):\n"  # 1 MiB heap blocks, each pinned by a live block after it, then freed
        "    blocks = [(libc.malloc(1 << 20), libc.malloc(300_000)) for _ in range(mib)]\n"
        "    for b, _ in blocks: ctypes.memset(b, 1, 1 << 20)\n"
        "    for b, _ in blocks: libc.free(b)\n"
        "trim = memory.HeapTrimmer(slack=48 << 20)\n"
        "holes(16)\n"
        "small = trim(), memory.resident_bytes() - trim.floor\n"
        "holes(48)\n"
        "before = memory.resident_bytes()\n"
        "large = trim()\n"
        "print(small[0], small[1] >> 20, large, trim.trims, (before - memory.resident_bytes()) >> 20)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    small_trimmed, small_held, large_trimmed, trims, given_back = out.stdout.split()
    assert small_trimmed == "False" and int(small_held) >= 12, out.stdout  # kept: below the slack
    assert large_trimmed == "True" and trims == "1" and int(given_back) >= 40, (
        out.stdout
    )  # past it: the holes
