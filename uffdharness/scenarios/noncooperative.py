"""Non-cooperative events: fork, remap, remove, unmap, and mmap_changing."""

from __future__ import annotations

import os

from .. import syscalls as sc
from .._native import lib
from ..abi import Feature, RegisterMode
from ..errors import UffdError
from ..events import ForkEvent, RemapEvent, RemoveEvent, UnmapEvent
from .context import Background, Context, next_event
from .model import ALL_KINDS, SMALL_PAGE_KINDS, Observation, Skip
from .registry import scenario


def _event_facts(event) -> dict:
    if event is None:
        return {"event": None}
    facts = {"event": type(event).__name__}
    for name in ("old_address", "new_address", "length", "start", "end"):
        if hasattr(event, name):
            facts[name] = getattr(event, name)
    return facts


def _judge_event(event, expected, facts: dict | None = None) -> Observation:
    facts = {**(facts or {}), **_event_facts(event)}
    ok = event == expected
    return Observation(facts, ok, f"event={facts['event']}", "" if ok else f"expected {expected}")


@scenario(
    id="event-fork",
    title="UFFD_EVENT_FORK",
    checks="fork() of a process with registered memory and EVENT_FORK (4.11) blocks until "
    "the event is read and hands over a new uffd for the child",
    memory=ALL_KINDS,
    features=Feature.EVENT_FORK,
)
def event_fork(ctx: Context) -> Observation:
    region = ctx.region(2)
    uffd = ctx.uffd(Feature.EVENT_FORK | ctx.mode_features("missing"))
    uffd.register(region)
    forker = Background(lib.uh_fork_and_exit, 0)
    blocked_until_read = not forker.finished(0.2)
    event = next_event(uffd, timeout=5)
    pid = forker.value(5)
    _, status = os.waitpid(pid, 0) if pid > 0 else (0, -1)
    facts = {"fork_blocked_until_read": blocked_until_read, **_event_facts(event)}
    if isinstance(event, ForkEvent):
        facts["child_uffd_is_new_fd"] = event.uffd.fileno() not in (uffd.fileno(), -1)
        facts["child_uffd_api_ioctls"] = event.uffd.fileno() >= 0
        event.uffd.close()
    facts["child_exit_status"] = status
    ok = isinstance(event, ForkEvent) and facts.get("child_uffd_is_new_fd") and pid > 0
    return Observation(facts, bool(ok), f"event={facts['event']}", "" if ok else str(facts))


@scenario(
    id="event-remap",
    title="UFFD_EVENT_REMAP",
    checks="mremap() of registered memory with EVENT_REMAP (4.11) reports the old and new "
    "address and the length",
    memory=SMALL_PAGE_KINDS,
    features=Feature.EVENT_REMAP,
)
def event_remap(ctx: Context) -> Observation:
    region = ctx.region(4)
    uffd = ctx.uffd(Feature.EVENT_REMAP | ctx.mode_features("missing"))
    uffd.register(region)
    old, length = region.addr, region.length
    target = ctx.region(8, kind="anon")  # address space to move into
    destination = target.addr + 2 * ctx.page_size
    mover = Background(region.mremap, length, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, destination)
    event = next_event(uffd, timeout=5)
    mover.value(5)
    return _judge_event(event, RemapEvent(old, destination, length))


@scenario(
    id="event-remove",
    title="UFFD_EVENT_REMOVE",
    checks="MADV_DONTNEED (and MADV_REMOVE on shmem) of registered memory with EVENT_REMOVE "
    "(4.11) reports the removed range",
    memory=ALL_KINDS,
    features=Feature.EVENT_REMOVE,
)
def event_remove(ctx: Context) -> Observation:
    region = ctx.region(4)
    uffd = ctx.uffd(Feature.EVENT_REMOVE | ctx.mode_features("missing"))
    uffd.register(region)
    page = ctx.page_size
    advice = sc.MADV_DONTNEED if ctx.memory.value in ("anon", "hugetlb-private") else sc.MADV_REMOVE
    advisor = Background(region.madvise, advice, page, 2 * page)
    event = next_event(uffd, timeout=5)
    if event is None and advisor.finished(5) and isinstance(advisor.error, UffdError):
        if ctx.memory.is_hugetlb and advisor.error.errno_name == "EINVAL":
            # MADV_DONTNEED on hugetlb mappings arrived in 5.18 (90e7e7f5ef3f).
            raise Skip(f"MADV_DONTNEED on hugetlb needs kernel >= 5.18: EINVAL on {ctx.kernel}")
    advisor.value(5)
    advice_name = "MADV_DONTNEED" if advice == sc.MADV_DONTNEED else "MADV_REMOVE"
    expected = RemoveEvent(region.addr + page, region.addr + 3 * page)
    return _judge_event(event, expected, {"advice": advice_name})


@scenario(
    id="event-unmap",
    title="UFFD_EVENT_UNMAP",
    checks="munmap() of part of a registered range with EVENT_UNMAP (4.11) reports the "
    "unmapped range",
    memory=ALL_KINDS,
    features=Feature.EVENT_UNMAP,
)
def event_unmap(ctx: Context) -> Observation:
    region = ctx.region(4)
    uffd = ctx.uffd(Feature.EVENT_UNMAP | ctx.mode_features("missing"))
    uffd.register(region)
    page = ctx.page_size
    unmapper = Background(sc.munmap, region.addr + page, page)
    event = next_event(uffd, timeout=5)
    unmapper.value(5)
    return _judge_event(event, UnmapEvent(region.addr + page, region.addr + 2 * page))


def _attempt(label: str, call, outcomes: dict) -> None:
    try:
        call()
        outcomes[label] = "ok"
    except UffdError as exc:
        outcomes[label] = exc.errno_name


@scenario(
    id="mmap-changing",
    title="EAGAIN while a non-cooperative event is pending",
    checks="while an EVENT_REMOVE message is unread the mm is 'changing': COPY, ZEROPAGE "
    "and WRITEPROTECT fail with EAGAIN (mmap_changing, 4.17) and succeed once it is read",
    memory=("anon", "shmem", "memfd"),
    features=Feature.EVENT_REMOVE,
)
def mmap_changing(ctx: Context) -> Observation:
    region = ctx.region(4)
    features = Feature.EVENT_REMOVE | ctx.mode_features("missing", "wp")
    uffd = ctx.uffd(features)
    uffd.register(region, mode=RegisterMode.MISSING | RegisterMode.WP)
    page = ctx.page_size
    uffd.zeropage(region.addr + 3 * page, page)
    advice = sc.MADV_DONTNEED if ctx.memory.value == "anon" else sc.MADV_REMOVE
    advisor = Background(region.madvise, advice, 2 * page, page)
    uffd.wait(5)  # the REMOVE message is queued: the mm is now "changing"
    pending: dict[str, str] = {}
    _attempt("copy", lambda: uffd.copy(region.addr, b"c" * page), pending)
    _attempt("zeropage", lambda: uffd.zeropage(region.addr + page, page), pending)
    _attempt("writeprotect", lambda: uffd.writeprotect(region.addr + 3 * page, page), pending)
    event = next_event(uffd, timeout=5)
    advisor.value(5)
    after: dict[str, str] = {}
    _attempt("copy", lambda: uffd.copy(region.addr, b"c" * page), after)
    _attempt("zeropage", lambda: uffd.zeropage(region.addr + page, page), after)
    _attempt("writeprotect", lambda: uffd.writeprotect(region.addr + 3 * page, page), after)
    facts = {"while_pending": pending, "after_read": after, **_event_facts(event)}
    ok = set(pending.values()) == {"EAGAIN"} and set(after.values()) == {"ok"}
    return Observation(
        facts, ok, f"pending={sorted(set(pending.values()))}", "" if ok else str(facts)
    )
