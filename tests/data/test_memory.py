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
