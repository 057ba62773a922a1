"""Non-cooperative events through every engine: fork (the child's uffd adopted and
served), remap (the range follows), remove and unmap (pages and ranges forgotten), and
the EAGAIN an ioctl gets while an event is pending (mmap_changing)."""

from __future__ import annotations

import os
import struct
import threading
import time

import pytest
from test_handler_support import (  # noqa: F401 - no_leaks is a fixture
    ENGINES,
    assert_indexed,
    kinds,
    missing_features,
    need,
    no_leaks,
    pages_for,
    run_touch,
)

from uffdharness import _native
from uffdharness import syscalls as sc
from uffdharness.abi import Feature
from uffdharness.events import RemapEvent, RemoveEvent, UnmapEvent
from uffdharness.handler import (
    Delay,
    FaultHandler,
    FillIndexed,
    ForkAdopted,
    LoggedEvent,
    Readahead,
)
from uffdharness.memory import PAGE_SIZE

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(30)]

SEED = 0xE7E7
CALL_TIMEOUT = 5.0


def in_thread(fn, *args):
    """Run a call that blocks until the handler reads an event; fail instead of hanging."""
    result: list = []
    errors: list = []

    def body():
        try:
            result.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    worker = threading.Thread(target=body)
    worker.start()
    worker.join(CALL_TIMEOUT)
    assert not worker.is_alive(), f"{fn.__name__} still blocked: the event was never read"
    if errors:
        raise errors[0]
    return result[0] if result else None


@pytest.mark.parametrize("kind", kinds("anon", "shmem", "hugetlb"))
@pytest.mark.parametrize("engine", ENGINES)
def test_fork_child_served(engine, kind, uffd_factory, region_factory):
    """fork() with EVENT_FORK: the handler adopts the child's uffd and serves its faults.
    The child is forked from C (no GIL held while fork() waits for the event to be read,
    no Python in the child) and reports the first wrong word of its copy, or -1."""
    pages = pages_for(kind)
    parent_pages = pages // 4
    uffd = uffd_factory(need(Feature.EVENT_FORK | missing_features(kind)))
    region = region_factory(kind, pages)
    uffd.register(region)
    read_end, write_end = os.pipe()
    try:
        handler = FaultHandler(uffd, FillIndexed(SEED), region, engine=engine)
        with handler:
            run_touch(region, range(parent_pages), on_hang=handler.stop)
            pid = in_thread(
                _native.lib.uh_fork_toucher,
                _ptr(region.addr),
                pages,
                region.page_size,
                SEED,
                write_end,
            )
            assert pid > 0, os.strerror(-pid)
            _, status = os.waitpid(pid, 0)
            (first_bad,) = struct.unpack("q", os.read(read_end, 8))
    finally:
        os.close(read_end)
        os.close(write_end)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert first_bad == -1, f"child saw wrong content at offset {first_bad:#x}"
    assert_indexed(region, SEED, range(parent_pages))
    stats = handler.stats
    assert stats.events["fork"] == 1 and stats.uffds_adopted == 1
    (logged,) = stats.events_log
    assert logged.uffd == 0
    assert isinstance(logged.event, ForkAdopted)
    assert logged.event.child_fd >= 0 and logged.event.child_index == 1
    # The parent's pages were copied into the child by fork (private) or are shared (shmem,
    # hugetlb): only the untouched ones fault, on the child's uffd.
    assert stats.faults.missing_read == pages
    assert stats.pages_resolved == pages
    assert stats.errors == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_os_fork_child_served(engine, uffd_factory, region_factory):
    """os.fork() holds the GIL while fork() waits for the event to be read: the thread
    engine reads it through its at-fork bridge; native and process need nothing special.
    The child is Python and touches through the GIL-releasing region helpers."""
    uffd = uffd_factory(Feature.EVENT_FORK)
    region = region_factory("anon", 8)
    uffd.register(region)
    handler = FaultHandler(uffd, FillIndexed(SEED), region, engine=engine)
    with handler:
        run_touch(region, [0, 1], on_hang=handler.stop)

        def fork_and_check() -> int:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                code = 2
                try:
                    region.touch()
                    code = 0 if region.find_indexed_mismatch(SEED) is None else 1
                finally:
                    os._exit(code)
            return os.waitpid(pid, 0)[1]

        status = in_thread(fork_and_check)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    stats = handler.stats
    assert stats.events["fork"] == 1 and stats.uffds_adopted == 1
    assert stats.faults.missing_read == 8 and stats.errors == {}


def test_process_engine_takes_over_faults_queued_before_it_starts(uffd_factory, region_factory):
    """With EVENT_FORK, forking the helper reads the uffd from a C thread: a fault queued
    before start() is read there and handed to the helper, not lost."""
    uffd = uffd_factory(Feature.EVENT_FORK)
    region = region_factory("anon", 2)
    uffd.register(region)
    toucher = threading.Thread(target=region.touch, args=(0,))
    toucher.start()
    time.sleep(0.1)  # the toucher now sleeps on a fault nobody has read
    handler = FaultHandler(uffd, FillIndexed(SEED), region, engine="process")
    with handler:
        toucher.join(CALL_TIMEOUT)
        assert not toucher.is_alive(), "the fault queued before start() was lost"
    assert_indexed(region, SEED, [0])
    stats = handler.stats
    assert stats.faults.missing_read == 1 and stats.events["fork"] == 0


@pytest.mark.parametrize("kind", ["anon", "shmem"])
@pytest.mark.parametrize("engine", ENGINES)
def test_remap_followed(engine, kind, uffd_factory, region_factory):
    uffd = uffd_factory(need(Feature.EVENT_REMAP | missing_features(kind)))
    region = region_factory(kind, 8)
    space = region_factory("anon", 16)  # address space to move into
    uffd.register(region)
    old, length = region.addr, region.length
    destination = space.addr + 4 * PAGE_SIZE
    handler = FaultHandler(uffd, FillIndexed(SEED), region, engine=engine)
    with handler:
        run_touch(region, [0, 1], on_hang=handler.stop)
        in_thread(region.mremap, length, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, destination)
        assert region.addr == destination
        run_touch(region, on_hang=handler.stop)
        if engine != "process":
            assert handler.served_ranges() == [(destination, length, 0)]
    stats = handler.stats
    assert_indexed(region, SEED)  # the moved pages kept their source offsets
    assert stats.events_log == (LoggedEvent(0, RemapEvent(old, destination, length)),)
    assert stats.events["remap"] == 1
    assert stats.faults.missing_read == 8 and stats.pages_resolved == 8
    assert stats.errors == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_remove_forgets_pages(engine, uffd_factory, region_factory):
    """After MADV_DONTNEED (EVENT_REMOVE) the readahead window no longer counts the dropped
    pages as present: one fault brings all four back."""
    uffd = uffd_factory(Feature.EVENT_REMOVE)
    region = region_factory("anon", 8)
    uffd.register(region)
    handler = FaultHandler(uffd, Readahead(FillIndexed(SEED), 4), region, engine=engine)
    with handler:
        run_touch(region, [0], on_hang=handler.stop)
        in_thread(region.madvise, sc.MADV_DONTNEED, 0, 4 * PAGE_SIZE)
        run_touch(region, [0], on_hang=handler.stop)
        run_touch(region, range(4), on_hang=handler.stop)
    stats = handler.stats
    assert_indexed(region, SEED, range(4))
    expected = RemoveEvent(region.addr, region.addr + 4 * PAGE_SIZE)
    assert stats.events_log == (LoggedEvent(0, expected),)
    assert stats.faults.missing_read == 2
    assert stats.pages_resolved == 8
    assert stats.readahead_skipped == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_unmap_forgets_range(engine, uffd_factory, region_factory):
    uffd = uffd_factory(Feature.EVENT_UNMAP)
    region = region_factory("anon", 8)
    uffd.register(region)
    cut = region.addr + 4 * PAGE_SIZE
    handler = FaultHandler(uffd, FillIndexed(SEED), region, engine=engine)
    with handler:
        in_thread(sc.munmap, cut, 4 * PAGE_SIZE)
        run_touch(region, range(4), on_hang=handler.stop)
        if engine != "process":
            assert handler.served_ranges() == [(region.addr, 4 * PAGE_SIZE, 0)]
    stats = handler.stats
    assert_indexed(region, SEED, range(4))
    assert stats.events_log == (LoggedEvent(0, UnmapEvent(cut, cut + 4 * PAGE_SIZE)),)
    assert stats.faults.missing_read == 4
    assert stats.released_ranges == 1  # only the part still mapped was unregistered


@pytest.mark.parametrize("engine", ENGINES)
def test_eagain_while_event_pending(engine, uffd_factory, region_factory):
    """A COPY issued while a REMOVE event is queued fails EAGAIN (mmap_changing); the
    handler reads the event, which lets madvise() finish, and retries."""
    uffd = uffd_factory(Feature.EVENT_REMOVE)
    region = region_factory("anon", 8)
    uffd.register(region)
    handler = FaultHandler(uffd, Delay(FillIndexed(SEED), 300_000), region, engine=engine)
    with handler:
        toucher = threading.Thread(target=region.touch, args=(0,))
        toucher.start()
        time.sleep(0.05)  # the fault is read; the handler waits out its delay
        in_thread(region.madvise, sc.MADV_DONTNEED, 7 * PAGE_SIZE, PAGE_SIZE)
        toucher.join(CALL_TIMEOUT)
        assert not toucher.is_alive()
    stats = handler.stats
    assert_indexed(region, SEED, [0])
    assert stats.eagain_retries >= 1
    assert stats.events["remove"] == 1
    assert stats.faults.missing_read == 1 and stats.pages_resolved == 1
    assert stats.errors == {}


def _ptr(address: int):
    return _native.ffi.cast("char *", address)
