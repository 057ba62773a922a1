"""What fault handlers of VMMs and migration tools (QEMU postcopy, CRIU lazy-pages,
Firecracker's UFFD snapshot loading) rely on beyond the basic fault loop: how a
user-mode-only uffd treats the kernel's own accesses, what close() does to blocked
faults, a discard (REMOVE) racing a fault being resolved, a registered range replaced by
MAP_FIXED, and mremap(MREMAP_DONTUNMAP) of registered memory.
"""

from __future__ import annotations

import os
from typing import Any

from .. import syscalls as sc
from ..abi import Feature, RegisterMode, flag_names
from ..events import Event, PagefaultEvent, RemapEvent, RemoveEvent, UnmapEvent
from ..maps import uffd_vm_flags
from ..memory import MemoryKind, Region
from ..pagemap import region_view
from .checks import Checks, errno_of
from .context import Background, Context, next_event
from .model import ALL_KINDS, Observation
from .registry import scenario
from .wp import BLOCK_PROBE, EVENT_TIMEOUT, FINISH_TIMEOUT, SEED, pages_for

PIPE_DATA = (b"sent-through-a-pipe." * 4)[:64]
ZEROS = b"\0" * 64


def page_states(region: Region) -> list[str]:
    """Pagemap flags per page without SOFT_DIRTY: a kernel with CONFIG_MEM_SOFT_DIRTY
    reports it on every page of a new VMA (VM_SOFTDIRTY), empty PTEs included."""
    return [
        "+".join(name for name in view.split("+") if name != "SOFT_DIRTY")
        for view in region_view(region)
    ]


def _shown(data: bytes | None) -> str | None:
    """Bytes as a JSON fact: "64 zero bytes", or the first 16 in hex."""
    if data is None:
        return None
    if not data.strip(b"\0"):
        return f"{len(data)} zero bytes"
    return data[:16].hex() + ("..." if len(data) > 16 else "")


def _event_facts(event: Event | None, region: Region | None = None) -> dict[str, Any] | None:
    """An event as JSON facts: its type and fields, a fault's flags and page."""
    if event is None:
        return None
    facts: dict[str, Any] = {"event": type(event).__name__}
    if isinstance(event, PagefaultEvent):
        facts["flags"] = flag_names(event.flags)
        inside = region is not None and region.addr <= event.address < region.end
        facts["page"] = region.page_index(event.address) if inside else None
    for name in ("old_address", "new_address", "length", "start", "end"):
        if hasattr(event, name):
            facts[name] = getattr(event, name)
    return facts


def _missing_read_at(page: int) -> dict[str, Any]:
    """The facts of a read fault on an unpopulated page (no flag: not WRITE, WP, MINOR)."""
    return {"event": "PagefaultEvent", "flags": [], "page": page}


def _zero_source(ctx: Context, region: Region) -> Region:
    """Unregistered zeroed memory the size of one of ``region``'s pages: what a handler
    copies in for a discarded page (UFFDIO_ZEROPAGE does not exist for hugetlbfs)."""
    anon = ctx.region(region.page_size // MemoryKind.ANON.page_size, kind=MemoryKind.ANON)
    return anon.view(region.page_size)


# --- user-mode-only-efault ---------------------------------------------------------------------


@scenario(
    id="user-mode-only-efault",
    title="UFFD_USER_MODE_ONLY: kernel-mode accesses get EFAULT, user-mode ones fault",
    checks="on a uffd opened with UFFD_USER_MODE_ONLY (5.11) a fault the kernel itself "
    "raises on registered memory (read(2) from a pipe into it, write(2) from it) is not "
    "queued: handle_userfault() gives VM_FAULT_SIGBUS and the syscall fails with EFAULT, "
    "while a user-mode touch of the same page raises a missing fault as usual",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    min_kernel="5.11",
)
def user_mode_only_efault(ctx: Context) -> Observation:
    region = ctx.region(2)
    source = _zero_source(ctx, region)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.MISSING), user_mode_only=True)
    uffd.register(region, mode=RegisterMode.MISSING)
    check = Checks({"user_mode_only": uffd.user_mode_only})
    # One pipe each: a write(2) blocked in a fault holds its pipe's lock.
    read_end, write_end = os.pipe()
    drain, out = os.pipe()
    calls: list[Background] = []
    try:
        os.write(write_end, PIPE_DATA)
        # Both in threads: a kernel that queued the fault would leave them blocked.
        into = Background(sc.read_into, read_end, region.addr, len(PIPE_DATA))
        from_page = Background(sc.write_from, out, region.page_addr(1), len(PIPE_DATA))
        calls += [into, from_page]
        for name, call in (("read_into_registered", into), ("write_from_registered", from_page)):
            finished = check.expect(f"{name}_returned", call.finished(FINISH_TIMEOUT), True)
            if finished:
                check.expect(name, errno_of(call.value), "EFAULT")
        queued = [_event_facts(event, region) for event in uffd.read_events(timeout=0)]
        check.expect("events_after_kernel_accesses", queued, [])
        check.expect("pagemap_after_kernel_accesses", page_states(region), ["", ""])

        toucher = Background(region.touch, 0)
        fault = next_event(uffd, timeout=EVENT_TIMEOUT)
        check.expect("user_mode_fault", _event_facts(fault, region), _missing_read_at(0))
        if isinstance(fault, PagefaultEvent):
            uffd.copy(region.page_addr(0), source.addr, region.page_size)
        check.expect("toucher_woken", toucher.finished(FINISH_TIMEOUT), True)
        os.set_blocking(read_end, False)
        left = b""
        try:
            left = os.read(read_end, 4096)  # what the refused read(2) left in the pipe
        except BlockingIOError:
            pass
        check.fact("pipe_bytes_left_after_efault", len(left))
        # The page is populated now: the kernel's own write into it needs no fault.
        os.write(write_end, PIPE_DATA)
        check.expect("read_into_populated", sc.read_into(read_end, region.addr, 64), 64)
        check.expect("populated_page", _shown(region.read(0, 64)), _shown(PIPE_DATA))
    finally:
        # A kernel access still asleep in a fault holds its pipe's lock, which closing the
        # pipe waits for: closing the uffd first wakes it (userfaultfd_release()).
        if not all(call.finished(0) for call in calls):
            uffd.close()
            for call in calls:
                call.finished(FINISH_TIMEOUT)
        for fd in (read_end, write_end, drain, out):
            os.close(fd)
    return check.observation(
        f"read(2)={check.facts.get('read_into_registered')} "
        f"write(2)={check.facts.get('write_from_registered')}, touch faulted"
    )


# --- close-wakes-faults ----------------------------------------------------------------------


@scenario(
    id="close-wakes-faults",
    title="close() of the uffd wakes the threads blocked in its faults",
    checks="closing the last reference to a uffd while threads sleep in its missing faults "
    "(userfaultfd_release(): every VMA is unregistered, then every waiter woken) lets each "
    "fault retry on the now unregistered VMA and complete as an ordinary fault: the pages "
    "read and write as zero-filled memory, no SIGBUS, no hang",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
)
def close_wakes_faults(ctx: Context) -> Observation:
    pages = pages_for(ctx, 3, 3)
    region = ctx.region(pages)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region, mode=RegisterMode.MISSING)
    reader = Background(region.read, 0, 64)
    # A plain store: a read-modify-write touch first faults as a read under TCG.
    writer = Background(region.write, b"\0", region.page_size)
    faults = [next_event(uffd, timeout=EVENT_TIMEOUT) for _ in range(2)]
    check = Checks({"pages": pages})
    seen = sorted(
        (facts["page"], facts["flags"])
        for facts in (_event_facts(fault, region) for fault in faults)
        if facts is not None and facts["event"] == "PagefaultEvent"
    )
    check.expect("faults_before_close", seen, [(0, []), (1, ["WRITE"])])
    check.expect("blocked_before_close", not reader.finished(BLOCK_PROBE), True)
    uffd.close()
    check.expect("reader_woken", reader.finished(FINISH_TIMEOUT), True)
    check.expect("writer_woken", writer.finished(FINISH_TIMEOUT), True)
    if reader.finished(0):
        check.expect("reader_saw", _shown(reader.value(0)), _shown(ZEROS))
    check.expect("uffd_vm_flags_after_close", uffd_vm_flags(region.addr, region.end), [])
    # The third page was never touched: an ordinary fault now, zero-filled.
    toucher = Background(region.touch, 2, write=True)
    check.expect("untouched_page_faults_normally", toucher.finished(FINISH_TIMEOUT), True)
    check.expect("pages_zero", region.verify(b"\0"), True)
    check.fact("pagemap_after_close", region_view(region))
    return check.observation("blocked faults completed after close")


# --- remove-during-fault ---------------------------------------------------------------------


@scenario(
    id="remove-during-fault",
    title="A REMOVE event arriving while a fault is being resolved",
    checks="while a missing fault waits, MADV_DONTNEED/MADV_REMOVE of a range including it "
    "queues UFFD_EVENT_REMOVE and marks the mm changing, so the handler's UFFDIO_COPY fails "
    "with EAGAIN (mmap_changing); once the handler has read the event and the advice "
    "has returned, the retried COPY resolves the fault, and the removed pages that held "
    "data fault again as missing",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    features=Feature.EVENT_REMOVE,
    uses=("drop",),
)
def remove_during_fault(ctx: Context) -> Observation:
    pages = 3  # 0: the faulting page, 1: populated and removed with it, 2: kept
    region = ctx.region(pages)
    source = ctx.region(pages * region.page_size // MemoryKind.ANON.page_size, kind="anon")
    content = source.view(region.page_size)
    content.fill_indexed(SEED)
    zeros = _zero_source(ctx, region)
    uffd = ctx.uffd(Feature.EVENT_REMOVE | ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region, mode=RegisterMode.MISSING)
    uffd.copy(region.page_addr(1), content.page_addr(1), 2 * region.page_size)
    check = Checks({"advice": sc.ADVICE_NAMES[ctx.spec.drop_advice]})

    toucher = Background(region.touch, 0)
    fault = next_event(uffd, timeout=EVENT_TIMEOUT)
    check.expect("fault", _event_facts(fault, region), _missing_read_at(0))
    # The handler is about to resolve it when the guest (or the VMM) discards pages 0-1.
    advisor = Background(region.madvise, ctx.spec.drop_advice, 0, 2 * region.page_size)
    uffd.wait(EVENT_TIMEOUT)  # the REMOVE message is queued: the mm is now "changing"
    resolve = (region.page_addr(0), content.page_addr(0), region.page_size)
    check.expect("copy_while_remove_pending", errno_of(uffd.copy, *resolve), "EAGAIN")
    event = next_event(uffd, timeout=EVENT_TIMEOUT)
    check.expect(
        "event", _event_facts(event), _event_facts(RemoveEvent(region.addr, region.page_addr(2)))
    )
    # userfaultfd_remove() lets the advice go on once the event is read; it zaps after.
    # Retrying before it returns could resolve the page only to see it dropped again.
    check.expect("advice_returned", advisor.finished(FINISH_TIMEOUT), True)
    check.expect("copy_after_event_read", errno_of(uffd.copy, *resolve), "ok")
    check.expect("toucher_woken", toucher.finished(FINISH_TIMEOUT), True)
    check.expect("faulting_page_data", region.find_indexed_mismatch(SEED, 0, 1), None)
    check.expect("kept_page_data", region.find_indexed_mismatch(SEED, 2, 1), None)

    # Page 1 was removed: its data is gone and its next touch faults; the handler knows it
    # was discarded and fills it with zeros.
    reader = Background(region.read, region.page_size, 64)
    refault = next_event(uffd, timeout=EVENT_TIMEOUT)
    check.expect("removed_page_fault", _event_facts(refault, region), _missing_read_at(1))
    if isinstance(refault, PagefaultEvent):
        uffd.copy(region.page_addr(1), zeros.addr, region.page_size)
    check.expect("removed_page_reads", _shown(reader.value(FINISH_TIMEOUT)), _shown(ZEROS))
    return check.observation(
        f"copy while REMOVE pending: {check.facts['copy_while_remove_pending']}"
    )


# --- map-fixed-replaced ----------------------------------------------------------------------


def _replace_variant(ctx: Context, event_unmap: bool) -> dict[str, Any]:
    pages = 2
    region = ctx.region(pages)
    source = _zero_source(ctx, region)
    features = ctx.mode_features(RegisterMode.MISSING)
    uffd = ctx.uffd(features | Feature.EVENT_UNMAP if event_unmap else features)
    uffd.register(region, mode=RegisterMode.MISSING)
    spec = ctx.spec
    # The same kind of memory (the same file for memfd and hugetlb) mapped over the range.
    flags = spec.mmap_flags | sc.MAP_FIXED
    # With EVENT_UNMAP the replacement unmaps the old VMA through userfaultfd_unmap_prep():
    # mmap() returns only once the UNMAP message is read.
    mapper = Background(sc.mmap, region.addr, region.length, sc.PROT_RW, flags, region.fd, 0)
    facts: dict[str, Any] = {"old_range": [region.addr, region.end]}
    if event_unmap:
        facts["event"] = _event_facts(next_event(uffd, timeout=EVENT_TIMEOUT))
    facts["mapped_at_same_address"] = mapper.value(FINISH_TIMEOUT) == region.addr
    facts["uffd_vm_flags_after_replace"] = uffd_vm_flags(region.addr, region.end)
    toucher = Background(region.touch, 0)
    facts["touch_after_replace_finished"] = toucher.finished(FINISH_TIMEOUT)
    facts["events_after_touch"] = [_event_facts(e) for e in uffd.read_events(timeout=0)]
    uffd.register(region, mode=RegisterMode.MISSING)
    facts["uffd_vm_flags_registered_again"] = uffd_vm_flags(region.addr, region.end)
    toucher = Background(region.touch, 1)
    fault = next_event(uffd, timeout=EVENT_TIMEOUT)
    facts["fault_after_register_again"] = _event_facts(fault, region)
    if isinstance(fault, PagefaultEvent):
        uffd.copy(region.page_addr(1), source.addr, region.page_size)
    facts["toucher_woken"] = toucher.finished(FINISH_TIMEOUT)
    uffd.close()
    region.close()  # its hugepages go back to the pool before the next variant
    return facts


@scenario(
    id="map-fixed-replaced",
    title="A registered range replaced by mmap(MAP_FIXED) is unregistered",
    checks="mmap(MAP_FIXED) over a registered range unmaps the old VMA (UFFD_EVENT_UNMAP "
    "for its range with EVENT_UNMAP, nothing without) and the new mapping is not "
    "registered: a touch there completes without a fault until UFFDIO_REGISTER again, "
    "after which touches fault as usual",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    features=Feature.EVENT_UNMAP,
)
def map_fixed_replaced(ctx: Context) -> Observation:
    check = Checks()
    for event_unmap in (False, True):
        name = "with_event_unmap" if event_unmap else "without_event_unmap"
        facts = _replace_variant(ctx, event_unmap)
        part = Checks(facts)
        if event_unmap:
            unmapped = UnmapEvent(*facts["old_range"])
            part.expect("event", facts["event"], _event_facts(unmapped))
        part.expect("mapped_at_same_address", facts["mapped_at_same_address"], True)
        part.expect("uffd_vm_flags_after_replace", facts["uffd_vm_flags_after_replace"], [])
        part.expect("touch_after_replace_finished", facts["touch_after_replace_finished"], True)
        part.expect("events_after_touch", facts["events_after_touch"], [])
        part.expect(
            "uffd_vm_flags_registered_again", facts["uffd_vm_flags_registered_again"], ["um"]
        )
        part.expect(
            "fault_after_register_again", facts["fault_after_register_again"], _missing_read_at(1)
        )
        part.expect("toucher_woken", facts["toucher_woken"], True)
        check.nest(name, part)
    return check.observation("replacement unregistered, faults again once registered")


# --- mremap-dontunmap ------------------------------------------------------------------------


def _dontunmap_variant(ctx: Context, event_remap: bool) -> dict[str, Any]:
    pages = 4
    region = ctx.region(pages)
    region.fill_indexed(SEED)
    parking = ctx.region(pages + 2, kind="anon")  # address space to move into
    features = ctx.mode_features(RegisterMode.MISSING)
    uffd = ctx.uffd(features | Feature.EVENT_REMAP if event_remap else features)
    uffd.register(region, mode=RegisterMode.MISSING)
    old, length = region.addr, region.length
    destination = parking.addr + ctx.page_size
    flags = sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED | sc.MREMAP_DONTUNMAP
    # With EVENT_REMAP mremap() returns once the REMAP message is read.
    mover = Background(region.mremap, length, flags, destination)
    facts: dict[str, Any] = {}
    if event_remap:
        facts["event"] = _event_facts(next_event(uffd, timeout=EVENT_TIMEOUT))
    mover.value(FINISH_TIMEOUT)
    facts["moved"] = region.addr == destination
    # The old range stays mapped, empty, in the region's reservation (Region.mremap keeps
    # it to unmap on close): this view owns nothing.
    left = Region(old, length, region.kind, page_size=region.page_size)
    facts["old_range_pagemap"] = page_states(left)
    facts["old_range_uffd_vm_flags"] = uffd_vm_flags(old, old + length)
    facts["new_range_uffd_vm_flags"] = uffd_vm_flags(region.addr, region.end)
    reader = Background(region.find_indexed_mismatch, SEED)
    facts["new_range_read_finished"] = reader.finished(FINISH_TIMEOUT)
    facts["new_range_mismatch"] = reader.value(0) if facts["new_range_read_finished"] else None
    facts["events_after_new_range_read"] = [_event_facts(e) for e in uffd.read_events(timeout=0)]
    toucher = Background(left.read, 0, 64)
    fault = next_event(uffd, timeout=EVENT_TIMEOUT)
    facts["old_range_fault"] = _event_facts(fault, left)
    if isinstance(fault, PagefaultEvent):
        uffd.zeropage(left.page_addr(0), left.page_size)
    finished = toucher.finished(FINISH_TIMEOUT)
    facts["old_range_reads"] = _shown(toucher.value(0)) if finished else None
    uffd.close()
    return facts


@scenario(
    id="mremap-dontunmap",
    title="mremap(MREMAP_DONTUNMAP) of registered anonymous memory",
    checks="mremap(MREMAP_DONTUNMAP) (5.7) of a populated, registered private anonymous "
    "range moves the pages to the new range and leaves the old one mapped, empty and still "
    "registered: a touch there raises a missing fault (how a VMM captures guest memory "
    "while trapping later accesses); the new range is registered only with EVENT_REMAP",
    memory=("anon",),
    modes=RegisterMode.MISSING,
    features=Feature.EVENT_REMAP,
    min_kernel="5.7",
)
def mremap_dontunmap(ctx: Context) -> Observation:
    check = Checks()
    for event_remap in (False, True):
        name = "with_event_remap" if event_remap else "without_event_remap"
        facts = _dontunmap_variant(ctx, event_remap)
        part = Checks(facts)
        if event_remap:
            event = facts["event"] or {}
            part.expect("event", event.get("event"), RemapEvent.__name__)
        part.expect("moved", facts["moved"], True)
        part.expect("old_range_pagemap", facts["old_range_pagemap"], [""] * 4)
        part.expect("old_range_uffd_vm_flags", facts["old_range_uffd_vm_flags"], ["um"])
        part.expect(
            "new_range_uffd_vm_flags",
            facts["new_range_uffd_vm_flags"],
            ["um"] if event_remap else [],
        )
        part.expect("new_range_read_finished", facts["new_range_read_finished"], True)
        part.expect("new_range_mismatch", facts["new_range_mismatch"], None)
        part.expect("events_after_new_range_read", facts["events_after_new_range_read"], [])
        part.expect("old_range_fault", facts["old_range_fault"], _missing_read_at(0))
        part.expect("old_range_reads", facts["old_range_reads"], _shown(ZEROS))
        check.nest(name, part)
    return check.observation("old range empty and registered, data moved")
