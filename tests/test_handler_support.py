"""Shared pieces of the test_handler_* modules: leak checks, memory-kind setup, touchers.

Collected by pytest like any test_ module, but holds no tests; the handler test modules
import the fixture and helpers from here.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import psutil
import pytest

from uffdharness import abi
from uffdharness.abi import Feature
from uffdharness.memory import MemoryKind, Region
from uffdharness.uffd import probe_api

SMALL_PAGES = 16
HUGE_PAGES = 4
HUGE_POOL = 2 * HUGE_PAGES  # the most a hugetlb test maps at once
TOUCH_TIMEOUT = 5.0


def kinds(*names: str) -> list:
    """Parameters for memory kinds; hugetlb ones reserve their own pool for the test (and
    skip with the reason when the kernel cannot grant it), so no reservation outlives them."""
    return [
        pytest.param(name, marks=pytest.mark.requires_hugepages(HUGE_POOL))
        if MemoryKind(name).is_hugetlb
        else name
        for name in names
    ]


ENGINES = ("native", "thread", "process")
PY_ENGINES = ("thread", "process")
SMALL_KINDS = ("anon", "shmem", "memfd")
COPY_KINDS = kinds("anon", "shmem", "memfd", "hugetlb")
FILE_KINDS = kinds("shmem", "memfd", "hugetlb")  # page cache behind the mapping


def _snapshot() -> tuple[set[str], int, int, set[int]]:
    fds = set(os.listdir("/proc/self/fd"))
    tasks = len(os.listdir("/proc/self/task"))
    children = {child.pid for child in psutil.Process().children(recursive=True)}
    return fds, threading.active_count(), tasks, children


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves an fd, a Python thread, a native thread or a child
    process behind (the native engine's pthread and the process helper included)."""
    gc.collect()
    fds, threads, tasks, children = _snapshot()
    yield
    deadline = time.monotonic() + 2
    while True:
        gc.collect()
        now = _snapshot()
        if now == (fds, threads, tasks, children) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    leaked_fds = {fd: _target(fd) for fd in now[0] - fds}
    assert not leaked_fds, f"leaked fds: {leaked_fds}"
    assert now[1] == threads, f"Python threads {threads} -> {now[1]}"
    assert now[2] == tasks, f"native threads {tasks} -> {now[2]}"
    assert now[3] <= children, f"child processes left: {now[3] - children}"


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def need(features: Feature) -> Feature:
    missing = abi.missing_features(features, probe_api().features)
    if missing:
        pytest.skip(f"kernel lacks {missing!r}")
    return features


def missing_features(kind: str) -> Feature:
    kind_ = MemoryKind(kind)
    if kind_.is_hugetlb:
        return Feature.MISSING_HUGETLBFS
    return Feature.MISSING_SHMEM if kind_.is_shmem else Feature(0)


def wp_features(kind: str) -> Feature:
    if kind == "anon":
        return Feature.PAGEFAULT_FLAG_WP
    return Feature.PAGEFAULT_FLAG_WP | Feature.WP_HUGETLBFS_SHMEM


def minor_features(kind: str) -> Feature:
    return Feature.MINOR_HUGETLBFS if MemoryKind(kind).is_hugetlb else Feature.MINOR_SHMEM


def pages_for(kind: str) -> int:
    return HUGE_PAGES if MemoryKind(kind).is_hugetlb else SMALL_PAGES


def run_touch(
    region: Region,
    pages: None | int | Iterable[int] = None,
    *,
    write: bool = False,
    timeout: float = TOUCH_TIMEOUT,
    on_hang: Callable[[], object] | None = None,
) -> None:
    """Touch from another thread (GIL released) and fail instead of hanging: on timeout
    ``on_hang`` (usually handler.stop) releases the sleeping thread before the failure."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            region.touch(pages, write=write)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    toucher = threading.Thread(target=body, name="toucher")
    toucher.start()
    toucher.join(timeout)
    if toucher.is_alive():
        if on_hang is not None:
            try:
                on_hang()
            except BaseException:  # noqa: BLE001 - the hang is the failure to report
                pass
        toucher.join(timeout)
        pytest.fail(f"touching {region!r} still sleeping after {timeout}s")
    if errors:
        raise errors[0]


def assert_indexed(region: Region, seed: int, pages: Iterable[int] | None = None) -> None:
    """Every page holds Region.fill_indexed(seed) content, checked page by page."""
    for index in range(region.pages) if pages is None else pages:
        at = region.find_indexed_mismatch(seed, index, 1)
        assert at is None, f"page {index} differs at offset {at:#x}"


def assert_pattern(region: Region, pattern: bytes) -> None:
    """Every page holds its part of ``pattern`` repeated from the region start."""
    for index in range(region.pages):
        start = index * region.page_size
        phase = start % len(pattern)
        at = region.find_mismatch(pattern[phase:] + pattern[:phase], start, region.page_size)
        assert at is None, f"page {index} differs at offset {at:#x}"


def assert_zero(region: Region, pages: Iterable[int] | None = None) -> None:
    for index in range(region.pages) if pages is None else pages:
        at = region.find_mismatch(b"\0", index * region.page_size, region.page_size)
        assert at is None, f"page {index} not zero at offset {at:#x}"
