"""Lifecycle and the handler's own faults: stop latency, release of faulting threads,
raising policies, several touchers and handlers at once, CPU placement, and the GIL case."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time

import pytest
from test_handler_support import (  # noqa: F401 - no_leaks is a fixture
    ENGINES,
    PY_ENGINES,
    assert_indexed,
    assert_zero,
    need,
    no_leaks,
    run_touch,
)

from uffdharness.abi import Feature, RegisterMode
from uffdharness.errors import UffdError
from uffdharness.handler import (
    Delay,
    FaultHandler,
    FillIndexed,
    Never,
    Policy,
    Readahead,
    ReleaseReason,
    Unprotect,
)
from uffdharness.isolation import wait_or_kill
from uffdharness.memory import PAGE_SIZE, allocate
from uffdharness.uffd import Userfaultfd

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(30)]

SEED = 0x11FE
STOP_BUDGET = 0.050  # the bound on stop() when idle


def start_touchers(region, orders, write=False):
    """One thread per page order; each records its native tid."""
    tids: list[int] = []

    def body(order):
        tids.append(threading.get_native_id())
        region.touch(order, write=write)

    threads = [threading.Thread(target=body, args=(order,)) for order in orders]
    for thread in threads:
        thread.start()
    return threads, tids


def join_all(threads, timeout=5.0):
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread for thread in threads if thread.is_alive()]


# --- stopping --------------------------------------------------------------------------


@pytest.mark.parametrize("engine,busy_poll", [(e, False) for e in ENGINES] + [("native", True)])
def test_stop_when_idle_is_fast(engine, busy_poll, uffd_factory, region_factory):
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 4)
    uffd.register(region)
    handler = FaultHandler(uffd, FillIndexed(SEED), region, engine=engine, busy_poll=busy_poll)
    handler.start()
    run_touch(region, on_hang=handler.stop)
    time.sleep(0.2)  # idle: asleep in poll() (or spinning)
    started = time.monotonic()
    handler.stop()
    elapsed = time.monotonic() - started
    assert elapsed < STOP_BUDGET, f"stop() took {elapsed * 1000:.1f} ms"
    assert_indexed(region, SEED)
    stats = handler.stats
    assert stats.faults.missing_read == 4
    latency = stats.latency
    assert latency.count == 4
    assert 0 < latency.min_us <= latency.median_us <= latency.p99_us <= latency.max_us


def test_options_checked(uffd_factory):
    uffd = uffd_factory(Feature(0))
    with pytest.raises(ValueError, match="engine must be one of"):
        FaultHandler(uffd, FillIndexed(1), engine="fibre")
    with pytest.raises(ValueError, match="busy_poll"):
        FaultHandler(uffd, FillIndexed(1), engine="thread", busy_poll=True)
    with pytest.raises(TypeError, match="no policy"):
        FaultHandler(uffd, None, (0x10000, PAGE_SIZE))
    with pytest.raises(ValueError, match="readahead"):
        Readahead(FillIndexed(1), 0)
    assert repr(Readahead(FillIndexed(1) | Unprotect(record=True), 8)) == (
        "Builtin(missing=indexed, wp=unprotect+record, readahead=8)"
    )


@pytest.mark.parametrize("release_on_stop", [True, False])
@pytest.mark.parametrize("engine", ENGINES)
def test_never_resolved_fault_released_at_stop(
    engine, release_on_stop, uffd_factory, region_factory
):
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 4)
    uffd.register(region)
    handler = FaultHandler(
        uffd, Never(), region, engine=engine, release_on_stop=release_on_stop
    ).start()
    threads, _ = start_touchers(region, [[1]])
    time.sleep(0.2)
    assert threads[0].is_alive(), "a never-resolved fault must keep its thread asleep"
    assert handler.stats.unresolved == 1
    started = time.monotonic()
    handler.stop()
    assert time.monotonic() - started < STOP_BUDGET * 4
    assert not join_all(threads), "the sleeping thread was not released by stop()"
    stats = handler.stats
    expected = ReleaseReason.STOP if release_on_stop else ReleaseReason.LEFT_BEHIND
    assert stats.released == expected and stats.released_ranges == 1
    assert stats.faults.missing_read == 1 and stats.pages_resolved == 0
    assert_zero(region, [1])  # retried as an ordinary anonymous fault


def test_no_release_without_left_behind_faults(uffd_factory, region_factory):
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 4)
    uffd.register(region)
    with FaultHandler(uffd, FillIndexed(SEED), region, release_on_stop=False) as handler:
        run_touch(region, [0], on_hang=handler.stop)
    assert handler.stats.released == ReleaseReason.NONE
    # Still registered: a second handler serves the next fault.
    with FaultHandler(uffd, FillIndexed(SEED), region) as second:
        run_touch(region, [1], on_hang=second.stop)
    assert second.stats.faults.missing_read == 1
    assert_indexed(region, SEED, [0, 1])


@pytest.mark.parametrize("engine", ENGINES)
def test_stop_with_faults_pending(engine, uffd_factory, region_factory):
    """Touchers keep faulting while stop() runs: it still returns promptly (the delay is
    cut short), and every toucher finishes: served, or released to an ordinary fault."""
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 64)
    uffd.register(region)
    handler = FaultHandler(uffd, Delay(FillIndexed(SEED), 2_000_000), region, engine=engine)
    handler.start()
    orders = [range(i, 64, 4) for i in range(4)]
    threads, _ = start_touchers(region, orders)
    time.sleep(0.1)
    started = time.monotonic()
    handler.stop()
    assert time.monotonic() - started < 0.5
    assert not join_all(threads), "touchers still asleep after stop()"
    stats = handler.stats
    assert stats.released == ReleaseReason.STOP
    for index in range(64):
        page = region.read(index * PAGE_SIZE, PAGE_SIZE)
        served = region.find_indexed_mismatch(SEED, index, 1) is None
        assert served or page == bytes(PAGE_SIZE), f"page {index} neither served nor zero"
    assert stats.pages_resolved >= 1


# --- a policy that raises -------------------------------------------------------------------


class RaiseOnThird(Policy):
    def __init__(self) -> None:
        self.faults = 0

    def on_fault(self, ctx) -> None:
        self.faults += 1
        if self.faults == 3:
            raise LookupError(f"no page for {ctx.address:#x}")
        ctx.apply(FillIndexed(SEED))


@pytest.mark.parametrize("engine", PY_ENGINES)
def test_raising_policy_releases_and_reraises(engine, uffd_factory, region_factory):
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 8)
    uffd.register(region)
    handler = FaultHandler(uffd, RaiseOnThird(), region, engine=engine).start()
    run_touch(region, on_hang=handler.stop)  # finishes: the third fault was released
    with pytest.raises(LookupError, match="no page for"):
        handler.stop()
    stats = handler.stats
    assert stats.policy_failures == 1
    assert stats.released == ReleaseReason.FAILURE
    assert stats.failure == "policy raised"
    assert stats.faults.missing_read == 3  # later touches are ordinary faults
    assert_indexed(region, SEED, [0, 1])
    assert_zero(region, range(2, 8))


@pytest.mark.parametrize("engine", PY_ENGINES)
def test_check_raises_while_running(engine, uffd_factory, region_factory):
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 8)
    uffd.register(region)
    handler = FaultHandler(uffd, RaiseOnThird(), region, engine=engine).start()
    handler.check()
    run_touch(region, on_hang=handler.stop)
    deadline = time.monotonic() + 2
    with pytest.raises(LookupError):
        while time.monotonic() < deadline:
            handler.check()
            time.sleep(0.01)
    handler.stop()  # already delivered by check(): not raised twice


def test_native_failure_is_raised_by_check(uffd_factory, region_factory):
    """A WP fault reaching a policy without a WP action is the native engine's own
    failure: recorded, released, raised as UffdError."""
    uffd = uffd_factory(need(Feature.PAGEFAULT_FLAG_WP))
    region = region_factory("anon", 2)
    region.fill_indexed(SEED)
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(region)
    handler = FaultHandler(uffd, FillIndexed(SEED), region).start()
    run_touch(region, write=True, on_hang=handler.stop)
    with pytest.raises(UffdError) as raised:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            handler.check()
            time.sleep(0.01)
    assert raised.value.errno == errno.EINVAL and "no action for wp" in str(raised.value)
    handler.stop()
    assert handler.stats.released == ReleaseReason.FAILURE


# --- concurrency -----------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_several_touchers_same_pages(engine, uffd_factory, region_factory):
    """Four threads fault on the same 64 pages in different orders. Every fault read either
    installs a page or finds it installed (EEXIST: woken instead), never both."""
    uffd = uffd_factory(need(Feature.THREAD_ID))
    region = region_factory("anon", 64)
    uffd.register(region)
    orders = [range(64), range(63, -1, -1), range(0, 64, 2), range(1, 64, 2)]
    with FaultHandler(uffd, FillIndexed(SEED), region, engine=engine) as handler:
        threads, tids = start_touchers(region, orders)
        assert not join_all(threads)
    stats = handler.stats
    assert_indexed(region, SEED)
    assert stats.pages_resolved == 64
    assert stats.faults.missing_read == stats.pages_resolved + stats.eexist_races
    assert stats.wakes == stats.eexist_races + stats.released_ranges  # + the stop release
    assert set(stats.thread_ids) <= set(tids)
    assert sum(stats.thread_ids.values()) == stats.faults.total
    assert stats.errors == {}


@pytest.mark.parametrize("engine", ENGINES)
def test_thread_ids_exact(engine, uffd_factory, region_factory):
    uffd = uffd_factory(need(Feature.THREAD_ID))
    region = region_factory("anon", 16)
    uffd.register(region)
    with FaultHandler(uffd, FillIndexed(SEED), region, engine=engine) as handler:
        first, first_tids = start_touchers(region, [range(0, 6)])
        assert not join_all(first)
        second, second_tids = start_touchers(region, [range(6, 16)])
        assert not join_all(second)
    assert handler.stats.thread_ids == {first_tids[0]: 6, second_tids[0]: 10}


def test_thread_ids_zero_without_feature(uffd_factory, region_factory):
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 2)
    uffd.register(region)
    with FaultHandler(uffd, FillIndexed(SEED), region) as handler:
        run_touch(region, on_hang=handler.stop)
    assert handler.stats.thread_ids == {}


def test_a_handler_per_uffd(uffd_factory, region_factory):
    """Three uffds, three engines, all at once, each counting only its own faults."""
    handlers, regions = [], []
    for index, engine in enumerate(ENGINES):
        uffd = uffd_factory(Feature(0))
        region = region_factory("anon", 8 + index)
        uffd.register(region)
        handlers.append(FaultHandler(uffd, FillIndexed(SEED + index), region, engine=engine))
        regions.append(region)
    for handler in handlers:
        handler.start()
    threads, _ = start_touchers(regions[0], [None])
    more = [threading.Thread(target=region.touch) for region in regions[1:]]
    for thread in more:
        thread.start()
    assert not join_all(threads + more)
    for handler in handlers:
        handler.stop()
    for index, (handler, region) in enumerate(zip(handlers, regions, strict=True)):
        assert_indexed(region, SEED + index)
        assert handler.stats.faults.missing_read == region.pages


@pytest.mark.parametrize("engine", ["native", "thread"])
def test_serve_while_running(engine, uffd_factory, region_factory):
    uffd = uffd_factory(Feature(0))
    first = region_factory("anon", 4)
    second = region_factory("anon", 4)
    uffd.register(first)
    uffd.register(second)
    with FaultHandler(uffd, FillIndexed(SEED), first, engine=engine) as handler:
        run_touch(first, on_hang=handler.stop)
        handler.serve(second, FillIndexed(SEED + 1))
        run_touch(second, on_hang=handler.stop)
    assert_indexed(first, SEED)
    assert_indexed(second, SEED + 1)
    assert handler.stats.faults.missing_read == 8


@pytest.mark.parametrize("engine", ENGINES)
def test_unserved_fault_becomes_ordinary(engine, uffd_factory, region_factory):
    """A fault outside every served range is unregistered page-wise and woken, so its
    thread gets an ordinary fault instead of sleeping until the uffd closes."""
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 8)
    uffd.register(region)
    with FaultHandler(
        uffd, FillIndexed(SEED), (region.addr, 4 * PAGE_SIZE), engine=engine
    ) as handler:
        run_touch(region, [6], on_hang=handler.stop)
    assert handler.stats.unserved == 1
    assert handler.stats.faults.missing_read == 1
    assert_zero(region, [6])


# --- placement ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_cpu_placement(engine, uffd_factory, region_factory):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to tell placement apart")
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 2)
    uffd.register(region)
    with FaultHandler(uffd, FillIndexed(SEED), region, engine=engine, cpu=cpus[-1]) as handler:
        run_touch(region, on_hang=handler.stop)  # the worker has pinned itself by now
        assert os.sched_getaffinity(handler.worker_id) == {cpus[-1]}
    assert os.sched_getaffinity(0) == set(cpus)  # the caller is untouched


# --- the GIL case ------------------------------------------------------------------------


def _gil_child(engine: str) -> int:
    """In a forked child: touch registered memory with ctypes.string_at, whose foreign
    function is declared with PYFUNCTYPE, so the page faults arrive while this thread holds
    the GIL. Exit status 0 when the content arrived intact."""
    uffd = Userfaultfd.open()
    source = allocate("anon", 8)
    region = allocate("anon", 8)
    source.fill_indexed(SEED)
    expected = source.read()
    uffd.register(region)
    from uffdharness.handler import Copy

    handler = FaultHandler(uffd, Copy(source), region, engine=engine).start()
    data = ctypes.string_at(region.addr, region.length)
    handler.stop()
    return 0 if data == expected else 3


@pytest.mark.parametrize("engine,served", [("native", True), ("process", True), ("thread", False)])
def test_gil_case(engine, served):
    """The faulting thread holds the GIL. native and process serve it; the thread engine
    cannot run and deadlocks (the GIL trap), which this asserts as a hang, in a child
    process killed on timeout so no mistake can hang the suite."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            code = _gil_child(engine)
        finally:
            os._exit(code)
    status = wait_or_kill(pid, 5.0 if served else 1.5)
    if served:
        assert status is not None, f"{engine}: the GIL holder was never served (killed)"
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    else:
        assert status is None, "the thread engine was expected to deadlock here"
