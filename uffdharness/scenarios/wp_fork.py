"""uffd-wp state across fork(): without UFFD_FEATURE_EVENT_FORK the child's VMAs are not
registered and must inherit no uffd-wp bits or PTE markers; with it the child inherits
them on a new uffd, served here by a FaultHandler on the ``process`` engine (fork() sleeps
until the fork event is read, and os.fork() keeps the GIL meanwhile, so no thread of the
forking process could read it).
"""

from __future__ import annotations

import signal
from typing import Any

from .. import syscalls as sc
from ..abi import FaultFlag, Feature, RegisterMode, flag_names
from ..errors import HarnessError, UffdError
from ..handler import FaultCounts, FaultHandler, HandlerStats, Unprotect
from ..isolation import run_in_child
from ..maps import uffd_vm_flags
from ..memory import MemoryKind, Region
from ..pagemap import region_view, wp_pages
from .checks import Checks
from .context import Background, Context
from .model import KnownBug, NonEmpty, Observation
from .registry import scenario
from .wp import EVENT_TIMEOUT, SEED, WP_WRITE, offset_span, pages_for

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
    # With EVENT_FORK the child's uffd arrives in a fork event; the handler adopts it with
    # the parent's ranges and unprotects each page the child writes. The parent writes
    # nothing meanwhile, so every fault it counts is the child's. It starts (forks its
    # helper) before the range is registered: fork() copies the page tables of a VMA
    # registered for uffd-wp even when shared (vma_needs_copy(), "mm/shmem: handle uffd-wp
    # during fork()", 5.19), and the helper must not map the pages whose pagemap entries
    # (PM_MMAP_EXCLUSIVE among them) the parent reports.
    handler = FaultHandler(uffd, Unprotect(), region, engine="process") if event_fork else None
    served: tuple[HandlerStats, str | None] | None = None
    try:
        if handler is not None:
            handler.start()
        uffd.register(region, mode=RegisterMode.WP)
        uffd.writeprotect(region)
        # A zapped protected page: a PTE marker on file memory (5.19), nothing on anon.
        region.madvise(sc.MADV_DONTNEED, *offset_span(region, 1, 1))
        parent_pagemap = region_view(region)
        parent_wp = wp_pages(region)
        outcome = run_in_child(_inspect_in_child, region, timeout=10)
        parent_wp_after = wp_pages(region)  # before stop(), which unregisters the range
    finally:
        if handler is not None:
            served = _stop(handler)
    facts: dict[str, Any] = {
        "features": flag_names(features),
        "parent_pagemap": parent_pagemap,
        "parent_wp_pages": parent_wp,
        "parent_wp_pages_after_fork": parent_wp_after,
        "child": outcome.status,
    }
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
    uffd.close()  # no later fork may wait for an event of this uffd
    base.close()
    return facts


def _judge_variant(name: str, facts: dict[str, Any], bits_visible: bool) -> Checks:
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
        check.nest(name, _judge_variant(name, facts, bits_visible))
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
