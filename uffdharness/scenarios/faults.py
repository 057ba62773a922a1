"""Missing and minor faults resolved by the scenario itself, plus POISON and SIGBUS."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

from .. import syscalls as sc
from .._native import ffi, lib
from ..abi import Feature, RegisterMode
from ..errors import UffdError
from ..events import PagefaultEvent
from ..isolation import run_in_child
from ..memory import MemoryKind, Region, allocate
from ..uffd import Userfaultfd
from .context import Background, Context, next_event
from .model import ALL_KINDS, SHARED_KINDS, Observation
from .registry import scenario

SEED = 0x5EED


def _expected_content(region: Region) -> Region:
    """Anonymous memory holding what ``region.fill_indexed(SEED)`` would write, its pages
    counted at ``region``'s page size (2 MiB for hugetlb)."""
    source = allocate(MemoryKind.ANON, length=region.length)
    lib.uh_fill_indexed(ffi.cast("char *", source.addr), region.length, region.page_size, SEED, 0)
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
    hugepages=8,
)
def missing_copy(ctx: Context) -> Observation:
    pages = 4 if ctx.memory.is_hugetlb else 16
    region = ctx.region(pages)
    source = _expected_content(region)
    uffd = ctx.uffd(ctx.mode_features("missing"))
    uffd.register(region, mode=RegisterMode.MISSING)
    toucher = Background(region.touch)
    faults = serve_missing(uffd, region, source, toucher, limit=pages * 2)
    touched = toucher.value(5)
    mismatch = region.find_indexed_mismatch(SEED)
    addresses = [f.address for f in faults]
    expected = [region.page_addr(i) for i in range(pages)]
    facts = {
        "pages": pages,
        "page_size": region.page_size,
        "faults": len(faults),
        "fault_kinds": sorted({f.fault_kind for f in faults}),
        "write_faults": sum(f.is_write for f in faults),
        "addresses_in_page_order": addresses == expected,
        "pages_touched": touched,
        "first_mismatch_offset": mismatch,
    }
    ok = len(faults) == pages and addresses == expected and mismatch is None
    reason = "" if ok else f"faults at {[hex(a) for a in addresses]}, mismatch at {mismatch}"
    return Observation(
        facts,
        ok,
        f"faults={len(faults)}/{pages} data={'ok' if mismatch is None else 'BAD'}",
        reason,
    )


@scenario(
    id="missing-zeropage",
    title="Missing faults resolved with UFFDIO_ZEROPAGE",
    checks="a read fault resolved by UFFDIO_ZEROPAGE reads zeros and a later write "
    "works; hugetlbfs does not offer ZEROPAGE and must refuse it with EINVAL",
    memory=ALL_KINDS,
)
def missing_zeropage(ctx: Context) -> Observation:
    region = ctx.region(2)
    uffd = ctx.uffd(ctx.mode_features("missing"))
    uffd.register(region)
    if ctx.memory.is_hugetlb:
        try:
            uffd.zeropage(region)
        except UffdError as exc:
            facts = {"zeropage_errno": exc.errno_name}
            ok = exc.errno_name == "EINVAL"
            return Observation(
                facts, ok, f"ZEROPAGE -> {exc.errno_name}", "" if ok else "expected EINVAL"
            )
        return Observation(
            {"zeropage_errno": None}, False, "ZEROPAGE accepted", "hugetlb accepted ZEROPAGE"
        )
    reader = Background(region.touch, 0)
    fault = next_event(uffd, timeout=5)
    resolved = uffd.zeropage(region.addr, region.page_size) if fault else 0
    reader.value(5)
    zeros = region.verify(b"\0", 0, region.page_size)
    region.write(b"after", 0)
    facts = {
        "fault": fault.fault_kind if fault else None,
        "fault_was_write": fault.is_write if fault else None,
        "bytes_zeroed": resolved,
        "reads_zero": zeros,
        "write_after_zeropage": region.read(0, 5) == b"after",
    }
    ok = bool(fault) and resolved == region.page_size and zeros and facts["write_after_zeropage"]
    return Observation(facts, ok, f"zeropage={resolved} zeros={zeros}", "" if ok else str(facts))


@scenario(
    id="exact-address",
    title="UFFD_FEATURE_EXACT_ADDRESS",
    checks="with EXACT_ADDRESS (5.18) the fault message carries the exact faulting address; "
    "without it the address is masked to the page",
    memory=("anon",),
    features=Feature.EXACT_ADDRESS,
)
def exact_address(ctx: Context) -> Observation:
    offset = 0x123
    observed = {}
    for label, features in (("exact", Feature.EXACT_ADDRESS), ("default", Feature(0))):
        region = ctx.region(1)
        uffd = ctx.uffd(features)
        uffd.register(region)
        reader = Background(lambda r=region: r.read(offset, 1))
        fault = next_event(uffd, timeout=5)
        uffd.zeropage(region)
        reader.value(5)
        observed[label] = (fault.address - region.addr) if fault else None
    facts = {"offset_with_exact_address": observed["exact"], "offset_without": observed["default"]}
    ok = observed["exact"] == offset and observed["default"] == 0
    return Observation(
        facts,
        ok,
        f"exact={observed['exact']:#x}" if observed["exact"] is not None else "no fault",
        "" if ok else str(facts),
    )


@scenario(
    id="thread-id",
    title="UFFD_FEATURE_THREAD_ID",
    checks="with THREAD_ID (4.14) the fault message carries the faulting thread's id",
    memory=("anon",),
    features=Feature.THREAD_ID,
)
def thread_id(ctx: Context) -> Observation:
    region = ctx.region(1)
    uffd = ctx.uffd(Feature.THREAD_ID)
    uffd.register(region)
    tids: list[int] = []

    def touch_and_report() -> None:
        tids.append(threading.get_native_id())
        region.touch(0)

    toucher = Background(touch_and_report)
    fault = next_event(uffd, timeout=5)
    uffd.zeropage(region)
    toucher.value(5)
    facts = {"fault_thread_id": fault.thread_id if fault else None, "toucher_tid": tids[0]}
    ok = fault is not None and fault.thread_id == tids[0] and tids[0] != os.getpid()
    return Observation(
        facts, ok, f"ptid={facts['fault_thread_id']} tid={tids[0]}", "" if ok else str(facts)
    )


@scenario(
    id="hugetlb-shared-copy",
    title="UFFDIO_COPY into shared hugetlb lands in the page cache",
    checks="a page copied into a shared hugetlb mapping (4.11) is seen through a second "
    "mapping of the same memfd and by pread() of the memfd",
    memory=("hugetlb",),
    features=Feature.MISSING_HUGETLBFS,
)
def hugetlb_shared_copy(ctx: Context) -> Observation:
    region = ctx.region(2)
    uffd = ctx.uffd(Feature.MISSING_HUGETLBFS)
    uffd.register(region)
    payload = (b"hugetlb-copy" * (region.page_size // 12 + 1))[: region.page_size]
    uffd.copy(region.addr, payload)
    second = region.alias()
    via_alias = second.read(0, 12)
    via_pread = region.pread(12, 0)
    facts = {
        "alias_sees": via_alias.decode(errors="replace"),
        "pread_sees": via_pread.decode(errors="replace"),
    }
    ok = via_alias == via_pread == b"hugetlb-copy"
    return Observation(facts, ok, f"alias={ok}", "" if ok else str(facts))


@scenario(
    id="minor-continue",
    title="Minor faults resolved with UFFDIO_CONTINUE",
    checks="with the page in the page cache but no PTE, a touch raises a MINOR fault "
    "(5.13 hugetlbfs, 5.14 shmem) and UFFDIO_CONTINUE maps the cached page unchanged",
    memory=SHARED_KINDS + ("hugetlb-private",),
)
def minor_continue(ctx: Context) -> Observation:
    region = ctx.region(2)
    uffd = ctx.uffd(ctx.mode_features("minor"))
    cache_view = region if ctx.memory is MemoryKind.SHMEM else region.alias()
    cache_view.fill(b"page-cache-16B.\n")
    uffd.register(region, mode=RegisterMode.MINOR)
    region.madvise(sc.MADV_DONTNEED)  # drop the PTEs, keep the page cache
    reader = Background(region.touch, 1)
    fault = next_event(uffd, timeout=5)
    mapped = uffd.continue_(region.addr + region.page_size, region.page_size) if fault else 0
    reader.value(5)
    intact = region.verify(b"page-cache-16B.\n", region.page_size, region.page_size)
    facts = {
        "fault_kind": fault.fault_kind if fault else None,
        "fault_flags": int(fault.flags) if fault else None,
        "bytes_continued": mapped,
        "content_is_page_cache": intact,
    }
    ok = bool(fault) and fault.is_minor and mapped == region.page_size and intact
    return Observation(
        facts,
        ok,
        f"fault={facts['fault_kind']} data={'ok' if intact else 'BAD'}",
        "" if ok else str(facts),
    )


def _sigbus_outcome(ctx: Context, touch: Callable[[str, Feature], None], verb: str):
    """Run ``touch`` in a child; the kernel must kill it with SIGBUS."""
    features = ctx.mode_features("missing")
    outcome = run_in_child(touch, ctx.memory.value, features, timeout=10)
    signal_name = signal.Signals(outcome.signal).name if outcome.signal else None
    facts = {"child": outcome.status, "signal": signal_name}
    if outcome.status == "raised":
        facts["error"] = str(outcome.exception)
    if outcome.status == "timeout":
        facts["note"] = "the toucher blocked waiting for a handler"
    ok = outcome.status == "crashed" and signal_name == "SIGBUS"
    return Observation(
        facts, ok, f"{verb} -> {signal_name or outcome.status}", "" if ok else str(facts)
    )


def _poison_then_touch(kind: str, features: Feature) -> None:
    region = allocate(kind, 1)
    uffd = Userfaultfd.open(features | Feature.POISON)
    uffd.register(region)
    uffd.poison(region)
    region.touch(0)  # must raise SIGBUS and kill this process


@scenario(
    id="poison",
    title="UFFDIO_POISON",
    checks="a page marked with UFFDIO_POISON (6.6) raises SIGBUS on access, like a "
    "hardware memory error",
    memory=ALL_KINDS,
    features=Feature.POISON,
)
def poison(ctx: Context) -> Observation:
    return _sigbus_outcome(ctx, _poison_then_touch, "access")


def _touch_with_sigbus_feature(kind: str, features: Feature) -> None:
    region = allocate(kind, 1)
    uffd = Userfaultfd.open(features | Feature.SIGBUS)
    uffd.register(region)
    region.touch(0)  # no handler: SIGBUS instead of a fault message


@scenario(
    id="sigbus-feature",
    title="UFFD_FEATURE_SIGBUS",
    checks="with SIGBUS (4.14) a missing fault raises SIGBUS instead of queueing a message, "
    "so nothing ever waits for a handler",
    memory=ALL_KINDS,
    features=Feature.SIGBUS,
)
def sigbus_feature(ctx: Context) -> Observation:
    return _sigbus_outcome(ctx, _touch_with_sigbus_feature, "touch")
