"""Read-write protection (RWP, 7.3): every access to a protected page is seen.

UFFDIO_REGISTER_MODE_RWP with UFFDIO_RWPROTECT makes the *present* PTEs of a range
inaccessible through the PROT_NONE hinting NUMA balancing uses, with the uffd PTE bit set;
the frames stay resident. A read or a write then raises a fault flagged
UFFD_PAGEFAULT_FLAG_RWP (sync) or is restored by the kernel itself with no message
(UFFD_FEATURE_RWP_ASYNC), clearing the uffd bit so PAGEMAP_SCAN reports the page
PAGE_IS_ACCESSED. Unpopulated addresses are never protected: they take the missing path.
Facts from the 7.3 UAPI (include/uapi/linux/userfaultfd.h), mm/userfaultfd.c and
Documentation/admin-guide/mm/userfaultfd.rst, "Read-Write Protection".
"""

from __future__ import annotations

from typing import Any

from .. import syscalls as sc
from ..abi import FaultFlag, Feature, PageCategory, RegisterMode, flag_names
from ..events import PagefaultEvent
from ..handler import ENGINES, FaultHandler, RwpUnprotect
from ..memory import Region
from ..pagemap import Pagemap, read_entries
from ..uffd import Userfaultfd
from .checks import Checks, errno_of, expect_errnos
from .context import Background, Context, next_event
from .model import ALL_KINDS, Observation, Skip
from .registry import scenario
from .wp import BLOCK_PROBE, EVENT_TIMEOUT, FINISH_TIMEOUT, SEED, fault_facts, pages_for

RWP_WRITE = FaultFlag.RWP | FaultFlag.WRITE
MARK = b"written-through-rwp."


def _pfns(region: Region) -> list[int]:
    """Each page's frame number from pagemap (0 without CAP_SYS_ADMIN: then not judged)."""
    return [entry.pfn for entry in read_entries(region.addr, region.length, region.page_size)]


def _accessed_pages(pagemap: Pagemap, region: Region) -> list[int]:
    """Pages PAGEMAP_SCAN reports PAGE_IS_ACCESSED (uffd bit clear on the RWP VMA)."""
    result = pagemap.scan(
        region.addr,
        region.end,
        category_mask=PageCategory.ACCESSED,
        return_mask=PageCategory.ACCESSED,
    )
    return result.page_addresses(region.page_size)


def _page_numbers(region: Region, addresses: list[int]) -> list[int]:
    return [region.page_index(address) for address in addresses]


def _fault_at(uffd: Userfaultfd) -> PagefaultEvent | None:
    event = next_event(uffd, timeout=EVENT_TIMEOUT)
    return event if isinstance(event, PagefaultEvent) else None


def blocked_access(
    uffd: Userfaultfd, region: Region, page: int, *, write: bool
) -> tuple[Background, PagefaultEvent | None]:
    """Start a read or write of ``page``; the fault it raises (or None) and the thread."""
    offset = page * region.page_size
    access = (
        Background(region.write, MARK, offset) if write else Background(region.read, offset, 64)
    )
    return access, _fault_at(uffd)


def expect_rwp_fault(
    check: Checks,
    name: str,
    fault: PagefaultEvent | None,
    region: Region,
    page: int,
    flags: FaultFlag,
) -> None:
    check.expect_that(
        name,
        fault_facts(fault, region),
        fault is not None and fault.flags == flags and fault.address == region.page_addr(page),
        f"{'+'.join(n for n in ('RWP', 'WRITE') if n in flags.name)} fault at page {page}",
    )


# --- rwp-sync --------------------------------------------------------------------------------


@scenario(
    id="rwp-sync",
    title="Read-write protection, sync: every access to a protected page faults",
    checks="on a MISSING|RWP range whose pages are populated but the last, UFFDIO_RWPROTECT "
    "makes a read and a write each block and deliver one fault flagged RWP (RWP|WRITE) at "
    "the page address; clearing RWP on the page wakes it; data and frames are unchanged; "
    "the unpopulated page takes the missing path and is not protected (7.3)",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING | RegisterMode.RWP,
)
def rwp_sync(ctx: Context) -> Observation:
    modes = RegisterMode.MISSING | RegisterMode.RWP
    pages = pages_for(ctx, 4, 3)
    hole = pages - 1
    region = ctx.region(pages)
    region.fill_indexed(SEED, 0, hole)  # the last page stays unpopulated
    uffd = ctx.uffd(ctx.mode_features(modes))
    uffd.register(region, mode=modes)
    frames_before = _pfns(region)[:hole]
    head_of_page0 = region.read(0, 64)
    uffd.rwprotect(region)

    check = Checks({"pages": pages, "page_size": region.page_size})
    reader, read_fault = blocked_access(uffd, region, 0, write=False)
    check.expect("read_blocked", not reader.finished(BLOCK_PROBE), True)
    expect_rwp_fault(check, "read_fault", read_fault, region, 0, FaultFlag.RWP)
    uffd.rwprotect(*region.span(0), protect=False)
    check.expect("reader_woken_by_unprotect", reader.finished(EVENT_TIMEOUT), True)
    read_ok = reader.finished(0) and reader.error is None and reader.value(0) == head_of_page0
    check.expect("read_content_ok", read_ok, True)

    writer, write_fault = blocked_access(uffd, region, 1, write=True)
    check.expect("write_blocked", not writer.finished(BLOCK_PROBE), True)
    expect_rwp_fault(check, "write_fault", write_fault, region, 1, RWP_WRITE)
    uffd.rwprotect(*region.span(1), protect=False)
    check.expect("writer_woken_by_unprotect", writer.finished(EVENT_TIMEOUT), True)

    # The hole: a MISSING fault (no RWP flag), resolved by COPY; the page is then not
    # RWP-protected, so the next access completes at once.
    filler = Background(region.read, hole * region.page_size, 64)
    missing = _fault_at(uffd)
    check.expect_that(
        "hole_fault",
        fault_facts(missing, region),
        missing is not None
        and missing.flags == FaultFlag(0)
        and region.page_index(missing.address) == hole,
        f"a MISSING read fault at page {hole}",
    )
    if missing is not None:
        uffd.copy(region.page_addr(hole), bytes(region.page_size))
    check.expect("hole_read_finished", filler.finished(EVENT_TIMEOUT), True)
    again = Background(region.read, hole * region.page_size, 64)
    check.expect("hole_not_protected", again.finished(FINISH_TIMEOUT), True)
    check.expect("no_fault_after_hole_resolved", uffd.read_events(timeout=0.05), [])

    written = region.read(region.page_size, len(MARK)) == MARK
    check.expect("written_data_ok", written, True)
    check.expect("page0_intact", region.find_indexed_mismatch(SEED, 0, 1), None)
    frames_after = _pfns(region)[:hole]
    if any(frames_before):
        check.expect("frames_unchanged", frames_after, frames_before)
    else:
        check.fact("frames_unchanged", "pagemap PFNs unreadable (needs CAP_SYS_ADMIN)")
    # The pages never accessed are still protected: unregistering restores their access.
    uffd.unregister(region)
    still = Background(region.touch, range(pages))
    check.expect("all_accessible_after_unregister", still.finished(FINISH_TIMEOUT), True)
    check.expect(
        "unaccessed_pages_intact",
        [p for p in range(2, hole) if region.find_indexed_mismatch(SEED, p, 1) is not None],
        [],
    )
    flags = "+".join(check.facts["write_fault"]["flags"]) if write_fault else "none"
    return check.observation(key=f"read+write faults, write={flags}")


# --- rwp-async -------------------------------------------------------------------------------


@scenario(
    id="rwp-async",
    title="Read-write protection, async: accesses tracked by PAGEMAP_SCAN",
    checks="with UFFD_FEATURE_RWP_ASYNC, reads and writes of protected pages never block and "
    "queue no message; PAGEMAP_SCAN with PAGE_IS_ACCESSED reports exactly the touched pages; "
    "UFFDIO_RWPROTECT re-arms them, after which only newly touched pages are reported (7.3)",
    memory=ALL_KINDS,
    modes=RegisterMode.RWP,
    features=Feature.RWP_ASYNC,
)
def rwp_async(ctx: Context) -> Observation:
    pages = pages_for(ctx, 6, 4)
    region = ctx.region(pages)
    region.fill_indexed(SEED)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.RWP) | Feature.RWP_ASYNC)
    uffd.register(region, mode=RegisterMode.RWP)
    check = Checks({"pages": pages, "page_size": region.page_size})
    with Pagemap() as pagemap:
        check.expect("accessed_before_protect", len(_accessed(pagemap, region)), pages)
        uffd.rwprotect(region)
        check.expect("accessed_after_protect", _accessed(pagemap, region), [])
        first = [0, pages - 2]
        reads = Background(region.touch, [first[0]])
        writes = Background(region.touch, [first[1]], write=True)
        check.expect("read_finished", reads.finished(FINISH_TIMEOUT), True)
        check.expect("write_finished", writes.finished(FINISH_TIMEOUT), True)
        check.expect("messages_queued", uffd.read_events(timeout=0.05), [])
        check.expect("accessed_after_touch", _accessed(pagemap, region), first)
        uffd.rwprotect(region)  # re-arm
        check.expect("accessed_after_rearm", _accessed(pagemap, region), [])
        second = Background(region.touch, [1])
        check.expect("second_touch_finished", second.finished(FINISH_TIMEOUT), True)
        check.expect("accessed_after_second_touch", _accessed(pagemap, region), [1])
    check.expect("data_intact", region.find_indexed_mismatch(SEED), None)
    return check.observation(key=f"accessed={check.facts['accessed_after_touch']}")


def _accessed(pagemap: Pagemap, region: Region) -> list[int]:
    return _page_numbers(region, _accessed_pages(pagemap, region))


# --- rwp-set-mode ----------------------------------------------------------------------------

SET_MODE_THREADS = 3


@scenario(
    id="rwp-set-mode",
    title="UFFDIO_SET_MODE switches RWP between sync and async under load",
    checks="threads blocked on RWP faults are released when UFFDIO_SET_MODE enables "
    "RWP_ASYNC and finish without a resolve; after disabling it, accesses block and fault "
    "again; no thread is stranded and no fault is lost; enable and disable of the same bit, "
    "unknown bits, RWP_ASYNC on a uffd without RWP and RWP_ASYNC without RWP at "
    "UFFDIO_API are EINVAL (7.3)",
    memory=ALL_KINDS,
    modes=RegisterMode.RWP,
    features=Feature.RWP_ASYNC,
)
def rwp_set_mode(ctx: Context) -> Observation:
    pages = SET_MODE_THREADS + 1
    region = ctx.region(pages)
    region.fill_indexed(SEED)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.RWP))  # sync to start with
    uffd.register(region, mode=RegisterMode.RWP)
    uffd.rwprotect(region)
    check = Checks({"threads": SET_MODE_THREADS, "page_size": region.page_size})

    blocked = [Background(region.touch, [page]) for page in range(SET_MODE_THREADS)]
    faults = _fault_pages(uffd, region, SET_MODE_THREADS)
    check.expect("sync_fault_pages", faults, list(range(SET_MODE_THREADS)))
    check.expect("sync_threads_blocked", sum(not t.finished(BLOCK_PROBE) for t in blocked), 3)
    uffd.set_mode(enable=Feature.RWP_ASYNC)  # wakes them: they resolve themselves
    released = sum(t.finished(EVENT_TIMEOUT) for t in blocked)
    check.expect("released_by_async_switch", released, SET_MODE_THREADS)

    uffd.set_mode(disable=Feature.RWP_ASYNC)
    uffd.rwprotect(region)
    again = [Background(region.touch, [page], write=True) for page in range(SET_MODE_THREADS)]
    check.expect("sync_again_fault_pages", _fault_pages(uffd, region, SET_MODE_THREADS), faults)
    check.expect("sync_again_blocked", sum(not t.finished(BLOCK_PROBE) for t in again), 3)
    uffd.rwprotect(region, protect=False)
    check.expect("woken_by_unprotect", sum(t.finished(EVENT_TIMEOUT) for t in again), 3)
    check.expect("data_intact", region.find_indexed_mismatch(SEED), None)

    both = Feature.RWP_ASYNC
    check.expect(
        "set_mode_enable_and_disable", errno_of(lambda: uffd.set_mode(both, both)), "EINVAL"
    )
    check.expect(
        "set_mode_unknown_bit", errno_of(lambda: uffd.set_mode(Feature(1 << 40))), "EINVAL"
    )
    check.expect(
        "set_mode_not_toggleable", errno_of(lambda: uffd.set_mode(Feature.SIGBUS)), "EINVAL"
    )
    user_mode_only = ctx.system.user_mode_only
    with Userfaultfd.open(api=False, user_mode_only=user_mode_only) as plain:
        plain.api_raw(0)
        check.expect(
            "set_mode_without_rwp",
            errno_of(lambda: plain.set_mode(enable=Feature.RWP_ASYNC)),
            "EINVAL",
        )
    with Userfaultfd.open(api=False, user_mode_only=user_mode_only) as fresh:
        check.expect(
            "api_rwp_async_without_rwp",
            errno_of(lambda: fresh.api_raw(int(Feature.RWP_ASYNC))),
            "EINVAL",
        )
    return check.observation(key=f"released={released}/{SET_MODE_THREADS}")


def _fault_pages(uffd: Userfaultfd, region: Region, count: int) -> list[Any]:
    """The pages of the next ``count`` faults, sorted; a fault not flagged RWP appears as
    its flags, a fault that never came as None."""
    seen: list[Any] = []
    for _ in range(count):
        fault = _fault_at(uffd)
        if fault is None:
            break
        inside = region.addr <= fault.address < region.end
        seen.append(
            region.page_index(fault.address)
            if inside and FaultFlag.RWP in fault.flags
            else "+".join(flag_names(fault.flags)) or "MISSING"
        )
    return sorted(seen, key=str) + [None] * (count - len(seen))


# --- rwp-lifetime ----------------------------------------------------------------------------


@scenario(
    id="rwp-lifetime",
    title="What drops read-write protection and what restores access",
    checks="the kind's drop (MADV_DONTNEED on private memory, hole punch on shared) frees "
    "the PTE and its protection: the next access re-populates without a fault, as "
    "documented (no RWP marker); closing the uffd restores access to every protected page, "
    "data intact (7.3)",
    memory=ALL_KINDS,
    modes=RegisterMode.RWP,
    uses=("drop",),
)
def rwp_lifetime(ctx: Context) -> Observation:
    pages = pages_for(ctx, 4, 3)
    region = ctx.region(pages)
    region.fill_indexed(SEED)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.RWP))
    uffd.register(region, mode=RegisterMode.RWP)
    uffd.rwprotect(region)
    check = Checks({"pages": pages, "page_size": region.page_size})

    sc.madvise(*region.span(0), ctx.spec.drop_advice)
    refill = Background(region.read, 0, 64)
    check.expect("dropped_page_access_finished", refill.finished(FINISH_TIMEOUT), True)
    check.expect("dropped_page_faulted", uffd.read_events(timeout=0.05), [])
    check.expect("dropped_page_zero", refill.finished(0) and refill.value(0) == bytes(64), True)

    probe = Background(region.touch, [1])
    fault = _fault_at(uffd)
    expect_rwp_fault(check, "kept_page_fault", fault, region, 1, FaultFlag.RWP)
    uffd.close()  # release wakes the reader; its retry must find the page accessible
    check.expect("blocked_reader_done_after_close", probe.finished(EVENT_TIMEOUT), True)
    rest = Background(region.touch, range(1, pages), write=True)
    check.expect("all_accessible_after_close", rest.finished(FINISH_TIMEOUT), True)
    check.expect("data_intact", region.find_indexed_mismatch(SEED, 1, pages - 1), None)
    return check.observation(key="drop unprotects, close restores")


# --- rwp-swap --------------------------------------------------------------------------------


@scenario(
    id="rwp-swap",
    title="Read-write protection survives swap-out",
    checks="an RWP-protected anonymous page swapped out with MADV_PAGEOUT keeps its "
    "protection (the marker rides on the swap entry): the first access after swap-in "
    "faults with RWP, data intact (7.3; needs swap)",
    memory=("anon",),
    modes=RegisterMode.RWP,
)
def rwp_swap(ctx: Context) -> Observation:
    ctx.require_swap()
    pages = 2
    region = ctx.region(pages)
    region.fill_indexed(SEED)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.RWP))
    uffd.register(region, mode=RegisterMode.RWP)
    uffd.rwprotect(region)
    sc.madvise(*region.span(0), sc.MADV_PAGEOUT)
    check = Checks({"pages": pages})
    entry = read_entries(region.addr, region.page_size)[0]
    check.fact("swapped_out", entry.swapped)
    if not entry.swapped:
        raise Skip("MADV_PAGEOUT did not swap the page out (swap full or refused)")
    reader = Background(region.read, 0, 64)
    fault = _fault_at(uffd)
    expect_rwp_fault(check, "fault_after_swap_in", fault, region, 0, FaultFlag.RWP)
    uffd.rwprotect(*region.span(0), protect=False)
    check.expect("reader_woken", reader.finished(EVENT_TIMEOUT), True)
    # Page 1 is still protected: reading it here would block this thread for good.
    uffd.rwprotect(*region.span(1), protect=False)
    check.expect("data_intact", region.find_indexed_mismatch(SEED), None)
    return check.observation(key="protection kept through swap")


# --- rwp-bad-inputs --------------------------------------------------------------------------


@scenario(
    id="rwp-bad-inputs",
    title="The error paths of UFFDIO_RWPROTECT and RWP registration",
    checks="UFFDIO_RWPROTECT refuses an unaligned start or length, a zero length, unknown "
    "mode bits and RWP|DONTWAKE with EINVAL, a range not registered with RWP with ENOENT; "
    "registering WP|RWP (they share the uffd PTE bit) or RWP without UFFD_FEATURE_RWP is "
    "EINVAL; on hugetlbfs a range not aligned to the huge page is EINVAL (7.3)",
    memory=("anon", "hugetlb"),
    modes=RegisterMode.MISSING | RegisterMode.WP | RegisterMode.RWP,
)
def rwp_bad_inputs(ctx: Context) -> Observation:
    page = ctx.page_size
    region = ctx.region(3)
    region.fill(b"r")
    # WP negotiated too, so WP|RWP is refused for sharing the PTE bit, not for a feature.
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.MISSING | RegisterMode.WP | RegisterMode.RWP))
    uffd.register(region.addr, 2 * page, RegisterMode.RWP)
    uffd.register(region.addr + 2 * page, page, RegisterMode.MISSING)
    base = region.addr
    cases = {
        "unaligned_start": (lambda: uffd.rwprotect(base + 8, page), "EINVAL"),
        "unaligned_length": (lambda: uffd.rwprotect(base, 100), "EINVAL"),
        "zero_length": (lambda: uffd.rwprotect(base, 0), "EINVAL"),
        "unknown_mode": (lambda: uffd.rwprotect_raw(base, page, 1 << 5), "EINVAL"),
        "protect_and_dontwake": (lambda: uffd.rwprotect_raw(base, page, 0b11), "EINVAL"),
        "not_rwp_registered": (lambda: uffd.rwprotect(base + 2 * page, page), "ENOENT"),
        "register_wp_and_rwp": (
            lambda: uffd.register(base, page, RegisterMode.WP | RegisterMode.RWP),
            "EINVAL",
        ),
    }
    if ctx.memory.is_hugetlb:
        small = 4096
        cases["hugetlb_unaligned_range"] = (lambda: uffd.rwprotect(base, small), "EINVAL")
    plain = ctx.uffd()  # UFFDIO_API without UFFD_FEATURE_RWP
    unregistered = ctx.region(1, kind="anon")
    cases["register_without_feature"] = (
        lambda: plain.register(unregistered, mode=RegisterMode.RWP),
        "EINVAL",
    )
    errnos = expect_errnos(cases)
    check = Checks()
    check.nest("errno", errnos)
    wrong = len(errnos.problems)
    return check.observation(key=f"{len(cases) - wrong}/{len(cases)} errno as documented")


# --- rwp-working-set -------------------------------------------------------------------------


@scenario(
    id="rwp-working-set",
    title="The documented VMM working-set workflow, end to end",
    checks="a memfd mapped twice (guest view RWP|MISSING-registered, I/O view plain): async "
    "RWPROTECT, guest accesses, switch to sync, hot set from PAGEMAP_SCAN PAGE_IS_ACCESSED "
    "equals the pages accessed; the cold pages are saved through the I/O view (no fault), "
    "punched and woken; a guest access blocked on a cold page during eviction retries as a "
    "MISSING fault, resolved by UFFDIO_COPY from the saved copy: every page's data intact "
    "(userfaultfd.rst, 7.3)",
    memory=("memfd", "hugetlb"),
    modes=RegisterMode.MISSING | RegisterMode.RWP,
    features=Feature.RWP_ASYNC,
)
def rwp_working_set(ctx: Context) -> Observation:
    modes = RegisterMode.MISSING | RegisterMode.RWP
    pages = pages_for(ctx, 6, 4)
    guest = ctx.region(pages)
    guest.fill_indexed(SEED)
    io_view = guest.alias()
    uffd = ctx.uffd(ctx.mode_features(modes) | Feature.RWP_ASYNC)
    uffd.register(guest, mode=modes)
    check = Checks({"pages": pages, "page_size": guest.page_size})
    hot = [1, pages - 1]
    cold = [p for p in range(pages) if p not in hot]

    with Pagemap() as pagemap:
        uffd.rwprotect(guest)  # 1. detection, async: the guest never stalls
        vcpu = Background(guest.touch, hot, write=True)
        check.expect("async_accesses_finished", vcpu.finished(FINISH_TIMEOUT), True)
        uffd.set_mode(disable=Feature.RWP_ASYNC)  # 2. freeze the snapshot
        check.expect("hot_set", _accessed(pagemap, guest), hot)  # 3.
        # A guest access to a cold page now blocks: it must survive the eviction.
        late = Background(guest.read, cold[0] * guest.page_size, 64)
        late_fault = _fault_at(uffd)
        expect_rwp_fault(
            check, "cold_access_during_eviction", late_fault, guest, cold[0], FaultFlag.RWP
        )
        storage = {}
        for page in cold:  # 4. save through the I/O view, punch, wake
            storage[page] = io_view.read(page * guest.page_size, guest.page_size)
            guest.punch_hole(page * guest.page_size, guest.page_size)
            uffd.wake(*guest.span(page))
        retry = _fault_at(uffd)  # the woken guest access, now a MISSING fault
        check.expect_that(
            "retried_as_missing",
            fault_facts(retry, guest),
            retry is not None
            and retry.flags == FaultFlag(0)
            and retry.address == guest.page_addr(cold[0]),
            f"a MISSING read fault at page {cold[0]}",
        )
        if retry is not None:
            uffd.copy(guest.page_addr(cold[0]), storage[cold[0]])
        check.expect("late_access_finished", late.finished(EVENT_TIMEOUT), True)
        uffd.set_mode(enable=Feature.RWP_ASYNC)  # 5. resume tracking
        # The other evicted pages come back through MISSING faults, served from storage.
        refaults: list[int] = []
        for page in cold[1:]:
            reader = Background(guest.read, page * guest.page_size, 64)
            fault = _fault_at(uffd)
            if fault is not None and fault.flags == FaultFlag(0):
                refaults.append(guest.page_index(fault.address))
                uffd.copy(fault.address, storage[guest.page_index(fault.address)])
            reader.finished(EVENT_TIMEOUT)
        check.expect("refaulted_pages", refaults, cold[1:])
    check.expect("data_intact", guest.find_indexed_mismatch(SEED), None)
    return check.observation(key=f"hot={hot} evicted={len(cold)}")


# --- rwp-handlers ----------------------------------------------------------------------------


@scenario(
    id="rwp-handlers",
    title="RWP faults served by a FaultHandler on every engine",
    checks="on the native, thread and process engines, RwpUnprotect(record=True) resolves "
    "every read and then every write of an RWP-protected range: each page faults once per "
    "pass with the RWP flag, the recorded addresses are the pages, nobody stays blocked "
    "and the data is intact (7.3)",
    memory=ALL_KINDS,
    modes=RegisterMode.RWP,
)
def rwp_handlers(ctx: Context) -> Observation:
    pages = pages_for(ctx, 8, 1)
    check = Checks({"pages_per_engine": pages})
    for engine in ENGINES:
        region = ctx.region(pages)
        region.fill_indexed(SEED)
        uffd = ctx.uffd(ctx.mode_features(RegisterMode.RWP))
        uffd.register(region, mode=RegisterMode.RWP)
        served = Checks()
        with FaultHandler(uffd, RwpUnprotect(record=True), region, engine=engine) as handler:
            for write in (False, True):
                uffd.rwprotect(region)
                # Writes are plain stores (rewriting the same content), not touch(write=True):
                # qemu's single-vCPU TCG emulates an atomic add as a load and then a store,
                # so on a protected page it raises a read fault; real CPUs and MTTCG a write.
                toucher = (
                    Background(region.fill_indexed, SEED)
                    if write
                    else Background(region.touch, range(pages))
                )
                served.expect(
                    f"{'writes' if write else 'reads'}_finished",
                    toucher.finished(EVENT_TIMEOUT),
                    True,
                )
        stats = handler.stats
        served.expect("rwp_read_faults", stats.faults.rwp_read, pages)
        served.expect("rwp_write_faults", stats.faults.rwp_write, pages)
        served.expect("other_faults", stats.faults.total - stats.faults.rwp, 0)
        pages_seen = sorted(region.page_index(address) for address in stats.wp_addresses)
        served.expect("recorded_pages", pages_seen, sorted(list(range(pages)) * 2))
        served.expect("data_intact", region.find_indexed_mismatch(SEED), None)
        check.nest(engine, served)
    return check.observation(key=f"{len(ENGINES)} engines x {pages} pages x read+write")
