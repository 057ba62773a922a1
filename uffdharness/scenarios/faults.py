"""Missing and minor faults resolved by the scenario itself, plus POISON and SIGBUS."""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
from collections.abc import Callable

from .. import syscalls as sc
from ..abi import Feature, RegisterMode, flag_names
from ..errors import UffdError
from ..events import PagefaultEvent
from ..isolation import run_in_child
from ..memory import PAGE_SIZE, MemoryKind, Region, allocate
from ..uffd import Userfaultfd
from .checks import Checks, errno_of
from .context import Background, Context, next_event
from .model import ALL_KINDS, MINOR_KINDS, Observation
from .registry import scenario

SEED = 0x5EED


def _expected_content(ctx: Context, region: Region) -> Region:
    """Anonymous memory holding what ``region.fill_indexed(SEED)`` would write, its pages
    counted at ``region``'s page size (2 MiB for hugetlb)."""
    source = ctx.region(region.length // PAGE_SIZE, MemoryKind.ANON)
    source.view(region.page_size).fill_indexed(SEED)
    return source


def serve_missing(
    uffd: Userfaultfd, region: Region, source: Region, toucher: Background, limit: int
) -> list[PagefaultEvent]:
    """Resolve missing faults by copying ``source`` at the same offset until the toucher
    finishes; returns the faults in arrival order."""
    faults: list[PagefaultEvent] = []
    while len(faults) < limit:
        event = next_event(uffd, timeout=0.2)
        if event is None:
            if toucher.finished(0):
                break
            continue
        if not isinstance(event, PagefaultEvent):
            raise AssertionError(f"unexpected event {event}")
        faults.append(event)
        page = region.page_index(event.address)
        dst, length = region.span(page)
        try:
            uffd.copy(dst, source.addr + (dst - region.addr), length)
        except UffdError as exc:
            if exc.errno_name != "EEXIST":  # another thread's fault resolved it first
                raise
    return faults


@scenario(
    id="missing-copy",
    title="Missing faults resolved with UFFDIO_COPY",
    checks="every first touch of a registered page raises one missing fault at the page "
    "address and UFFDIO_COPY installs exactly the copied content (4.3 anon, 4.11 shmem "
    "and hugetlbfs)",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    hugepages=8,
)
def missing_copy(ctx: Context) -> Observation:
    pages = 4 if ctx.spec.is_hugetlb else 16
    region = ctx.region(pages)
    source = _expected_content(ctx, region)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region, mode=RegisterMode.MISSING)
    toucher = Background(region.touch)
    faults = serve_missing(uffd, region, source, toucher, limit=pages * 2)
    touched = toucher.value(5)
    mismatch = region.find_indexed_mismatch(SEED)
    addresses = [f.address for f in faults]
    in_order = addresses == [region.page_addr(i) for i in range(pages)]
    check = Checks({"pages": pages, "page_size": region.page_size})
    check.expect("faults", len(faults), pages)
    check.fact("fault_kinds", sorted({f.fault_kind for f in faults}))
    check.fact("write_faults", sum(f.is_write for f in faults))
    if not check.expect("addresses_in_page_order", in_order, True):
        check.problem(f"faults at {[hex(a) for a in addresses]}")
    check.fact("pages_touched", touched)
    check.expect("first_mismatch_offset", mismatch, None)
    data = "ok" if mismatch is None else "BAD"
    return check.observation(key=f"faults={len(faults)}/{pages} data={data}")


@scenario(
    id="missing-zeropage",
    title="Missing faults resolved with UFFDIO_ZEROPAGE",
    checks="a read fault resolved by UFFDIO_ZEROPAGE reads zeros and a later write "
    "works; hugetlbfs does not offer ZEROPAGE and must refuse it with EINVAL",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
)
def missing_zeropage(ctx: Context) -> Observation:
    region = ctx.region(2)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region)
    check = Checks()
    if ctx.spec.is_hugetlb:
        # hugetlbfs has no zero page: UFFDIO_REGISTER leaves UFFDIO_ZEROPAGE out of a
        # hugetlb range's ioctls and mfill_atomic_hugetlb() refuses it with EINVAL.
        refused = errno_of(uffd.zeropage, region)
        check.expect("zeropage_errno", None if refused == "ok" else refused, "EINVAL")
        key = "ZEROPAGE accepted" if refused == "ok" else f"ZEROPAGE -> {refused}"
        return check.observation(key=key)
    reader = Background(region.touch, 0)
    fault = next_event(uffd, timeout=5)
    resolved = uffd.zeropage(region.addr, region.page_size) if fault else 0
    reader.value(5)
    zeros = region.verify(b"\0", 0, region.page_size)
    region.write(b"after", 0)
    check.expect("fault", fault.fault_kind if fault else None, "missing")
    check.fact("fault_was_write", fault.is_write if fault else None)
    check.expect("bytes_zeroed", resolved, region.page_size)
    check.expect("reads_zero", zeros, True)
    check.expect("write_after_zeropage", region.read(0, 5) == b"after", True)
    return check.observation(key=f"zeropage={resolved} zeros={zeros}")


@scenario(
    id="exact-address",
    title="UFFD_FEATURE_EXACT_ADDRESS",
    checks="with EXACT_ADDRESS (5.18) the fault message carries the exact faulting address; "
    "without it the address is masked to the page",
    memory=("anon",),
    modes=RegisterMode.MISSING,
    features=Feature.EXACT_ADDRESS,
)
def exact_address(ctx: Context) -> Observation:
    offset = 0x123
    observed = {}
    for label, features in (("exact", Feature.EXACT_ADDRESS), ("default", Feature(0))):
        region = ctx.region(1)
        uffd = ctx.uffd(features | ctx.mode_features(RegisterMode.MISSING))
        uffd.register(region)
        reader = Background(lambda r=region: r.read(offset, 1))
        fault = next_event(uffd, timeout=5)
        uffd.zeropage(region)
        reader.value(5)
        observed[label] = (fault.address - region.addr) if fault else None
    check = Checks()
    check.expect("offset_with_exact_address", observed["exact"], offset)
    # Without it the kernel masks uffd_msg.pagefault.address to the page (PAGE_MASK).
    check.expect("offset_without", observed["default"], 0)
    exact = observed["exact"]
    return check.observation(key=f"exact={exact:#x}" if exact is not None else "no fault")


@scenario(
    id="thread-id",
    title="UFFD_FEATURE_THREAD_ID",
    checks="with THREAD_ID (4.14) the fault message carries the faulting thread's id",
    memory=("anon",),
    modes=RegisterMode.MISSING,
    features=Feature.THREAD_ID,
)
def thread_id(ctx: Context) -> Observation:
    region = ctx.region(1)
    uffd = ctx.uffd(Feature.THREAD_ID | ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region)
    tids: list[int] = []

    def touch_and_report() -> None:
        tids.append(threading.get_native_id())
        region.touch(0)

    toucher = Background(touch_and_report)
    fault = next_event(uffd, timeout=5)
    uffd.zeropage(region)
    toucher.value(5)
    check = Checks()
    # uffd_msg.pagefault.feat.ptid: the faulting thread's id, not the process's.
    check.expect("fault_thread_id", fault.thread_id if fault else None, tids[0])
    check.expect_that("toucher_tid", tids[0], tids[0] != os.getpid(), "not the main thread's")
    return check.observation(key=f"ptid={check.facts['fault_thread_id']} tid={tids[0]}")


@scenario(
    id="hugetlb-shared-copy",
    title="UFFDIO_COPY into shared hugetlb lands in the page cache",
    checks="a page copied into a shared hugetlb mapping (4.11) is seen through a second "
    "mapping of the same memfd and by pread() of the memfd",
    memory=("hugetlb",),
    modes=RegisterMode.MISSING,
)
def hugetlb_shared_copy(ctx: Context) -> Observation:
    region = ctx.region(2)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region)
    payload = (b"hugetlb-copy" * (region.page_size // 12 + 1))[: region.page_size]
    uffd.copy(region.addr, payload)
    second = region.alias()
    check = Checks()
    check.expect("alias_sees", second.read(0, 12).decode(errors="replace"), "hugetlb-copy")
    check.expect("pread_sees", region.pread(12, 0).decode(errors="replace"), "hugetlb-copy")
    return check.observation(key=f"alias={check.ok}")


@scenario(
    id="minor-continue",
    title="Minor faults resolved with UFFDIO_CONTINUE",
    checks="with the page in the page cache but no PTE, a touch raises a MINOR fault "
    "(5.13 hugetlbfs, 5.14 shmem) and UFFDIO_CONTINUE maps the cached page unchanged",
    memory=MINOR_KINDS,
    modes=RegisterMode.MINOR,
)
def minor_continue(ctx: Context) -> Observation:
    region = ctx.region(2)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.MINOR))
    # Fill the page cache through a second shared mapping where there is a backing fd to
    # alias; MAP_SHARED|MAP_ANONYMOUS shmem has none, so it is filled through the region.
    cache_view = region.alias() if region.fd >= 0 else region
    cache_view.fill(b"page-cache-16B.\n")
    uffd.register(region, mode=RegisterMode.MINOR)
    if cache_view is region:
        # Zap the PTEs the fill made, keeping the page cache. Only here: hugetlb refuses
        # MADV_DONTNEED before 5.18 ('mm: enable MADV_DONTNEED for hugetlb mappings').
        region.madvise(sc.MADV_DONTNEED)
    reader = Background(region.touch, 1)
    fault = next_event(uffd, timeout=5)
    mapped = uffd.continue_(region.addr + region.page_size, region.page_size) if fault else 0
    reader.value(5)
    intact = region.verify(b"page-cache-16B.\n", region.page_size, region.page_size)
    check = Checks()
    fault_kind = fault.fault_kind if fault else None
    check.expect("fault_kind", fault_kind, "minor")
    check.fact("fault_flags", int(fault.flags) if fault else None)
    check.expect("bytes_continued", mapped, region.page_size)
    check.expect("content_is_page_cache", intact, True)
    return check.observation(key=f"fault={fault_kind} data={'ok' if intact else 'BAD'}")


CACHED = b"in-page-cache-16"
COPIED = b"copied-by-ioctl!"


def _fill(call: Callable[[], int]) -> tuple[str, int | None]:
    """(errno name or "ok", the result field: bytes done, or -errno when refused)."""
    try:
        return "ok", call()
    except UffdError as refusal:
        return refusal.errno_name, refusal.result_field


@scenario(
    id="mapped-eexist",
    title="Filling a page that is already there",
    checks="UFFDIO_CONTINUE of a page it already mapped fails with EEXIST and mapped = "
    "-EEXIST (5.13 hugetlbfs, 5.14 shmem); on a shared mapping UFFDIO_COPY and "
    "UFFDIO_ZEROPAGE of a page already in the page cache fail with EEXIST though the "
    "mapping has no PTE for it (ZEROPAGE is EINVAL on hugetlbfs), while a private mapping "
    "gets its own page and the page cache stays as it was",
    memory=MINOR_KINDS,
    modes=RegisterMode.MISSING | RegisterMode.MINOR,
    hugepages=6,
)
def mapped_eexist(ctx: Context) -> Observation:
    continued, copied, zeroed = 0, 1, 2
    region = ctx.region(3)
    page = region.page_size
    # Every page in the page cache through a shared second mapping, none mapped in the
    # region; the alias is made before registering (see Region.alias).
    cache_view = region.alias()
    cache_view.fill(CACHED)
    source = ctx.region(page // PAGE_SIZE, MemoryKind.ANON)
    source.fill(COPIED)
    modes = RegisterMode.MISSING | RegisterMode.MINOR
    uffd = ctx.uffd(ctx.mode_features(modes))
    uffd.register(region, mode=modes)
    continue_first = _fill(lambda: uffd.continue_(*region.span(continued)))
    continue_again = _fill(lambda: uffd.continue_(*region.span(continued)))
    copy = _fill(lambda: uffd.copy(region.page_addr(copied), source.addr, page))
    zeropage = _fill(lambda: uffd.zeropage(*region.span(zeroed)))
    eexist = ("EEXIST", -errno.EEXIST)
    # hugetlbfs has no zero page: mfill_atomic_hugetlb() refuses ZEROPAGE first.
    no_zeropage = ("EINVAL", -errno.EINVAL)
    check = Checks({"shared": ctx.spec.shared, "page_size": page})
    check.expect("continue_first", list(continue_first), ["ok", page])
    # The second CONTINUE finds the PTE the first installed (mfill_atomic_install_pte(),
    # hugetlb_mfill_atomic_pte()): EEXIST, also written to uffdio_continue.mapped.
    check.expect("continue_again", list(continue_again), list(eexist))
    if ctx.spec.shared:
        # A shared mapping fills the page cache: the page is there already (shmem's
        # filemap add, hugetlbfs_pagecache_present()), whatever this mapping's PTEs say.
        wanted_copy, wanted_zeropage = eexist, eexist
    else:
        # A private mapping's fills install an anonymous page over the empty PTE and
        # never touch the page cache.
        wanted_copy, wanted_zeropage = ("ok", page), ("ok", page)
    if ctx.spec.is_hugetlb:
        wanted_zeropage = no_zeropage
    check.expect("copy", list(copy), list(wanted_copy))
    check.expect("zeropage", list(zeropage), list(wanted_zeropage))
    check.expect(
        "continued_page_is_page_cache", region.verify(CACHED, continued * page, page), True
    )
    cache_intact = cache_view.verify(CACHED, copied * page, 2 * page)
    check.expect("page_cache_unchanged", cache_intact, True)
    if not ctx.spec.shared:
        # Only here is anything mapped at those pages: a shared region's read would raise
        # a MINOR fault nobody serves.
        check.expect("private_copy", region.verify(COPIED, copied * page, page), True)
        if not ctx.spec.is_hugetlb:
            check.expect("private_zeropage", region.verify(b"\0", zeroed * page, page), True)
    return check.observation(
        key=f"continue again -> {continue_again[0]}, copy -> {copy[0]}, zeropage -> {zeropage[0]}"
    )


def _sigbus_checks(ctx: Context, touch: Callable[..., None], *extra: object) -> Checks:
    """Run ``touch`` in a child; the kernel must kill it with SIGBUS."""
    features = ctx.mode_features(RegisterMode.MISSING)
    user_mode_only = ctx.system.user_mode_only
    outcome = run_in_child(touch, ctx.memory.value, features, user_mode_only, *extra, timeout=10)
    signal_name = signal.Signals(outcome.signal).name if outcome.signal else None
    check = Checks()
    check.expect("child", outcome.status, "crashed")
    check.expect("signal", signal_name, "SIGBUS")
    if outcome.status == "raised":
        check.fact("error", str(outcome.exception))
    if outcome.status == "timeout":
        check.fact("note", "the toucher blocked waiting for a handler")
    return check


def _sigbus_outcome(ctx: Context, touch: Callable[[str, Feature, bool], None], verb: str):
    check = _sigbus_checks(ctx, touch)
    return check.observation(key=f"{verb} -> {check.facts['signal'] or check.facts['child']}")


def _poison_then_touch(kind: str, features: Feature, user_mode_only: bool) -> None:
    region = allocate(kind, 1)
    uffd = Userfaultfd.open(features | Feature.POISON, user_mode_only=user_mode_only)
    uffd.register(region)
    uffd.poison(region)
    region.touch(0)  # must raise SIGBUS and kill this process


LEDGER_BYTES = 256


def _poison_from_handler(
    kind: str, features: Feature, user_mode_only: bool, ledger: Region
) -> None:
    """A thread touches page 1 and faults; this thread reads the fault and resolves it
    with UFFDIO_POISON, which wakes the toucher: its retry must raise SIGBUS. What was
    seen goes to ``ledger`` (shared with the parent) first, as the process dies."""
    region = allocate(kind, 2)
    uffd = Userfaultfd.open(features | Feature.POISON, user_mode_only=user_mode_only)
    uffd.register(region)
    toucher = Background(region.touch, 1)
    fault = next_event(uffd, timeout=5)
    if not isinstance(fault, PagefaultEvent):
        ledger.write(json.dumps({"fault": repr(fault)}).encode()[:LEDGER_BYTES])
        return
    page = region.page_index(fault.address)
    report = {"fault_page": page, "fault_kind": fault.fault_kind}
    ledger.write(json.dumps(report).encode()[:LEDGER_BYTES])
    uffd.poison(*region.span(page))
    toucher.value(5)  # SIGBUS kills this process before the toucher returns


def _ledger(ledger: Region) -> dict:
    text = ledger.read(0, LEDGER_BYTES).rstrip(b"\0")
    return json.loads(text) if text else {}


@scenario(
    id="poison",
    title="UFFDIO_POISON",
    checks="a page marked with UFFDIO_POISON (6.6) raises SIGBUS on access, like a "
    "hardware memory error, also when POISON resolves a missing fault from the handler "
    "(the woken access gets SIGBUS); UFFDIO_REGISTER reports UFFDIO_POISON among the "
    "range's ioctls",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    features=Feature.POISON,
)
def poison(ctx: Context) -> Observation:
    check = Checks()
    touched = _sigbus_checks(ctx, _poison_then_touch)
    check.nest("poisoned_then_touched", touched)
    ledger = ctx.region(1, MemoryKind.SHMEM)
    from_handler = _sigbus_checks(ctx, _poison_from_handler, ledger)
    seen = _ledger(ledger)
    from_handler.expect("fault_page", seen.get("fault_page"), 1)
    from_handler.expect("fault_kind", seen.get("fault_kind"), "missing")
    check.nest("poisoned_from_handler", from_handler)
    region = ctx.region(1)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.MISSING) | Feature.POISON)
    ioctls = flag_names(uffd.register(region))
    # UFFD_API_RANGE_IOCTLS and _BASIC both gained _UFFDIO_POISON with the ioctl (6.6).
    check.fact("register_ioctls", ioctls)
    check.expect("register_reports_poison", "POISON" in ioctls, True)
    outcomes = [part.facts["signal"] or part.facts["child"] for part in (touched, from_handler)]
    return check.observation(key=f"access -> {outcomes[0]}; from handler -> {outcomes[1]}")


def _touch_with_sigbus_feature(kind: str, features: Feature, user_mode_only: bool) -> None:
    region = allocate(kind, 1)
    uffd = Userfaultfd.open(features | Feature.SIGBUS, user_mode_only=user_mode_only)
    uffd.register(region)
    region.touch(0)  # no handler: SIGBUS instead of a fault message


@scenario(
    id="sigbus-feature",
    title="UFFD_FEATURE_SIGBUS",
    checks="with SIGBUS (4.14) a missing fault raises SIGBUS instead of queueing a message, "
    "so nothing ever waits for a handler",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    features=Feature.SIGBUS,
)
def sigbus_feature(ctx: Context) -> Observation:
    return _sigbus_outcome(ctx, _touch_with_sigbus_feature, "touch")
