"""Non-cooperative events: fork, remap, remove, unmap, and mmap_changing."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from .. import syscalls as sc
from ..abi import Feature, RegisterMode
from ..errors import UffdError
from ..events import Event, ForkEvent, RemapEvent, RemoveEvent, UnmapEvent
from ..memory import PAGE_SIZE
from .checks import Checks
from .context import Background, Context, next_event
from .model import ALL_KINDS, Every, KnownBug, Observation
from .registry import scenario


def _event_facts(event: Event | None) -> dict:
    if event is None:
        return {"event": None}
    facts = {"event": type(event).__name__}
    for name in ("old_address", "new_address", "length", "start", "end"):
        if hasattr(event, name):
            facts[name] = getattr(event, name)
    return facts


def _expect_event(check: Checks, event: Event | None, expected: Event) -> Observation:
    """The event read must be ``expected``: its type, then each field."""
    observed = _event_facts(event)
    if check.expect("event", observed["event"], type(expected).__name__):
        for name, wanted in _event_facts(expected).items():
            check.expect(name, observed[name], wanted)
    else:
        for name, value in observed.items():
            check.fact(name, value)
    return check.observation(key=f"event={observed['event']}")


@scenario(
    id="event-fork",
    title="UFFD_EVENT_FORK",
    checks="fork() of a process with registered memory and EVENT_FORK (4.11) blocks until "
    "the event is read and hands over a new uffd for the child",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    features=Feature.EVENT_FORK,
)
def event_fork(ctx: Context) -> Observation:
    region = ctx.region(2)
    uffd = ctx.uffd(Feature.EVENT_FORK | ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region)
    # dup_userfaultfd_complete() makes fork() wait until the handler has read the event.
    forker = Background(sc.fork_and_exit, 0)
    check = Checks()
    check.fact("fork_blocked_until_read", not forker.finished(0.2))
    event = next_event(uffd, timeout=5)
    pid = forker.value(5)
    _, status = os.waitpid(pid, 0)
    for name, value in _event_facts(event).items():
        check.fact(name, value)
    check.expect("event", check.facts["event"], ForkEvent.__name__)
    if isinstance(event, ForkEvent):
        child_uffd = event.uffd.fileno()
        check.expect("child_uffd_is_new_fd", child_uffd not in (uffd.fileno(), -1), True)
        check.fact("child_uffd_api_ioctls", child_uffd >= 0)
        event.uffd.close()
    check.fact("child_exit_status", status)
    return check.observation(key=f"event={check.facts['event']}")


@scenario(
    id="event-remap",
    title="UFFD_EVENT_REMAP",
    checks="mremap() of registered memory with EVENT_REMAP (4.11) reports the old and new "
    "address and the length (hugetlb: mremap from 5.16)",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    features=Feature.EVENT_REMAP,
    uses=("mremap",),
)
def event_remap(ctx: Context) -> Observation:
    region = ctx.region(4)
    uffd = ctx.uffd(Feature.EVENT_REMAP | ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region)
    old, length = region.addr, region.length
    # Address space to move into, aligned to the page size (hugetlb mremap refuses an
    # unaligned destination with EINVAL).
    target = ctx.region(2 * length // PAGE_SIZE, kind="anon", align=ctx.page_size)
    destination = target.addr + ctx.page_size
    mover = Background(region.mremap, length, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, destination)
    event = next_event(uffd, timeout=5)
    mover.value(5)
    return _expect_event(Checks(), event, RemapEvent(old, destination, length))


@scenario(
    id="event-remove",
    title="UFFD_EVENT_REMOVE",
    checks="MADV_DONTNEED (and MADV_REMOVE on shmem) of registered memory with EVENT_REMOVE "
    "(4.11) reports the removed range",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    features=Feature.EVENT_REMOVE,
    uses=("drop",),
)
def event_remove(ctx: Context) -> Observation:
    region = ctx.region(4)
    uffd = ctx.uffd(Feature.EVENT_REMOVE | ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region)
    page = ctx.page_size
    # The advice that gives the pages back: both raise UFFD_EVENT_REMOVE
    # (userfaultfd_remove() in madvise_dontneed_free() and madvise_remove()).
    advice = ctx.spec.drop_advice
    advisor = Background(region.madvise, advice, page, 2 * page)
    event = next_event(uffd, timeout=5)
    advisor.value(5)
    expected = RemoveEvent(region.addr + page, region.addr + 3 * page)
    return _expect_event(Checks({"advice": sc.ADVICE_NAMES[advice]}), event, expected)


@scenario(
    id="event-unmap",
    title="UFFD_EVENT_UNMAP",
    checks="munmap() of part of a registered range with EVENT_UNMAP (4.11) reports the "
    "unmapped range",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    features=Feature.EVENT_UNMAP,
)
def event_unmap(ctx: Context) -> Observation:
    region = ctx.region(4)
    uffd = ctx.uffd(Feature.EVENT_UNMAP | ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region)
    page = ctx.page_size
    unmapper = Background(sc.munmap, region.addr + page, page)
    event = next_event(uffd, timeout=5)
    unmapper.value(5)
    return _expect_event(Checks(), event, UnmapEvent(region.addr + page, region.addr + 2 * page))


# "mm/userfaultfd: fix uninitialized output field for -EAGAIN race" (Peter Xu, 6.15):
# before it, the early mmap_changing check of every counted ioctl returned EAGAIN without
# writing the result field, so user space read back whatever it had put there.
EAGAIN_FIELD_FIX = KnownBug(
    fixed_in="6.15",
    fix="mm/userfaultfd: fix uninitialized output field for -EAGAIN race",
    signature="while a non-cooperative event is unread COPY, ZEROPAGE, CONTINUE, POISON "
    "and MOVE fail with EAGAIN but leave their result field as user space set it (0) "
    "instead of writing -EAGAIN there",
    # Cc: stable; queued for 6.14.y and 6.12.y on 2025-05-12, the 6.6 and 5.4
    # applications FAILED. No backport is listed: a stable kernel carrying it passes.
)
# The ioctls whose s64 result field (copy, zeropage, mapped, updated, move) holds bytes
# done or -errno; UFFDIO_WRITEPROTECT has none.
COUNTED = ("copy", "zeropage", "poison", "move", "continue")


def _outcome(call: Callable[[], object]) -> tuple[str, int | None]:
    """(errno name or "ok", the result field of a refused counted ioctl)."""
    try:
        call()
    except UffdError as refusal:
        return refusal.errno_name, refusal.result_field
    return "ok", None


@scenario(
    id="mmap-changing",
    title="EAGAIN while a non-cooperative event is pending",
    checks="while an EVENT_REMOVE message is unread the mm is 'changing': COPY, ZEROPAGE, "
    "WRITEPROTECT, CONTINUE (MINOR ranges), POISON (6.6) and MOVE (6.8, anonymous) fail "
    "with EAGAIN (mmap_changing, 4.17), the counted ones with -EAGAIN in their result field "
    "(6.15), and succeed once it is read",
    memory=("anon", "shmem", "memfd", "memfd-private"),
    modes=RegisterMode.MISSING | RegisterMode.WP,
    probes=RegisterMode.MINOR,
    features=Feature.EVENT_REMOVE,
    uses=("drop",),
    known_bug=EAGAIN_FIELD_FIX.showing(
        while_pending=Every("EAGAIN"),
        result_field_while_pending=Every(0),
        after_read=Every("ok"),
    ),
)
def mmap_changing(ctx: Context) -> Observation:
    page = ctx.page_size
    region = ctx.region(6)
    modes = RegisterMode.MISSING | RegisterMode.WP
    offered = {feature: feature in ctx.offered for feature in (Feature.POISON, Feature.MOVE)}
    extra = Feature(0)
    for feature, present in offered.items():
        extra |= feature if present else Feature(0)
    minor = ctx.probe_features(RegisterMode.MINOR)
    mapped_later = None
    if minor is not None:
        # A page in the page cache with no PTE in a MINOR range: what CONTINUE maps.
        mapped_later = ctx.region(1)
        mapped_later.alias().fill(b"page-cache-16B.\n")
        extra |= minor
    moved_from = None
    if offered[Feature.MOVE] and ctx.spec.family == "anon":
        moved_from = ctx.region(1, kind="anon")
        moved_from.fill(b"moved-16-bytes.\n")
    uffd = ctx.uffd(Feature.EVENT_REMOVE | ctx.mode_features(modes) | extra)
    uffd.register(region, mode=modes)
    if mapped_later is not None:
        uffd.register(mapped_later, mode=RegisterMode.MINOR)
    uffd.zeropage(region.addr + 3 * page, page)
    operations = {
        "copy": lambda: uffd.copy(region.addr, b"c" * page),
        "zeropage": lambda: uffd.zeropage(region.addr + page, page),
        "writeprotect": lambda: uffd.writeprotect(region.addr + 3 * page, page),
    }
    not_run = {}
    if offered[Feature.POISON]:
        operations["poison"] = lambda: uffd.poison(region.addr + 4 * page, page)
    else:
        not_run["poison"] = "kernel lacks UFFDIO_POISON (UFFD_FEATURE_POISON, 6.6)"
    if moved_from is not None:
        operations["move"] = lambda: uffd.move(region.addr + 5 * page, moved_from.addr, page)
    elif not offered[Feature.MOVE]:
        not_run["move"] = "kernel lacks UFFDIO_MOVE (UFFD_FEATURE_MOVE, 6.8)"
    else:
        not_run["move"] = "UFFDIO_MOVE moves anonymous pages only"
    if mapped_later is not None:
        operations["continue"] = lambda: uffd.continue_(mapped_later.addr, page)
    elif ctx.spec.supports(RegisterMode.MINOR):
        not_run["continue"] = "kernel lacks MINOR faults on this memory"
    else:
        not_run["continue"] = "anonymous memory has no MINOR mode"
    advisor = Background(region.madvise, ctx.spec.drop_advice, 2 * page, page)
    uffd.wait(5)  # the REMOVE message is queued: the mm is now "changing"
    pending = {name: _outcome(call) for name, call in operations.items()}
    event = next_event(uffd, timeout=5)
    advisor.value(5)
    after = {name: _outcome(call)[0] for name, call in operations.items()}
    check = Checks({"not_run": not_run})
    # ctx->mmap_changing is set while a non-cooperative event is unread: every fill, MOVE
    # and UFFDIO_WRITEPROTECT refuses with EAGAIN so the handler sees the layout change
    # first.
    errnos = {name: errno_name for name, (errno_name, _) in pending.items()}
    check.expect("while_pending", errnos, dict.fromkeys(operations, "EAGAIN"))
    fields = {name: field for name, (_, field) in pending.items() if name in COUNTED}
    check.expect("result_field_while_pending", fields, dict.fromkeys(fields, -errno.EAGAIN))
    check.expect("after_read", after, dict.fromkeys(operations, "ok"))
    for name, value in _event_facts(event).items():
        check.fact(name, value)
    return check.observation(
        key=f"pending={sorted(set(errnos.values()))} "
        f"fields={sorted(set(fields.values()), key=str)}"  # None where the call succeeded
    )
