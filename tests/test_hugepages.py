"""HugepagePool against the real hugetlb pool: reserve, verify, restore exactly."""

from __future__ import annotations

import errno
import mmap
import os
import signal
import subprocess
import sys
import threading

import pytest

from uffdharness import hugepages
from uffdharness.hugepages import HugepageError, HugepagePool

SIZE_KB = 2048
NOBODY = 65534
GRANTABLE = 4
MAP_HUGETLB = getattr(mmap, "MAP_HUGETLB", 0x40000)


@pytest.fixture
def pool_counts() -> hugepages.HugepageCounts:
    """The 2 MiB pool's counters before the test; fails if the test leaks pages. The test
    holds the harness's pool lock throughout, so a `uffdharness run` beside it waits
    instead of changing the pool under the test's exact assertions."""
    if SIZE_KB not in hugepages.sizes():
        pytest.skip(f"kernel offers no {SIZE_KB}kB hugepages")
    with hugepages.pool_frozen():
        before = hugepages.counts(SIZE_KB)
        yield before
        after = hugepages.counts(SIZE_KB)
    assert (after.nr, after.surplus) == (before.nr, before.surplus), "hugepage pool leaked"


@pytest.fixture(scope="module")
def grantable() -> None:
    """Skip when the kernel cannot grant a few 2 MiB pages right now (memory too fragmented
    or too full); the tests below then ask for at most this many."""
    if os.geteuid() != 0:
        pytest.skip("needs root: writes /sys/kernel/mm/hugepages/*/nr_hugepages")
    try:
        with HugepagePool(GRANTABLE, SIZE_KB):
            pass
    except HugepageError as error:
        if error.errno == errno.ENOMEM:
            pytest.skip(f"kernel cannot grant {GRANTABLE} hugepages now: {error.strerror}")
        raise


def run_as_nobody(child: object) -> tuple[int, str]:
    """Fork, drop to uid/gid 65534 in the child, run ``child() -> str``; (status, text)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            text = child()  # type: ignore[operator]
        except BaseException as error:  # noqa: BLE001 - report anything to the parent
            text, code = f"{type(error).__name__}: {error}", 1
        os.write(write_end, text.encode())
        os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


def test_sizes_and_default() -> None:
    sizes = hugepages.sizes()
    default = hugepages.default_size_kb()
    if default is None:
        assert sizes == []
    else:
        assert default in sizes


def test_counts_agree_with_sysfs(pool_counts: hugepages.HugepageCounts) -> None:
    base = f"/sys/kernel/mm/hugepages/hugepages-{SIZE_KB}kB"
    with open(f"{base}/nr_hugepages") as nr:
        assert int(nr.read()) == pool_counts.nr
    assert hugepages.free_pages(SIZE_KB) == pool_counts.free
    assert hugepages.available(SIZE_KB) == max(pool_counts.free - pool_counts.resv, 0)


def test_unknown_size_is_enoent() -> None:
    with pytest.raises(HugepageError) as raised:
        hugepages.counts(3)
    assert raised.value.errno == errno.ENOENT
    with pytest.raises(HugepageError):
        HugepagePool(1, size_kb=3).__enter__()


def test_negative_count_rejected() -> None:
    with pytest.raises(ValueError):
        HugepagePool(-1)


@pytest.mark.usefixtures("grantable")
def test_pool_reserves_and_restores(pool_counts: hugepages.HugepageCounts) -> None:
    with HugepagePool(2, SIZE_KB) as pool:
        assert pool.active
        inside = hugepages.counts(SIZE_KB)
        assert inside.persistent == pool_counts.persistent + 2
        assert inside.free >= pool_counts.free + 2
        assert pool.persistent_before == pool_counts.persistent
        with pytest.raises(RuntimeError):
            pool.__enter__()  # one object, one reservation
    assert hugepages.counts(SIZE_KB).nr == pool_counts.nr
    pool.release()  # idempotent
    assert hugepages.counts(SIZE_KB).nr == pool_counts.nr


@pytest.mark.usefixtures("grantable")
def test_nested_pools_add_up(pool_counts: hugepages.HugepageCounts) -> None:
    with HugepagePool(1, SIZE_KB):
        with HugepagePool(2, SIZE_KB):
            assert hugepages.counts(SIZE_KB).persistent == pool_counts.persistent + 3
        assert hugepages.counts(SIZE_KB).persistent == pool_counts.persistent + 1
    assert hugepages.counts(SIZE_KB).nr == pool_counts.nr


@pytest.mark.usefixtures("grantable")
def test_overlapping_pools_exit_out_of_order(pool_counts: hugepages.HugepageCounts) -> None:
    first = HugepagePool(1, SIZE_KB).__enter__()
    second = HugepagePool(2, SIZE_KB).__enter__()
    first.release()
    assert hugepages.counts(SIZE_KB).persistent == pool_counts.persistent + 2
    second.release()
    assert hugepages.counts(SIZE_KB).nr == pool_counts.nr


@pytest.mark.usefixtures("grantable")
def test_pools_from_threads(pool_counts: hugepages.HugepageCounts) -> None:
    errors: list[BaseException] = []

    def reserve() -> None:
        try:
            with HugepagePool(1, SIZE_KB):
                pass
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=reserve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors and all(getattr(e, "errno", None) == errno.ENOMEM for e in errors):
        pytest.skip(f"kernel cannot grant hugepages right now: {errors[0]}")
    assert not errors
    assert hugepages.counts(SIZE_KB).nr == pool_counts.nr


@pytest.mark.usefixtures("grantable")
@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_restores_after_exception(
    pool_counts: hugepages.HugepageCounts, exception: type[BaseException]
) -> None:
    pool = HugepagePool(1, SIZE_KB)
    with pytest.raises(exception):
        with pool:
            assert hugepages.counts(SIZE_KB).persistent == pool_counts.persistent + 1
            raise exception("inside the with-block")
    assert hugepages.counts(SIZE_KB).nr == pool_counts.nr
    assert not pool.active


@pytest.mark.usefixtures("grantable")
def test_pages_in_use_at_exit_become_surplus(pool_counts: hugepages.HugepageCounts) -> None:
    if pool_counts.free:
        pytest.skip(
            f"{pool_counts.free} free hugepages of another reservation: lowering the pool "
            "frees one of those, so the mapped page never turns surplus"
        )
    with HugepagePool(1, SIZE_KB):
        mapping = mmap.mmap(
            -1, SIZE_KB * 1024, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB
        )
        mapping[0:1] = b"x"  # fault the hugepage in (plain memory, no uffd)
    try:
        # Lowering nr_hugepages under a mapped page leaves it as surplus...
        after_exit = hugepages.counts(SIZE_KB)
        assert after_exit.persistent == pool_counts.persistent
        assert after_exit.surplus == pool_counts.surplus + 1
    finally:
        mapping.close()
    # ...and the kernel frees it when the mapping goes.
    assert hugepages.counts(SIZE_KB).nr == pool_counts.nr


@pytest.mark.usefixtures("grantable")
def test_forked_child_does_not_release(pool_counts: hugepages.HugepageCounts) -> None:
    with HugepagePool(1, SIZE_KB) as pool:
        pid = os.fork()
        if pid == 0:
            pool.release()  # the child inherited the object but not the ownership
            os._exit(0)
        os.waitpid(pid, 0)
        assert hugepages.counts(SIZE_KB).persistent == pool_counts.persistent + 1
    assert hugepages.counts(SIZE_KB).nr == pool_counts.nr


@pytest.mark.usefixtures("grantable")
def test_shortfall_restores_and_reports(pool_counts: hugepages.HugepageCounts) -> None:
    # set_max_huge_pages() stops allocating when a signal is pending and the write still
    # succeeds: a real short grant without exhausting memory. A helper thread keeps
    # signalling the main thread while it sits in write(2) (which releases the GIL).
    asked = 1000  # at most 2 GiB, for a moment
    signals_seen = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: signals_seen.set())
    main_thread = threading.main_thread().ident
    assert main_thread is not None
    stop = threading.Event()

    def pester() -> None:
        while not stop.wait(0.0001):
            signal.pthread_kill(main_thread, signal.SIGUSR1)

    pesterer = threading.Thread(target=pester)
    pesterer.start()
    errors: list[HugepageError] = []
    try:
        assert signals_seen.wait(5)
        for _attempt in range(5):  # the kernel may finish between two signals
            try:
                with HugepagePool(asked, SIZE_KB):
                    pass
            except HugepageError as error:
                errors.append(error)
                break
    finally:
        stop.set()
        pesterer.join()
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    assert hugepages.counts(SIZE_KB).nr == pool_counts.nr
    if not errors:
        pytest.skip(f"kernel allocated {asked} hugepages between two signals, 5 times")
    assert errors[0].errno == errno.ENOMEM
    assert f"asked for {asked} more {SIZE_KB}kB hugepages, kernel granted" in str(errors[0])


def test_non_root_gets_eacces(pool_counts: hugepages.HugepageCounts) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to setuid() to nobody")

    def child() -> str:
        try:
            with HugepagePool(1, SIZE_KB):
                return "entered without root"
        except HugepageError as error:
            return f"{error.errno} {error.strerror}"

    status, text = run_as_nobody(child)
    assert status == 0, text
    assert text.startswith(f"{errno.EACCES} need root to write "), text
    assert text.endswith(": EACCES"), text


CHURNER = """
import sys, time
from uffdharness.hugepages import HugepagePool
deadline = time.monotonic() + float(sys.argv[1])
first = True
while time.monotonic() < deadline:
    with HugepagePool(1, {size_kb}):
        if first:
            print("churning", flush=True)
            first = False
"""


@pytest.mark.usefixtures("grantable")
@pytest.mark.timeout(60)
def test_exact_pool_sizes_hold_while_another_harness_process_churns() -> None:
    """Another harness process keeps reserving and releasing one page (as a `uffdharness
    run` beside the test suite does); inside pool_frozen() it waits, so the sizes this
    process sees are exactly its own doing."""
    churner = subprocess.Popen(
        [sys.executable, "-c", CHURNER.format(size_kb=SIZE_KB), "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert churner.stdout is not None
        assert churner.stdout.readline().strip() == "churning"
        with hugepages.pool_frozen():
            before = hugepages.counts(SIZE_KB).persistent
            for _ in range(200):
                with HugepagePool(1, SIZE_KB):
                    assert hugepages.counts(SIZE_KB).persistent == before + 1
                assert hugepages.counts(SIZE_KB).persistent == before
    finally:
        assert churner.wait(timeout=30) == 0  # it stops by itself: never killed mid-reservation


HOLDER = """
import time
from uffdharness.hugepages import HugepagePool
with HugepagePool(2, {size_kb}):
    print("holding", flush=True)
    time.sleep(60)
"""


@pytest.mark.usefixtures("grantable")
@pytest.mark.timeout(60)
def test_pages_of_a_killed_owner_are_given_back_by_the_next_user() -> None:
    """SIGKILL runs no finally: the reservation's ledger entry outlives its owner, and the
    next pool user (here reclaim_orphans) gives its pages back. A live owner's are kept."""
    before = hugepages.counts(SIZE_KB).persistent
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(size_kb=SIZE_KB)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        assert hugepages.reclaim_orphans() == 0  # alive: its share stays
        assert hugepages.counts(SIZE_KB).persistent == before + 2
    finally:
        holder.kill()
        holder.wait()
    assert hugepages.counts(SIZE_KB).persistent == before + 2  # leaked by the kill
    assert hugepages.reclaim_orphans() == 2
    assert hugepages.counts(SIZE_KB).persistent == before


def test_signals_deferred_until_block_ends() -> None:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT has a non-default handler in this test process")
    with pytest.raises(KeyboardInterrupt):
        with hugepages.signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            reached_end = True
    assert reached_end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
