"""The kernel's uffd-stress design on the harness's fault-handler engines
(``uffdharness stress`` and the ``stress`` scenario).

Two areas of one memory kind take turns. Each bounce registers one (``dst``) and, at once:
locker threads (C) lock the mutex at the start of random or consecutive pages and
increment the counter beside it, faulting the pages in; the handlers (the chosen engine,
one per thread) resolve those faults with UFFDIO_COPY from the other area (``src``);
background copier threads (C) UFFDIO_COPY every page too, racing the faults (EEXIST, then
UFFDIO_WAKE); a churn thread splits, moves, unmaps and zaps the anonymous VMAs next to
both areas (the per-VMA-lock races of 6.4-6.9). With ``wp`` the area is registered
MISSING|WP, the copiers install pages with UFFDIO_COPY_MODE_WP and write-protect their
slice half way, and the handlers also resolve WP faults. Once the copiers are done, src
is dropped and the lockers stop; dst is unregistered and every counter checked against
what the lockers counted. Then the areas swap.

Per bounce, as uffd-stress varies them by bounce number: the lockers walk random pages or
in sequence, start on their own slices or race on the same pages, and the native
handlers sleep in poll() or in a blocking read() (other engines always poll).

A lost or doubled increment, an errno other than EEXIST/EAGAIN, or a thread still running
at the bounce's deadline is a failure naming the page and the bounce.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

from . import syscalls as sc
from . import system
from ._native import ffi, lib
from .abi import Feature, RegisterMode, WriteProtectMode, missing_features_reason
from .errors import UffdError
from .handler import Copy, FaultHandler, GoneOk, Unprotect
from .handler.handler import EngineName
from .memory import PAGE_SIZE, ChurnArena, MemoryKind, Region
from .uffd import Userfaultfd

CHURN_SLOTS = 3  # before area 0, between the areas, after area 1
CHURN_PAGES = 16
OPS = {
    lib.UH_STRESS_OP_COPY: "UFFDIO_COPY",
    lib.UH_STRESS_OP_WAKE: "UFFDIO_WAKE",
    lib.UH_STRESS_OP_WRITEPROTECT: "UFFDIO_WRITEPROTECT",
    lib.UH_STRESS_OP_RELEASE: "madvise(src)",
    lib.UH_STRESS_OP_THREAD: "pthread_create",
}
POLL_SLICE = 0.1  # seconds per wait in C, so a signal is handled promptly
STUCK_GRACE = 2.0  # after unregistering for a stuck bounce, how long threads may take


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


@dataclass
class StressConfig:
    memory: str = "anon"
    mib: int = 32  # per area
    bounces: int | None = 8
    seconds: float | None = None  # run bounces until this much time has passed instead
    min_bounces: int = 1  # with seconds: at least this many, however long they take
    engine: EngineName = "native"
    wp: bool = False
    threads: int = field(default_factory=default_threads)  # lockers, copiers and handlers
    churn: bool = True
    deadline: float = 30.0  # seconds a bounce may take before its threads count as stuck
    seed: int = 1


@dataclass
class Bounce:
    index: int
    lockers: str  # "random" or "sequential"
    start: str  # "racing" or "sliced"
    wait: str  # how the handlers waited: "poll" or "read"
    seconds: float
    increments: int
    faults: int
    wp_faults: int
    copies: int
    copy_eexist: int
    copy_eagain: int
    churn_ops: int
    churn_errors: int


@dataclass
class StressResult:
    memory: str
    engine: str
    wp: bool
    threads: int
    mib: float
    page_size: int
    pages: int
    verdict: str = "pass"  # pass, fail, or skip
    reason: str = ""  # for skip
    drop: str = ""  # how the areas' pages are given back each bounce (advice, punch)
    problems: list[str] = field(default_factory=list)
    bounces: list[Bounce] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the bounce loop

    @property
    def pages_per_s(self) -> float:
        return self.pages * len(self.bounces) / self.seconds if self.seconds else 0.0

    @property
    def faults_per_s(self) -> float:
        faults = sum(b.faults for b in self.bounces)
        return faults / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            bounces_done=len(self.bounces),
            pages_per_s=round(self.pages_per_s, 1),
            faults_per_s=round(self.faults_per_s, 1),
            seconds=round(self.seconds, 4),
        )
        data["bounces"] = [asdict(b) for b in self.bounces]
        return data


class StressError(Exception):
    """The stress could not be set up (a skip reason)."""


# ---- the areas and their neighbours ------------------------------------------------------


class Arena(ChurnArena):
    """Both areas, each between anonymous churn slots, in one PROT_NONE reservation (plus
    a parking slot per churn slot): [churn][area 0][churn][area 1][churn] guard [parking].
    Everything is unmapped by close()."""

    def __init__(self, kind: MemoryKind, area_length: int, unit: int, stack: ExitStack) -> None:
        spec = kind.spec
        self.kind = kind
        self.unit = unit
        align = max(spec.page_size, unit)
        self.churn_len = max(CHURN_PAGES * PAGE_SIZE, align)
        churn, area = self.churn_len, area_length
        super().__init__([churn, area, churn, area, churn], churn=[0, 2, 4], align=align)
        stack.callback(self.close)
        flags = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_FIXED
        for number in range(CHURN_SLOTS):
            sc.mmap(self.churn(number), self.churn_len, sc.PROT_RW, flags)
        self.areas = [
            stack.enter_context(self._map_area(self.slot(1 + 2 * i), area_length, i))
            for i in range(2)
        ]
        self.drop_advice = _drop_advice(self.areas[1])  # as this kernel takes it

    def _map_area(self, addr: int, length: int, index: int) -> Region:
        spec = self.kind.spec
        fd = -1
        if spec.backing == "memfd":
            fd = sc.memfd_create(f"uffdharness-stress-{index}", spec.memfd_flags)
        try:
            if fd >= 0:
                os.ftruncate(fd, length)
            sc.mmap(addr, length, sc.PROT_RW, spec.mmap_flags | sc.MAP_FIXED, fd, 0)
            if spec.thp:
                sc.madvise(addr, length, sc.MADV_HUGEPAGE)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return Region(addr, length, self.kind, page_size=self.unit, fd=fd, owns_fd=fd >= 0)


# ---- the handlers ------------------------------------------------------------------------


class Handlers:
    """``threads`` FaultHandlers on the uffd, each serving both areas (a fault in one is
    resolved from the other at the same offset: only the bounce's dst is registered),
    kept across bounces and restarted when the wait mode changes. The process engine's
    helper copies from its fork-time view of a private source, so its set is started
    afresh every bounce."""

    def __init__(self, config: StressConfig, arena: Arena, uffd: Userfaultfd) -> None:
        self.config = config
        self.arena = arena
        self.uffd = uffd
        self.running: list[FaultHandler] = []
        self.faults = self.wp_faults = 0  # of the handlers stopped so far
        self.wait = ""

    def use(self, wait: str) -> list[str]:
        """Unless the running set already waits as ``wait`` says: stop it (returning what it
        failed with) and start one that does."""
        if wait == self.wait and self.running and self.config.engine != "process":
            return []
        self.wait = wait
        failures = self.stop()
        first, second = self.arena.areas
        for _ in range(self.config.threads):
            handler = FaultHandler(
                self.uffd,
                engine=self.config.engine,
                blocking_read=wait == "read",
                release_on_stop=False,  # the bounce unprotects and unregisters dst itself
            )
            self.running.append(handler)  # before start(): a signal may land right after it
            for area, source in ((first, second), (second, first)):
                policy = Copy(source) | Unprotect() if self.config.wp else Copy(source)
                # A fault read just before its bounce ended meets dst unregistered (its
                # waiter already woken by a copier's COPY or the final unprotect): ENOENT.
                handler.serve((area.addr, area.length, self.arena.unit), GoneOk(policy))
            handler.start()
        return failures

    def check(self) -> list[str]:
        """What the running set has failed with so far (each failure reported once)."""
        failures = []
        for handler in self.running:
            try:
                handler.check()
            except Exception as exc:  # the engine's own failure: the bounce's problem
                failures.append(f"handler failed: {exc}")
        return failures

    def counts(self) -> tuple[int, int]:
        """(missing, wp) faults resolved so far."""
        missing, wp = self.faults, self.wp_faults
        for handler in self.running:
            stats = handler.stats
            missing += stats.faults.missing
            wp += stats.faults.wp
        return missing, wp

    def stop(self) -> list[str]:
        """Stop the running set; what their engines failed with."""
        failures = []
        for handler in self.running:
            try:
                stats = handler.stop()
            except Exception as exc:  # the engine's own failure: report it, keep tearing down
                failures.append(f"handler failed: {exc}")
                stats = handler.stats
            self.faults += stats.faults.missing
            self.wp_faults += stats.faults.wp
        self.running = []
        return failures


# ---- one run -----------------------------------------------------------------------------


def unit_size(kind: MemoryKind) -> int:
    """The page a counter lives in: a hugepage on hugetlb, a base page elsewhere (on the THP
    kinds too: UFFDIO_COPY installs base pages; the THPs come and go in src)."""
    return kind.spec.page_size if kind.spec.is_hugetlb else PAGE_SIZE


def _features(kind: MemoryKind, wp: bool) -> tuple[RegisterMode, Feature]:
    spec = kind.spec
    modes = RegisterMode.MISSING | (RegisterMode.WP if wp else RegisterMode(0))
    if not spec.supports(modes):
        raise StressError(f"{kind.value} does not support {modes!r} registration")
    return modes, spec.mode_features(modes)


def bounce_modes(index: int, engine: str) -> tuple[str, str, str]:
    """(lockers, start, wait) of bounce ``index``, by its bits as uffd-stress picks them
    from the bounces left: bit 0 random/sequential pages, bit 1 racing on the same pages or
    each locker on its own slice, bit 2 the native handlers in a blocking read() or in
    poll() (uffd-stress's bit 3; so 8 bounces see both; other engines always poll). The
    handlers are restarted only when the wait changes."""
    lockers = "random" if index & 1 == 0 else "sequential"
    start = "racing" if index & 2 == 0 else "sliced"
    wait = "read" if index & 4 == 0 and engine == "native" else "poll"
    return lockers, start, wait


def area_pages(kind: MemoryKind, mib: int, threads: int) -> int:
    """Pages per area: ``mib`` MiB, at least two per thread."""
    return area_pages_for(mib, threads, unit_size(kind))


def area_pages_for(mib: int, threads: int, unit: int) -> int:
    return max(mib * (1 << 20) // unit, 2 * threads)


def skip_reason(config: StressConfig, facts: Any) -> str | None:
    """Why this kernel cannot run ``config`` (None: it can), before anything is mapped."""
    if not facts.uffd.status.startswith("available"):
        return f"userfaultfd {facts.uffd.status}"
    kind = MemoryKind(config.memory)
    try:
        _, features = _features(kind, config.wp)
    except StressError as exc:
        return str(exc)
    missing = features & ~Feature(facts.uffd.features_mask or 0)
    return missing_features_reason(missing) if missing else None


def skipped(config: StressConfig, reason: str) -> StressResult:
    kind = MemoryKind(config.memory)
    unit = unit_size(kind)
    pages = area_pages(kind, config.mib, config.threads)
    result = StressResult(
        config.memory,
        config.engine,
        config.wp,
        config.threads,
        pages * unit / (1 << 20),
        unit,
        pages,
    )
    result.verdict, result.reason = "skip", reason
    return result


def run(config: StressConfig, progress: Callable[[str], None] | None = None) -> StressResult:
    """One stress run on one memory kind. Raises StressError when it cannot be set up."""
    kind = MemoryKind(config.memory)
    unit = unit_size(kind)
    area_length = area_pages(kind, config.mib, config.threads) * unit
    result = StressResult(
        config.memory,
        config.engine,
        config.wp,
        config.threads,
        area_length / (1 << 20),
        unit,
        area_length // unit,
    )
    modes, features = _features(kind, config.wp)
    say = progress or (lambda _text: None)
    with ExitStack() as stack:
        try:
            arena = Arena(kind, area_length, unit, stack)
            # Lockers fault from user mode only: a UFFD_USER_MODE_ONLY uffd serves them
            # where that is all this process may open.
            only = system.facts().user_mode_only
            uffd = stack.enter_context(Userfaultfd.open(features, user_mode_only=only))
        except UffdError as exc:
            raise StressError(str(exc)) from exc
        handlers = Handlers(config, arena, uffd)
        stack.callback(handlers.stop)
        counts = ffi.new("uint64_t[]", result.pages)
        src, dst = arena.areas
        lib.uh_stress_init(ffi.cast("char *", src.addr), result.pages, unit, counts)
        # dst faulted in and dropped once before the clock starts: the hugetlb pages a
        # HugepagePool has just added come from memory the VM's host may not have backed
        # yet, and their first touch cost bounce 0 up to 66 ms (its copies take 2 ms);
        # given back, they are the first the kernel hands out again.
        dst.touch(write=True)
        _drop(dst, arena.drop_advice)
        result.drop = _drop_name(arena.drop_advice, dst)
        started = time.monotonic()
        index = 0
        while True:
            if config.bounces is not None and index >= config.bounces:
                break
            if (
                config.seconds is not None
                and index >= config.min_bounces
                and time.monotonic() - started >= config.seconds
            ):
                break
            bounce = _bounce(config, index, arena, uffd, handlers, modes, src, dst, counts, result)
            result.bounces.append(bounce)
            elapsed = time.monotonic() - started
            total = f" of {config.bounces}" if config.bounces is not None else ""
            say(
                f"{config.memory}: bounce {index + 1}{total} {bounce.lockers} {bounce.start} "
                f"{bounce.wait}: {bounce.faults / bounce.seconds:,.0f} faults/s, "
                f"{result.pages * (index + 1) / elapsed:,.0f} pages/s"
            )
            if result.problems:
                break
            src, dst = dst, src
            index += 1
        result.problems += handlers.stop()
        result.seconds = time.monotonic() - started
    result.verdict = "fail" if result.problems else "pass"
    return result


def _bounce(
    config: StressConfig,
    index: int,
    arena: Arena,
    uffd: Userfaultfd,
    handlers: Handlers,
    modes: RegisterMode,
    src: Region,
    dst: Region,
    counts: Any,
    result: StressResult,
) -> Bounce:
    lockers, start, wait = bounce_modes(index, config.engine)
    # what the previous bounce's handlers failed with as they stopped belongs to that bounce
    result.problems += [f"bounce {index - 1}: {failure}" for failure in handlers.use(wait)]
    uffd.register(dst, mode=modes)
    # dst still holds the bounce before last: give its pages back so every one faults.
    _drop(dst, arena.drop_advice)
    b = ffi.new("struct uh_stress_bounce *")
    # a churn slot given up in an earlier bounce is never touched again
    alive = [i for i in range(CHURN_SLOTS) if i not in arena.lost] if config.churn else []
    missing_before, wp_before = handlers.counts()
    began = time.monotonic()
    try:
        b.uffd = uffd.fileno()
        b.src = ffi.cast("char *", src.addr)
        b.dst = ffi.cast("char *", dst.addr)
        b.npages = result.pages
        b.page_size = arena.unit
        b.count_verify = counts
        b.lockers = b.copiers = config.threads
        b.random = lockers == "random"
        b.racing = start == "racing"
        b.copy_mode_wp = int(config.wp)
        b.release_advice = arena.drop_advice
        b.release_fd = _private_file(src)
        b.seed = config.seed * 1000 + index
        b.nchurn = len(alive)
        b.churn_len = arena.churn_len
        for j, i in enumerate(alive):
            b.churn[j] = ffi.cast("char *", arena.churn(i))
            b.parking[j] = ffi.cast("char *", arena.parking(i))
        rc = lib.uh_stress_start(b)
        if rc < 0:
            raise OSError(-rc, f"stress threads: {os.strerror(-rc)}")
        _wait(b, began + config.deadline, index, result)
    finally:
        lib.uh_stress_abort(b)
        try:
            if config.wp:
                uffd.writeprotect(dst, mode=WriteProtectMode(0))
        finally:
            uffd.unregister(dst)  # wakes whatever still waits in a fault on dst
            _reap(b, index)
    seconds = time.monotonic() - began
    missing_after, wp_after = handlers.counts()
    arena.lost.update(i for j, i in enumerate(alive) if b.churn_lost_mask >> j & 1)
    _judge(b, index, dst, counts, result)
    result.problems += [f"bounce {index}: {failure}" for failure in handlers.check()]
    return Bounce(
        index,
        lockers,
        start,
        wait,
        seconds,
        b.increments,
        missing_after - missing_before,
        wp_after - wp_before,
        b.copies,
        b.copy_eexist,
        b.copy_eagain,
        b.churn_ops,
        b.churn_errors,
    )


def _private_file(region: Region) -> int:
    """The fd to punch besides the drop advice: a private file mapping's page cache."""
    return region.fd if region.fd >= 0 and not region.kind.spec.shared else -1


def _drop_advice(region: Region) -> int:
    """The advice that drops ``region``'s pages on this kernel (tried on it): its kind's,
    or -1 (none) where the kernel refuses that and punching the file drops them alone:
    MADV_DONTNEED on hugetlb needs 5.18 ('mm: enable MADV_DONTNEED for hugetlb mappings'),
    and a hole punched in hugetlbfs unmaps the range from every mapping of the file,
    private pages too (hugetlb_vmdelete_list)."""
    advice = region.kind.spec.drop_advice
    try:
        region.madvise(advice)
    except OSError as exc:
        if exc.errno != errno.EINVAL or not region.kind.spec.is_hugetlb:
            raise
        if _private_file(region) < 0:
            raise StressError(f"{region.kind.value}: this kernel refuses its drop ({exc})") from exc
        return -1
    return advice


def _drop_name(advice: int, region: Region) -> str:
    names = [] if advice < 0 else [sc.ADVICE_NAMES[advice]]
    return " + ".join(names + (["punch"] if _private_file(region) >= 0 else []))


def _drop(region: Region, advice: int) -> None:
    if advice >= 0:
        region.madvise(advice)
    if _private_file(region) >= 0:
        region.punch_hole()


def _wait(b: Any, deadline: float, index: int, result: StressResult) -> None:
    """Wait for the bounce's threads in short slices (signals are handled between them).
    Past the deadline they count as stuck: the caller unregisters dst, which wakes a thread
    stuck in a fault, and reaps them."""
    while True:
        now = time.monotonic()
        slice_end = min(now + POLL_SLICE, deadline)
        left = lib.uh_stress_wait(b, _to_ns(slice_end))
        if left == 0:
            return
        if time.monotonic() >= deadline:
            break
    result.problems.append(
        f"bounce {index}: {left} of its lockers, copiers and churn thread still running at "
        "the bounce's deadline (stuck in a fault or an ioctl)"
    )
    lib.uh_stress_abort(b)


def _reap(b: Any, index: int) -> None:
    """Join the bounce's threads before their memory goes (on an exception; after a normal
    bounce they are already joined and this returns at once)."""
    grace = time.monotonic() + STUCK_GRACE
    while lib.uh_stress_wait(b, _to_ns(min(time.monotonic() + POLL_SLICE, grace))):
        if time.monotonic() >= grace:
            # Blocked beyond that, they are in the kernel for good: end the process rather
            # than unmap memory under them.
            os.write(2, f"stress: bounce {index}: threads stuck after unregister\n".encode())
            os._exit(1)


def _to_ns(monotonic_s: float) -> int:
    # time.monotonic() and CLOCK_MONOTONIC are the same clock on Linux.
    return int(monotonic_s * 1e9)


def _judge(b: Any, index: int, dst: Region, counts: Any, result: StressResult) -> None:
    if b.err:
        result.problems.append(
            f"bounce {index}: {OPS.get(b.err_op, b.err_op)} at {b.err_addr:#x} failed with "
            f"{_errno_name(b.err)}"
        )
    if b.corruptions:
        page = b.corrupt_page
        result.problems.append(
            f"bounce {index}: page {page} (offset {page * dst.page_size:#x}): a locker read "
            f"counter {b.corrupt_found}, expected {b.corrupt_expected} "
            f"({b.corruptions} such reads)"
        )
    found = ffi.new("uint64_t *")
    bad = lib.uh_stress_verify(
        ffi.cast("char *", dst.addr), dst.pages, dst.page_size, counts, found
    )
    if bad >= 0:
        result.problems.append(
            f"bounce {index}: page {bad} (offset {bad * dst.page_size:#x}) holds counter "
            f"{found[0]} after the bounce, the lockers counted {counts[bad]}"
        )


def _errno_name(err: int) -> str:
    return errno.errorcode.get(err, str(err))
