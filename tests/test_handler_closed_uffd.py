"""A uffd closed under a running handler (issue 9, item 7).

The handler reads a private duplicate of every uffd it serves and watches the number its
owner sees. Closing that number (the caller's uffd, or an adopted child's) is noticed: the
handler releases its ranges, closes its duplicate so the kernel releases the uffd and wakes
every faulting thread, and check()/stop() raise UffdClosedError naming the fd. Whatever
takes the closed number next (a pipe full of message-sized bytes, a /proc file that always
polls readable) is never read as messages, and nothing spins.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time

import pytest
from test_handler_support import (  # noqa: F401 - no_leaks is a fixture
    ENGINES,
    assert_zero,
    no_leaks,
    run_touch,
)
from uffdharness._native import ffi, lib

from uffdharness.abi import EventType, Feature
from uffdharness.handler import (
    FaultHandler,
    FillIndexed,
    ForkAdopted,
    Never,
    ReleaseReason,
    UffdClosedError,
)
from uffdharness.isolation import wait_or_kill
from uffdharness.memory import PAGE_SIZE

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(30)]

SEED = 0xC105
NOTICE_TIMEOUT = 3.0  # the handler checks every 50 ms; generous for a loaded machine
WAKE_TIMEOUT = 5.0
IDLE_WINDOW = 1.0
IDLE_CPU_BUDGET = 0.3  # CPU seconds the whole process may burn in IDLE_WINDOW
OCCUPANTS = ("pipe", "proc")


def bogus_messages(address: int, count: int = 10) -> bytes:
    """``count`` uffd_msg-sized records that decode as read faults at ``address``."""
    record = struct.pack("<BBHIQQI4x", int(EventType.PAGEFAULT), 0, 0, 0, 0, address, 0)
    return record * count


def occupy(number: int, occupant: str, payload: bytes) -> set[int]:
    """Put another file at the closed fd ``number``: a pipe holding ``payload``, or a /proc
    file (always readable, then EOF). Returns every fd to close afterwards."""
    if occupant == "pipe":
        read_end, write_end = os.pipe()
        os.write(write_end, payload)
        opened = {read_end, write_end}
    else:
        read_end = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC)
        opened = {read_end}
    if read_end != number:
        os.dup2(read_end, number, inheritable=False)
    return opened | {number}


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of every thread of ``pid`` (0 once it has been reaped)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(helper: int | None) -> float:
    """CPU burned by this process (and the process engine's helper) over IDLE_WINDOW,
    while the test itself only sleeps."""
    before = cpu_seconds(os.getpid()) + cpu_seconds(helper)
    time.sleep(IDLE_WINDOW)
    return cpu_seconds(os.getpid()) + cpu_seconds(helper) - before


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout}s")
        time.sleep(0.005)


def raised_by_check(handler: FaultHandler) -> BaseException | None:
    """Call check() until it raises; the exception, or None on timeout."""
    deadline = time.monotonic() + NOTICE_TIMEOUT
    while time.monotonic() < deadline:
        try:
            handler.check()
        except BaseException as exc:  # noqa: BLE001 - the test judges it
            return exc
        time.sleep(0.01)
    return None


def stop_quietly(handler: FaultHandler) -> None:
    try:
        handler.stop()
    except BaseException:  # noqa: BLE001 - the test has already judged the failure
        pass


def close_all(fds: set[int]) -> None:
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize("occupant", OCCUPANTS)
@pytest.mark.parametrize("engine", ENGINES)
def test_uffd_closed_under_running_handler(engine, occupant, uffd_factory, region_factory):
    """Pages 0-1 are served, 2-3 left asleep (Never). With one thread asleep on page 3 the
    caller closes the uffd and a pipe or /proc file takes its number: the sleeper is woken,
    no byte of the occupant is read as a message, nothing spins, and check() raises
    UffdClosedError naming the fd (stop() then does not raise it again)."""
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 4)
    uffd.register(region)
    handler = FaultHandler(uffd, FillIndexed(SEED), (region.addr, 2 * PAGE_SIZE), engine=engine)
    handler.serve((region.addr + 2 * PAGE_SIZE, 2 * PAGE_SIZE), Never())
    handler.start()
    sleeper = threading.Thread(target=region.touch, args=([3],), daemon=True)
    occupied: set[int] = set()
    try:
        run_touch(region, [0], on_hang=handler.stop)
        sleeper.start()
        wait_until(lambda: handler.stats.unresolved == 1, WAKE_TIMEOUT, "the sleeper's fault read")
        before = handler.stats
        number = uffd.fileno()
        helper = handler.worker_id if engine == "process" else None
        uffd.close()
        occupied = occupy(number, occupant, bogus_messages(region.addr + PAGE_SIZE))

        sleeper.join(WAKE_TIMEOUT)
        assert not sleeper.is_alive(), "the thread asleep in a fault was not woken"
        burned = idle_cpu(helper)
        assert burned < IDLE_CPU_BUDGET, f"{burned:.2f}s of CPU in {IDLE_WINDOW}s: spinning"
        failure = raised_by_check(handler)
        assert isinstance(failure, UffdClosedError), f"check() gave {failure!r}"
        assert failure.errno == errno.EBADF
        assert f"fd {number}" in str(failure) and "closed under" in str(failure)

        after = handler.stats
        assert after.messages == before.messages, "the occupant was read as messages"
        assert after.faults == before.faults
        assert after.released == ReleaseReason.CLOSED
        handler.stop()  # delivered by check(): not raised twice
    finally:
        stop_quietly(handler)
        sleeper.join(WAKE_TIMEOUT)
        close_all(occupied)
    assert_zero(region, [1, 3])  # unregistered by the release: ordinary faults


@pytest.mark.parametrize("engine", ENGINES)
def test_stop_right_after_close_raises(engine, uffd_factory, region_factory):
    """stop() straight after the close, before any periodic check: it still names the
    close, and the duplicate the handler held is closed (no_leaks)."""
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 2)
    uffd.register(region)
    handler = FaultHandler(uffd, FillIndexed(SEED), region, engine=engine).start()
    occupied: set[int] = set()
    try:
        run_touch(region, [0], on_hang=handler.stop)
        number = uffd.fileno()
        uffd.close()
        occupied = occupy(number, "pipe", bogus_messages(region.addr + PAGE_SIZE))
        with pytest.raises(UffdClosedError, match=f"fd {number}"):
            handler.stop()
    finally:
        stop_quietly(handler)
        close_all(occupied)
    assert handler.stats.faults.missing_read == 1
    assert handler.stats.released == ReleaseReason.CLOSED


@pytest.mark.parametrize("engine", ["native", "thread"])
def test_duplicate_closed_by_someone_else(engine, uffd_factory, region_factory):
    """Someone closes the handler's private duplicate, a number nobody was given, and a
    pipe takes it (native and thread engines; the process engine's lives in its helper).
    The handler reads nothing from the pipe, never closes it, and stops with
    UffdClosedError naming its duplicate; the caller's uffd still works afterwards."""
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 2)
    uffd.register(region)
    before = uffd_fds()
    handler = FaultHandler(uffd, FillIndexed(SEED), region, engine=engine).start()
    occupied: set[int] = set()
    try:
        (duplicate,) = uffd_fds() - before
        os.close(duplicate)
        occupied = occupy(duplicate, "pipe", bogus_messages(region.addr))
        failure = raised_by_check(handler)
        assert isinstance(failure, UffdClosedError), f"check() gave {failure!r}"
        assert f"duplicate of uffd 0 (fd {duplicate})" in str(failure)
        assert handler.stats.messages == 0 and handler.stats.faults.total == 0
        assert idle_cpu(None) < IDLE_CPU_BUDGET
        handler.stop()
        os.fstat(duplicate)  # still the pipe: the handler did not close it
    finally:
        stop_quietly(handler)
        close_all(occupied)
    with FaultHandler(uffd, FillIndexed(SEED), region, engine=engine) as second:
        run_touch(region, on_hang=second.stop)
    assert second.stats.faults.missing_read == 2


def test_start_after_close_refused(uffd_factory, region_factory):
    uffd = uffd_factory(Feature(0))
    region = region_factory("anon", 1)
    handler = FaultHandler(uffd, FillIndexed(SEED), region)
    uffd.close()
    with pytest.raises(UffdClosedError, match="closed before start"):
        handler.start()
    assert not handler.running


def uffd_fds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if "userfaultfd" in os.readlink(f"/proc/self/fd/{name}"):
                found.add(int(name))
        except OSError:
            pass  # the fd listdir itself used
    return found


@pytest.mark.parametrize("engine", ["native", "thread"])
def test_adopted_child_uffd_closed_under_handler(engine, uffd_factory, region_factory):
    """The child uffd adopted from a fork event lives in this process's fd table (native and
    thread engines; the process engine's helper holds it in its own). Closing its number
    and putting a pipe there is noticed like the caller's close: the pipe is not read, the
    handler stops with UffdClosedError naming the child's fd, and the child process,
    whose uffd is then released, finishes its touches."""
    uffd = uffd_factory(Feature.EVENT_FORK)
    region = region_factory("anon", 4)
    uffd.register(region)
    go_r, go_w = os.pipe()
    handler = FaultHandler(uffd, FillIndexed(SEED), region, engine=engine).start()
    occupied: set[int] = set()
    pid = None
    try:
        forked: list[int] = []
        forker = threading.Thread(target=lambda: forked.append(_fork_waiting_child(region, go_r)))
        forker.start()
        forker.join(WAKE_TIMEOUT)
        assert not forker.is_alive(), "fork() still waiting for its event to be read"
        pid = forked[0]
        wait_until(lambda: handler.stats.events_log, WAKE_TIMEOUT, "the fork event handled")
        (logged,) = handler.stats.events_log
        assert isinstance(logged.event, ForkAdopted) and logged.event.child_index == 1
        number = logged.event.child_fd
        before = handler.stats
        os.close(number)
        occupied = occupy(number, "pipe", bogus_messages(region.addr))
        failure = raised_by_check(handler)
        assert isinstance(failure, UffdClosedError), f"check() gave {failure!r}"
        assert f"fd {number}" in str(failure) and "child" in str(failure)
        assert handler.stats.messages == before.messages, "the pipe was read as messages"
        assert idle_cpu(None) < IDLE_CPU_BUDGET
        os.write(go_w, b"g")
        status = wait_or_kill(pid, WAKE_TIMEOUT)
        pid = None
        assert status is not None, "the child's touches never finished"
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    finally:
        stop_quietly(handler)
        if pid is not None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        close_all(occupied | {go_r, go_w})


def _fork_waiting_child(region, go_r: int) -> int:
    """Fork a child that waits for a byte on ``go_r``, then touches every page. Forked in C
    with the GIL released: os.fork() keeps it while the kernel waits for the fork event to
    be read, so the thread engine's handler could not read it."""
    pid = lib.uh_fork_wait_touch(
        ffi.cast("char *", region.addr), region.pages, region.page_size, go_r
    )
    assert pid > 0, f"fork: {-pid}"
    return pid
