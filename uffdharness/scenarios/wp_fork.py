"""uffd-wp state across fork(): without UFFD_FEATURE_EVENT_FORK the child's VMAs are not
registered and must inherit no uffd-wp bits or PTE markers; with it the child inherits
them on a new uffd, served here by a FaultHandler on the ``process`` engine (fork() sleeps
until the fork event is read, and os.fork() keeps the GIL meanwhile, so no thread of the
forking process could read it).
"""

from __future__ import annotations

import contextlib
import errno
import signal
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .. import syscalls as sc
from ..abi import FaultFlag, Feature, RegisterMode, flag_names
from ..errors import HarnessError, UffdError
from ..handler import FaultCounts, FaultHandler, HandlerStats, Unprotect
from ..isolation import run_in_child
from ..kernelversion import parse as parse_version
from ..maps import uffd_vm_flags
from ..memory import MemoryKind, Region
from ..pagemap import read_entries, region_view, wp_pages
from ..pin import LongTermPin
from ..pin import unavailable_reason as pin_unavailable_reason
from ..uffd import Userfaultfd
from .checks import Checks, errno_of
from .context import Background, Context
from .model import KnownBug, NonEmpty, Observation, Skip
from .registry import scenario
from .wp import (
    EVENT_TIMEOUT,
    SEED,
    WP_WRITE,
    offset_span,
    pages_for,
    require_pagemap_uffd_wp,
)

WP_FORK_FIX = KnownBug(
    fixed_in="6.2",
    fix="mm/uffd: fix pte marker when fork() without fork event",
    signature="fork() without EVENT_FORK copies uffd-wp PTE markers into the child, whose "
    "VMA is not registered: the child's pagemap shows uffd-wp bits (and the kernel WARNs)",
    # Cc: stable 5.19+; in the linux-6.1.y stable queue of 2023-02-07 (released as 6.1.11).
    backports=("6.1.11",),
)

HUGETLB_FORK_FIX = KnownBug(
    fixed_in="6.4",
    fix="mm/hugetlb: fix uffd-wp during fork()",
    signature="fork() without EVENT_FORK keeps the uffd-wp bit on the child's present "
    "private hugetlb pages: the child's pagemap shows it and the child's write to such a "
    "page never completes",
    # Cc: stable; the 6.1-stable application FAILED (gregkh, 2023-05-07) and Debian 6.1.192
    # still shows the bug, so no backport is listed.
)

# Both bugs leave uffd-wp state in a child whose VMA is not registered: bits in its
# pagemap, or a write that never completes (or corrupts) because nobody resolves them.
UNREGISTERED_VARIANTS = ("without_event_fork", "private_alias_without_event_fork")
CHILD_INHERITED_WP = tuple(
    {f"{variant}.{fact}": wanted}
    for variant in UNREGISTERED_VARIANTS
    for fact, wanted in (
        ("child_wp_pages", NonEmpty()),
        ("child_write_finished", False),
        ("child_data_intact", False),
    )
)


def _inspect_in_child(region: Region) -> dict[str, Any]:
    """Runs in the forked child: its own pagemap view of the inherited range, then a write
    to every page (bounded: a write that faults to nobody must not hang the child)."""
    facts: dict[str, Any] = {
        "pagemap": region_view(region),
        "wp_pages": wp_pages(region),
        "vm_flags": uffd_vm_flags(region.addr, region.end),
    }
    writer = Background(region.touch, None, write=True)
    facts["write_finished"] = writer.finished(EVENT_TIMEOUT)
    # Page 0 is the one populated page no variant zaps.
    facts["data_intact"] = (
        facts["write_finished"] and region.find_indexed_mismatch(SEED, 0, 1) is None
    )
    return facts


def _fault_flags(counts: FaultCounts) -> list[list[str]]:
    """The flags of every fault the handler read. uffd_msg.arg.pagefault.flags holds the
    mode's bit (none for MISSING, WP, MINOR) and WRITE, exactly what FaultCounts counts."""
    seen: list[list[str]] = []
    for mode, reads, writes in (
        (FaultFlag(0), counts.missing_read, counts.missing_write),
        (FaultFlag.WP, counts.wp_read, counts.wp_write),
        (FaultFlag.MINOR, counts.minor_read, counts.minor_write),
    ):
        seen += [flag_names(mode)] * reads + [flag_names(mode | FaultFlag.WRITE)] * writes
    return seen


def _stop(handler: FaultHandler) -> tuple[HandlerStats, str | None]:
    """Stop ``handler``: its final stats, and why it failed (an ioctl the kernel refused)."""
    try:
        return handler.stop(), None
    except (UffdError, HarnessError) as exc:
        return handler.stats, str(exc)


def fork_and_inspect(
    region: Region,
    uffd: Userfaultfd,
    event_fork: bool,
    protect: Callable[[], dict[str, Any]],
    inspect: Callable[[Region], dict[str, Any]] = _inspect_in_child,
) -> dict[str, Any]:
    """Run ``protect`` (register and write-protect ``region``; its facts come first), fork
    a child that runs ``inspect`` on its copy, and report what parent and child saw.

    With EVENT_FORK the child's uffd arrives in a fork event; a handler on the process
    engine adopts it with the parent's ranges and unprotects each page the child writes.
    The parent writes nothing meanwhile, so every fault it counts is the child's. It starts
    (forks its helper) before ``protect``: fork() copies the page tables of a VMA
    registered for uffd-wp even when shared (vma_needs_copy(), "mm/shmem: handle uffd-wp
    during fork()", 5.19), and the helper must not map the pages whose pagemap entries
    (PM_MMAP_EXCLUSIVE among them) the parent reports."""
    handler = FaultHandler(uffd, Unprotect(), region, engine="process") if event_fork else None
    served: tuple[HandlerStats, str | None] | None = None
    try:
        if handler is not None:
            handler.start()
        facts = protect()
        facts["parent_pagemap"] = region_view(region)
        facts["parent_wp_pages"] = wp_pages(region)
        outcome = run_in_child(inspect, region, timeout=10)
        # before stop(), which unregisters the range
        facts["parent_wp_pages_after_fork"] = wp_pages(region)
    finally:
        if handler is not None:
            served = _stop(handler)
    facts["child"] = outcome.status
    if outcome.status == "ok":
        facts.update({f"child_{name}": value for name, value in outcome.value.items()})
    elif outcome.signal:
        facts["child_signal"] = signal.Signals(outcome.signal).name
    elif outcome.exception is not None:
        facts["child_error"] = str(outcome.exception)
    if served is not None:
        stats, failure = served
        facts["fork_events"] = stats.events["fork"]
        facts["child_faults"] = _fault_flags(stats.faults)
        if failure is not None:
            facts["handler_failure"] = failure
    return facts


def _fork_variant(ctx: Context, event_fork: bool, private_alias: bool = False) -> dict[str, Any]:
    """Protect a range (page 1 then zapped, the last page never populated), fork, and
    report what the child inherited. With ``private_alias`` the range is a MAP_PRIVATE
    mapping of the memfd: a file VMA with an anon_vma, so fork() copies its page tables
    and meets its PTE markers (the case fixed in 6.2; shared file VMAs are not copied)."""
    pages = pages_for(ctx, 4, 3)
    base = ctx.region(pages)
    region = base.alias(shared=False) if private_alias else base
    region.fill_indexed(SEED, 0, pages - 1)
    features = ctx.mode_features(RegisterMode.WP)
    if ctx.spec.family == "anon" and ctx.offered & Feature.WP_UNPOPULATED:
        features |= Feature.WP_UNPOPULATED  # markers on anon too (6.4)
    if event_fork:
        features |= Feature.EVENT_FORK
    uffd = ctx.uffd(features)

    def protect() -> dict[str, Any]:
        uffd.register(region, mode=RegisterMode.WP)
        uffd.writeprotect(region)
        # A zapped protected page: a PTE marker on file memory (5.19), nothing on anon.
        region.madvise(sc.MADV_DONTNEED, *offset_span(region, 1, 1))
        return {"features": flag_names(features)}

    facts = fork_and_inspect(region, uffd, event_fork, protect)
    uffd.close()  # no later fork may wait for an event of this uffd
    base.close()
    return facts


def judge_fork(name: str, facts: dict[str, Any], bits_visible: bool) -> Checks:
    """A variant's facts with what a fixed kernel shows: without EVENT_FORK the child
    inherits nothing; with it the child inherits the parent's bits and faults on each."""
    check = Checks(facts)
    if not check.expect("child", facts["child"], "ok"):
        for detail in ("child_signal", "child_error"):
            if detail in facts:
                check.expect(detail, facts[detail], None)
        return check
    check.expect("child_write_finished", facts["child_write_finished"], True)
    check.expect("child_data_intact", facts["child_data_intact"], True)
    if name in UNREGISTERED_VARIANTS:
        check.expect("child_wp_pages", facts["child_wp_pages"], [])
        check.expect("child_vm_flags", facts["child_vm_flags"], [])
        return check
    check.expect("child_wp_pages", facts["child_wp_pages"], facts["parent_wp_pages"])
    check.expect("child_vm_flags", facts["child_vm_flags"], ["uw"])
    check.expect("fork_events", facts["fork_events"], 1)
    faults = facts["child_faults"]
    expected = len(facts["parent_wp_pages"]) if bits_visible else len(faults) or 1
    check.expect("child_faults", faults, [flag_names(WP_WRITE)] * expected)
    if "handler_failure" in facts:
        check.expect("handler_failure", facts["handler_failure"], None)
    return check


def _wp_fork(ctx: Context) -> Observation:
    variants = {"without_event_fork": _fork_variant(ctx, False)}
    if ctx.memory is MemoryKind.MEMFD:  # a shmem file to map MAP_PRIVATE
        variants["private_alias_without_event_fork"] = _fork_variant(ctx, False, True)
    # EVENT_FORK is declared: the runner skipped this scenario where the kernel lacks it or
    # this process lacks CAP_SYS_PTRACE for it.
    variants["with_event_fork"] = _fork_variant(ctx, True)
    bits_visible = ctx.system.pagemap_uffd_wp
    check = Checks()
    for name, facts in variants.items():
        check.nest(name, judge_fork(name, facts, bits_visible))
    check.fact("pagemap_reports_uffd_wp", bits_visible)
    parts = [
        f"{name.replace('_event_fork', '')}={facts.get('child_wp_pages')}"
        for name, facts in variants.items()
    ]
    return check.observation("child wp pages: " + " ".join(parts))


FORK_CHECKS = (
    "without EVENT_FORK the child's VMA is not registered, so it must inherit no uffd-wp "
    "bits or PTE markers and its writes complete; with EVENT_FORK the child inherits them "
    "and each write to a protected page raises a WP fault on the child's new uffd"
)

wp_fork = scenario(
    id="wp-fork",
    title="uffd-wp state across fork(), with and without EVENT_FORK",
    checks=FORK_CHECKS + " (markers: 'mm/uffd: fix pte marker when fork() without fork "
    "event', 6.2)",
    memory=("anon", "shmem", "memfd", "memfd-private", "hugetlb"),
    modes=RegisterMode.WP,
    features=Feature.EVENT_FORK,  # the with-EVENT_FORK variant; needs CAP_SYS_PTRACE
    uses=("zap",),
    hugepages=8,
    known_bug=WP_FORK_FIX.showing(*CHILD_INHERITED_WP),
)(_wp_fork)

# Private hugetlb is copied at fork by copy_hugetlb_page_range(), which kept the uffd-wp
# bit of present pages for a child without EVENT_FORK until 6.4; the child's writes to
# such a page then never complete (measured on Debian 6.1.192). Its own entry, because
# the fix differs from the one above.
wp_fork_hugetlb_private = scenario(
    id="wp-fork-hugetlb-private",
    title="uffd-wp state across fork() of private hugetlb, with and without EVENT_FORK",
    checks=FORK_CHECKS + " (private hugetlb: 'mm/hugetlb: fix uffd-wp during fork()', 6.4)",
    memory=("hugetlb-private",),
    modes=RegisterMode.WP,
    features=Feature.EVENT_FORK,
    uses=("zap",),
    hugepages=8,
    known_bug=HUGETLB_FORK_FIX.showing(*CHILD_INHERITED_WP),
)(_wp_fork)


# --- wp-fork-pin ---------------------------------------------------------------------------------

# Early CoW of a pinned private hugetlb page (copy_hugetlb_page_range() -> the installer of
# the new folio) dropped the parent's uffd-wp bit for a child with EVENT_FORK until this
# same 6.4 fix; the child then writes the copy without a fault.
HUGETLB_PIN_FORK_FIX = replace(
    HUGETLB_FORK_FIX,
    signature="fork() with EVENT_FORK copies a long-term-pinned private hugetlb page for "
    "the child at once (early CoW) without its uffd-wp bit: the child's copy is not "
    "write-protected and its write raises no fault",
    memory=("hugetlb-private",),
)


def _pin_refused(exc: UffdError, ctx: Context) -> Skip:
    """The Skip for a registration io_uring refused (a ring opened: checked first)."""
    if exc.errno == errno.EOPNOTSUPP:
        return Skip(
            f"io_uring refuses {ctx.memory.value} memory as a fixed buffer (EOPNOTSUPP): "
            "this kernel pins no file-backed pages but hugetlbfs"
        )
    if exc.errno == errno.ENOMEM:
        return Skip("io_uring cannot pin: RLIMIT_MEMLOCK too small and no CAP_IPC_LOCK (ENOMEM)")
    raise exc


def _pfns(region: Region) -> list[int]:
    """Each page's frame number (0 without CAP_SYS_ADMIN)."""
    return [entry.pfn for entry in read_entries(region.addr, region.length, region.page_size)]


def _inspect_pinned_child(region: Region) -> dict[str, Any]:
    """Runs in the forked child: which frames it got (a copy, for a pinned private page),
    then what _inspect_in_child sees, then the uffd-wp bits left once it has written."""
    pfns = _pfns(region)
    facts = _inspect_in_child(region)
    facts["pfns"] = pfns
    facts["wp_pages_after_write"] = wp_pages(region)
    return facts


def _pin_in_child(region: Region) -> dict[str, Any]:
    """Runs in the forked child: pin the populated pages it shares with the parent, then
    inspect as _inspect_pinned_child does. io_uring pins FOLL_WRITE: a write fault taken by
    the kernel (GUP), which unshares each copy-on-write page and, on a page still
    write-protected in a registered VMA, first raises a WP fault on the child's uffd. In
    a thread: a pin nobody resolves must not keep the child from reporting."""
    pfns = _pfns(region)
    facts: dict[str, Any] = {"wp_pages_at_fork": wp_pages(region)}
    pinner = Background(LongTermPin, *region.span(0, region.pages - 1))
    facts["pin_finished"] = pinner.finished(EVENT_TIMEOUT)
    if facts["pin_finished"]:
        facts["pin"] = errno_of(pinner.value, 0)
    facts["pfns_after_pin"] = _pfns(region)
    facts["wp_pages_after_pin"] = wp_pages(region)
    facts.update(_inspect_pinned_child(region))
    facts["pfns"] = pfns
    if facts.get("pin") == "ok":
        pinner.value(0).close()  # at once: the ring's own teardown would unpin later
    return facts


def _pinned_fork_variant(ctx: Context, event_fork: bool, pin_in_child: bool) -> dict[str, Any]:
    """Populate all but the last page, protect the range, fork, and report what the child
    got; the populated pages pinned long-term before the fork, or by the child after it.

    A pinned anonymous page of a private mapping may be written through the pin behind
    the kernel's back, so fork() cannot share it copy-on-write: it copies it for the child
    at once (copy_present_page(), page_needs_cow_for_dma()), and that copy must carry the
    uffd-wp bit exactly when the child's VMA stays registered ("mm/userfaultfd: fix uffd-wp
    special cases for fork()", 5.13; hugetlb 6.4)."""
    pages = 3
    populated = pages - 1
    region = ctx.region(pages)
    features = ctx.mode_features(RegisterMode.WP)
    uffd = ctx.uffd(features | Feature.EVENT_FORK if event_fork else features)
    parent_pfns: list[int] = []

    with contextlib.ExitStack() as pins:

        def protect() -> dict[str, Any]:
            region.fill_indexed(SEED, 0, populated)
            # Pinned before the protection: io_uring pins FOLL_WRITE, and a write pin of a
            # write-protected page would raise a (kernel-mode) WP fault.
            if not pin_in_child:
                try:
                    pins.enter_context(LongTermPin(*region.span(0, populated)))
                except UffdError as exc:
                    raise _pin_refused(exc, ctx) from None
            uffd.register(region, mode=RegisterMode.WP)
            uffd.writeprotect(region)
            parent_pfns.extend(_pfns(region))
            return {"pinned_pages": list(range(populated))}

        inspect = _pin_in_child if pin_in_child else _inspect_pinned_child
        facts = fork_and_inspect(region, uffd, event_fork, protect, inspect)
        # The populated pages only: an unregister (the handler's stop) clears a marker.
        facts["parent_pfns_kept"] = _pfns(region)[:populated] == parent_pfns[:populated]
    if facts["child"] == "ok":

        def copied(child_pfns: list[int]) -> list[int] | None:
            """The populated pages whose frame the child does not share (root only)."""
            if not (all(parent_pfns[:populated]) and all(child_pfns[:populated])):
                return None
            return [page for page in range(populated) if child_pfns[page] != parent_pfns[page]]

        at_fork = copied(facts.pop("child_pfns"))
        if at_fork is not None:
            facts["copied_at_fork"] = at_fork
        if pin_in_child:
            by_pin = copied(facts.pop("child_pfns_after_pin"))
            if by_pin is not None:
                facts["copied_by_pin"] = by_pin
        elif event_fork:
            lost = set(facts["parent_wp_pages"]) - set(facts["child_wp_pages"])
            facts["lost_wp_pages"] = sorted(lost)
    uffd.close()
    region.close()
    return facts


def _judge_pinned_before_fork(ctx: Context, name: str, facts: dict[str, Any]) -> Checks:
    check = judge_fork(name, facts, ctx.system.pagemap_uffd_wp)
    check.expect(
        "parent_wp_pages_after_fork", facts["parent_wp_pages_after_fork"], facts["parent_wp_pages"]
    )
    check.expect("parent_pfns_kept", facts["parent_pfns_kept"], True)
    if facts["child"] != "ok":
        return check
    # A shared mapping's pages are the file's: fork() never copies them, pinned or not.
    copied = facts["pinned_pages"] if not ctx.spec.shared else []
    if "copied_at_fork" in facts:
        check.expect("copied_at_fork", facts["copied_at_fork"], copied)
    # Every page was written: each fault (with EVENT_FORK) was resolved by unprotecting it.
    check.expect("child_wp_pages_after_write", facts["child_wp_pages_after_write"], [])
    return check


# From 6.5 io_uring pins with pin_user_pages_fast(), whose slow path may drop mmap_lock
# and so wait for a uffd handler ('io_uring: rsrc: avoid use of vmas parameter in
# pin_user_pages()'); measured: EFAULT on Debian's 6.1, the fault served on 6.12.
PIN_WAITS_FOR_UFFD = "6.5"


def _judge_pinned_in_child(ctx: Context, name: str, facts: dict[str, Any]) -> Checks:
    check = Checks(facts)
    check.expect(
        "parent_wp_pages_after_fork", facts["parent_wp_pages_after_fork"], facts["parent_wp_pages"]
    )
    check.expect("parent_pfns_kept", facts["parent_pfns_kept"], True)
    if not check.expect("child", facts["child"], "ok"):
        for detail in ("child_signal", "child_error"):
            if detail in facts:
                check.expect(detail, facts[detail], None)
        return check
    registered = name not in UNREGISTERED_VARIANTS
    at_fork = facts["parent_wp_pages"] if registered else []
    check.expect("child_wp_pages_at_fork", facts["child_wp_pages_at_fork"], at_fork)
    check.expect("child_pin_finished", facts["child_pin_finished"], True)
    pin_can_wait = ctx.kernel >= parse_version(PIN_WAITS_FOR_UFFD)
    if registered and not pin_can_wait:
        # io_uring pinned with pin_user_pages() and no way to drop mmap_lock, so
        # handle_userfault() refuses the fault (no FAULT_FLAG_ALLOW_RETRY: VM_FAULT_SIGBUS,
        # nothing queued): the registration fails with EFAULT and changes no page.
        check.expect("child_pin", facts.get("child_pin"), "EFAULT")
        pinned = set()
    else:
        check.expect("child_pin", facts.get("child_pin"), "ok")
        pinned = set(facts["pinned_pages"])
    # The pin's write faults unprotected the pages it pinned (with EVENT_FORK); what is
    # left protected is the page nobody populated (a marker on file memory).
    left = [page for page in facts["parent_wp_pages"] if page not in pinned]
    check.expect(
        "child_wp_pages_after_pin", facts["child_wp_pages_after_pin"], left if registered else []
    )
    check.expect("child_vm_flags", facts["child_vm_flags"], ["uw"] if registered else [])
    check.expect("child_write_finished", facts["child_write_finished"], True)
    check.expect("child_data_intact", facts["child_data_intact"], True)
    check.expect("child_wp_pages_after_write", facts["child_wp_pages_after_write"], [])
    if "copied_at_fork" in facts:  # nothing was pinned at fork: every page shared
        check.expect("copied_at_fork", facts["copied_at_fork"], [])
    if "copied_by_pin" in facts:  # a write pin unshares each private page
        copied = sorted(pinned) if not ctx.spec.shared else []
        check.expect("copied_by_pin", facts["copied_by_pin"], copied)
    if registered:
        check.expect("fork_events", facts["fork_events"], 1)
        # One WP|WRITE per protected page: the pin's for the populated pages, the
        # child's write for the rest.
        wanted = [flag_names(WP_WRITE)] * len(facts["parent_wp_pages"])
        check.expect("child_faults", facts["child_faults"], wanted)
        if "handler_failure" in facts:
            check.expect("handler_failure", facts["handler_failure"], None)
    return check


@scenario(
    id="wp-fork-pin",
    title="uffd-wp state across fork() of long-term-pinned pages",
    checks="fork() copies a long-term-pinned (io_uring fixed buffer) private anonymous page "
    "for the child at once (early CoW, copy_present_page()); the copy carries the uffd-wp "
    "bit with EVENT_FORK, so the child's write faults on its uffd, and not without it; "
    "a write pin the child takes after fork() unshares its pages and, with EVENT_FORK, "
    "first raises a WP fault for each ('mm/userfaultfd: fix uffd-wp special cases for "
    "fork()', 5.13; private hugetlb: 'mm/hugetlb: fix uffd-wp during fork()', 6.4)",
    memory=("anon", "shmem", "memfd", "memfd-private", "hugetlb", "hugetlb-private"),
    modes=RegisterMode.WP,
    features=Feature.EVENT_FORK,
    kernel_faults="the child's io_uring pin (GUP, FOLL_WRITE) of write-protected pages",
    hugepages=8,
    known_bug=HUGETLB_PIN_FORK_FIX.showing(
        {"pinned_before_fork.with_event_fork.lost_wp_pages": NonEmpty()},
        {"pinned_in_child.without_event_fork.child_wp_pages_at_fork": NonEmpty()},
    ),
)
def wp_fork_pin(ctx: Context) -> Observation:
    # The copy's bit is what is judged; before 5.14 pagemap cannot show it.
    require_pagemap_uffd_wp(ctx)
    unavailable = pin_unavailable_reason()
    if unavailable:
        raise Skip(unavailable)
    check = Checks()
    summary = []
    for pin_in_child, judge in ((False, _judge_pinned_before_fork), (True, _judge_pinned_in_child)):
        part = Checks()
        for event_fork in (False, True):
            name = "with_event_fork" if event_fork else "without_event_fork"
            facts = _pinned_fork_variant(ctx, event_fork, pin_in_child)
            part.nest(name, judge(ctx, name, facts))
            copied = facts.get("copied_by_pin" if pin_in_child else "copied_at_fork")
            summary.append(f"{name.replace('_event_fork', '')}: copied={copied}")
        stage = "pinned_in_child" if pin_in_child else "pinned_before_fork"
        check.nest(stage, part)
    return check.observation(
        f"before fork {'; '.join(summary[:2])} | in child {'; '.join(summary[2:])}"
    )
