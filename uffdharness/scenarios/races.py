"""uffd operations racing VMA changes next door (per-VMA locks in uffd, 6.4-6.9 era).

Since the per-VMA lock work, UFFDIO_COPY/ZEROPAGE/MOVE lock only the VMAs they touch
instead of taking mmap_lock for reading (mm/userfaultfd.c uffd_mfill_lock /
uffd_move_lock, 6.8-6.9), so they run truly concurrently with mremap/munmap/madvise on
neighbouring VMAs. Such a race must end with every resolved page intact and each
operation either done or refused with EAGAIN/ENOENT/EEXIST; never corrupt, never hang.

Layout: op regions and churn regions alternate in one reservation, so every op region's
neighbours are the VMAs being split, moved, unmapped and re-registered. Only op regions
receive uffd operations (one resolver at a time per region, so each page's expected
content is known); only churn regions are mutated.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

from .. import syscalls as sc
from ..abi import Feature, RegisterMode
from ..errors import UffdError
from ..memory import PAGE_SIZE, ChurnArena, KindSpec, MemoryKind, Region
from ..pagemap import Pagemap
from ..uffd import Userfaultfd
from .checks import Checks, errno_of
from .context import Background, Context
from .model import Observation
from .registry import scenario

RACE_SECONDS = 0.6  # at most; and at most RACE_SHARE of the scenario's timeout (the whole
# catalogue must stay under 15 s: `uffdharness stress --seconds S` races for longer)
RACE_SHARE = 0.2
OP_REGIONS = 3
CHURN_REGIONS = 3
REGION_PAGES = 16
HUGETLB_REGION_PAGES = 4  # 2 MiB pages: 6 slots of 4 in a hugetlb run
RESOLVERS = 2
MUTATORS = 2
ALLOWED_ERRNOS = frozenset({"EAGAIN", "ENOENT", "EEXIST"})
JOIN_GRACE = 3.0  # after the deadline, how long a thread may take before it counts as hung
JOIN_GRACE_SHARE = 0.3  # ... and at most this share of the scenario's timeout
MAX_REPORTED = 5  # mismatches listed in the facts


class Arena(ChurnArena):
    """Alternating op/churn slots of the kind's memory (op, churn, op, churn, ...) plus one
    parking slot per churn region (ChurnArena). Holes left while churning are refilled
    only with MAP_FIXED_NOREPLACE: if another mapping of this process landed in one
    meanwhile, the churn region is given up (``lost``) rather than clobbered.
    """

    def __init__(self, spec: KindSpec) -> None:
        self.spec = spec
        self.page_size = spec.page_size if spec.is_hugetlb else PAGE_SIZE
        self.pages = HUGETLB_REGION_PAGES if spec.is_hugetlb else REGION_PAGES
        self.slot_length = self.pages * self.page_size
        self.slots = OP_REGIONS + CHURN_REGIONS
        super().__init__(
            [self.slot_length] * self.slots,
            churn=[2 * i + 1 for i in range(CHURN_REGIONS)],
            align=self.page_size,
            guard=self.slot_length,
        )
        # hugetlb as an anonymous MAP_HUGETLB mapping (its own hugetlbfs file), shared or
        # private as the kind says: the same hugetlb VMA code, and a slot can be remapped
        # without a file offset to track.
        self.flags = self.spec.mmap_flags
        if spec.is_hugetlb:
            self.flags |= sc.MAP_ANONYMOUS | sc.MAP_HUGETLB

    def map(self, addr: int, length: int, *, replace: bool) -> int:
        """Map memory of the arena's kind at ``addr``: MAP_FIXED over our own reservation,
        MAP_FIXED_NOREPLACE where a hole was left (EEXIST if something else took it)."""
        fixed = sc.MAP_FIXED if replace else sc.MAP_FIXED_NOREPLACE
        return sc.mmap(addr, length, sc.PROT_RW, self.flags | fixed)

    def placeholder(self, addr: int, length: int) -> None:
        flags = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_NORESERVE | sc.MAP_FIXED_NOREPLACE
        sc.mmap(addr, length, sc.PROT_NONE, flags)


def _tag(region: int, page: int, op: str, thread: int, serial: int) -> bytes:
    """16 bytes naming one resolution; repeated over the page it filled."""
    return f"r{region}p{page:02d}{op[0]}t{thread}n{serial:07d}".encode()[:16].ljust(16, b".")


ZERO_TAG = b"\0" * 16


class OpRegion:
    """An op region and what each of its pages must hold (guarded by ``lock``)."""

    def __init__(self, index: int, region: Region, reset_advice: int) -> None:
        self.index = index
        self.region = region
        self.pages = region.pages
        self.reset_advice = reset_advice
        self.lock = threading.Lock()
        self.expected: dict[int, bytes] = {}


class Tally:
    """What one thread saw; merged after the run (no shared counters while racing)."""

    def __init__(self) -> None:
        self.ops: Counter[str] = Counter()
        self.errnos: Counter[str] = Counter()
        self.mutations: Counter[str] = Counter()
        self.mutation_errnos: Counter[str] = Counter()
        self.problems: list[str] = []
        self.pages_verified = 0
        self.cycles = 0


def _verify(op: OpRegion, tally: Tally) -> None:
    """Check every page of an op region against what was resolved there (pagemap first:
    reading a page that is not there would block in a missing fault)."""
    region = op.region
    with Pagemap() as pagemap:
        # one pagemap entry per base page, also over a hugetlb page
        step = region.page_size // PAGE_SIZE
        present = [e.present for e in pagemap.entries(region.addr, region.length)][::step]
    for page in range(op.pages):
        tag = op.expected.get(page)
        if tag is None:
            if present[page]:
                tally.problems.append(f"op{op.index} page {page}: populated, never resolved")
            continue
        if not present[page]:
            tally.problems.append(f"op{op.index} page {page}: resolved ({tag!r}) then lost")
            continue
        tally.pages_verified += 1
        at = region.find_mismatch(tag, page * region.page_size, region.page_size)
        if at is not None:
            found = region.read(at - at % 16, 16)
            tally.problems.append(f"op{op.index} page {page}: expected {tag!r}, read {found!r}")


def _resolve(
    uffd: Userfaultfd,
    name: str,
    dst: int,
    tag: bytes,
    source: Region | None,
    serial: int,
    page_size: int,
) -> None:
    """Resolve one page at ``dst`` with operation ``name`` so that it holds ``tag``."""
    if name == "COPY":
        uffd.copy(dst, tag * (page_size // 16))
    elif name == "ZEROPAGE":
        uffd.zeropage(dst, PAGE_SIZE)
    else:
        slot = serial % source.pages
        source.fill(tag, slot * PAGE_SIZE, PAGE_SIZE)
        uffd.move(dst, source.page_addr(slot), PAGE_SIZE)


def _resolver(
    thread: int,
    uffd: Userfaultfd,
    ops: list[OpRegion],
    operations: tuple[str, ...],
    source: Region | None,
    deadline: float,
) -> Tally:
    tally = Tally()
    rng = random.Random(thread)
    serial = 0
    while time.monotonic() < deadline:
        op = rng.choice(ops)
        with op.lock:
            free = [p for p in range(op.pages) if p not in op.expected]
            page = rng.choice(free) if free and rng.random() < 0.9 else rng.randrange(op.pages)
            name = rng.choice(operations)
            serial += 1
            tag = ZERO_TAG if name == "ZEROPAGE" else _tag(op.index, page, name, thread, serial)
            dst = op.region.page_addr(page)
            outcome = errno_of(_resolve, uffd, name, dst, tag, source, serial, op.region.page_size)
            if outcome != "ok":
                tally.errnos[f"{name}:{outcome}"] += 1
                if outcome == "EEXIST" and page not in op.expected:
                    tally.problems.append(f"op{op.index} page {page}: {name} EEXIST, unresolved")
            else:
                if page in op.expected:
                    tally.problems.append(f"op{op.index} page {page}: {name} resolved it twice")
                op.expected[page] = tag
                tally.ops[name] += 1
            if len(op.expected) == op.pages:
                _verify(op, tally)
                op.region.madvise(op.reset_advice)
                op.expected.clear()
                tally.cycles += 1
    return tally


class ChurnRegion:
    def __init__(self, index: int, addr: int) -> None:
        self.index = index
        self.addr = addr
        self.lock = threading.Lock()
        self.lost = ""  # why this slot can no longer be churned (a foreign mapping took it)


def _mutate(arena: Arena, uffd: Userfaultfd, churn: ChurnRegion, action: str) -> None:
    length = arena.slot_length
    half = length // 2
    if action == "dontneed":
        try:  # populate without touching (no handler here); no ZEROPAGE on hugetlb
            if arena.spec.is_hugetlb:
                uffd.copy(churn.addr, bytes(arena.page_size))
            else:
                uffd.zeropage(churn.addr, length)
        except UffdError as exc:
            if exc.errno_name != "EEXIST":  # part of the slot still populated
                raise
        sc.madvise(churn.addr, length, sc.MADV_DONTNEED)
    elif action == "mremap_resize":
        sc.mremap(churn.addr, length, half, 0)
        try:
            sc.mremap(churn.addr, half, length, 0)  # grow in place, never move
        except UffdError as exc:
            churn.lost = f"regrow: {exc.errno_name}"
            arena.lost.add(churn.index)
            raise
    elif action == "mremap_move":
        parking = arena.parking(churn.index)
        sc.mremap(churn.addr, length, length, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, parking)
        try:
            arena.placeholder(churn.addr, length)
        except UffdError as exc:
            churn.lost = f"slot taken while moved away: {exc.errno_name}"
            arena.lost.add(churn.index)
            raise
        sc.mremap(parking, length, length, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, churn.addr)
        try:
            arena.placeholder(parking, length)
        except UffdError as exc:
            churn.lost = f"parking taken: {exc.errno_name}"
            arena.lost.add(churn.index)
            raise
    elif action == "munmap":
        middle = churn.addr + length // 4
        sc.munmap(middle, half)
        try:
            arena.map(middle, half, replace=False)
        except UffdError as exc:
            churn.lost = f"hole taken after munmap: {exc.errno_name}"
            arena.lost.add(churn.index)
            raise
        # One fresh VMA over the whole slot again: separate shmem mappings never merge,
        # and ZEROPAGE or a grow-in-place mremap cannot span several VMAs.
        arena.map(churn.addr, length, replace=True)
    # mremap without EVENT_REMAP and a fresh mapping both drop the registration.
    uffd.register(churn.addr, length, RegisterMode.MISSING)


CHURN_ACTIONS = ("dontneed", "mremap_resize", "mremap_move", "munmap")
# mremap cannot grow a hugetlb VMA (EINVAL): a shrunk slot would be lost.
HUGETLB_CHURN_ACTIONS = ("dontneed", "mremap_move", "munmap")


def _mutator(
    thread: int, arena: Arena, uffd: Userfaultfd, churns: list[ChurnRegion], deadline: float
) -> Tally:
    tally = Tally()
    rng = random.Random(1000 + thread)
    while time.monotonic() < deadline:
        churn = rng.choice(churns)
        with churn.lock:
            if churn.lost:
                continue
            action = rng.choice(HUGETLB_CHURN_ACTIONS if arena.spec.is_hugetlb else CHURN_ACTIONS)
            try:
                _mutate(arena, uffd, churn, action)
                tally.mutations[action] += 1
            except UffdError as exc:
                tally.mutation_errnos[f"{action}:{exc.op}:{exc.errno_name}"] += 1
    return tally


def _merge(tallies: list[Tally]) -> Tally:
    total = Tally()
    for tally in tallies:
        total.ops += tally.ops
        total.errnos += tally.errnos
        total.mutations += tally.mutations
        total.mutation_errnos += tally.mutation_errnos
        total.problems += tally.problems
        total.pages_verified += tally.pages_verified
        total.cycles += tally.cycles
    return total


@scenario(
    id="per-vma-lock-race",
    title="UFFDIO_COPY/ZEROPAGE/MOVE racing mremap/munmap/madvise next door",
    checks="for a second (at most a fifth of the timeout), threads resolve pages of "
    "registered regions with COPY, ZEROPAGE and (anon) MOVE while other threads mremap, "
    "munmap, MADV_DONTNEED and re-register the neighbouring VMAs: resolved data stays "
    "intact, errors are only EAGAIN/ENOENT/EEXIST and nothing hangs (per-VMA locks in uffd "
    "operations, 6.9 era)",
    memory=("anon", "shmem", "hugetlb"),
    modes=RegisterMode.MISSING,
    uses=("drop", "zap", "mremap"),
    # the slots, and room for a churn slot refilled before its old pages are freed
    hugepages=(OP_REGIONS + 2 * CHURN_REGIONS) * HUGETLB_REGION_PAGES,
)
def per_vma_lock_race(ctx: Context) -> Observation:
    features = ctx.mode_features(RegisterMode.MISSING)
    # UFFDIO_ZEROPAGE is not offered on hugetlb (EINVAL).
    operations: tuple[str, ...] = ("COPY",) if ctx.spec.is_hugetlb else ("COPY", "ZEROPAGE")
    # UFFDIO_MOVE (6.8) moves only private anonymous pages (EINVAL on shmem VMAs).
    if ctx.spec.family == "anon" and ctx.offered & Feature.MOVE:
        features |= Feature.MOVE
        operations += ("MOVE",)
    uffd = ctx.uffd(features)
    arena = Arena(ctx.spec)
    try:
        return _race(ctx, uffd, arena, operations)
    finally:
        arena.close()


def _race(
    ctx: Context, uffd: Userfaultfd, arena: Arena, operations: tuple[str, ...]
) -> Observation:
    reset = ctx.spec.drop_advice  # the next touch of a reset page faults as missing again
    ops: list[OpRegion] = []
    churns: list[ChurnRegion] = []
    for index in range(OP_REGIONS + CHURN_REGIONS):
        addr = arena.map(arena.slot(index), arena.slot_length, replace=True)
        uffd.register(addr, arena.slot_length, RegisterMode.MISSING)
        if index % 2 == 0:
            region = Region(addr, arena.slot_length, ctx.memory, page_size=arena.page_size)
            ops.append(OpRegion(index // 2, region, reset))
        else:
            churns.append(ChurnRegion(index // 2, addr))
    sources = [ctx.region(REGION_PAGES, kind=MemoryKind.ANON) for _ in range(RESOLVERS)]

    # Race and grace fit the timeout the run gives (--timeout), leaving half of it for setup,
    # verification and the process around it.
    race_seconds = min(RACE_SECONDS, RACE_SHARE * ctx.timeout)
    join_grace = min(JOIN_GRACE, JOIN_GRACE_SHARE * ctx.timeout)
    started = time.monotonic()
    deadline = started + race_seconds
    workers = [
        Background(_resolver, t, uffd, ops, operations, sources[t], deadline)
        for t in range(RESOLVERS)
    ] + [Background(_mutator, t, arena, uffd, churns, deadline) for t in range(MUTATORS)]
    finished = [w.finished(max(0.0, deadline - time.monotonic()) + join_grace) for w in workers]
    elapsed = time.monotonic() - started
    hung = finished.count(False)
    errors = [w.error for w in workers if w.finished(0) and w.error is not None]
    tallies = [w.result for w in workers if w.finished(0) and w.error is None]
    total = _merge(tallies)
    if not hung:  # the final state of every op region, with nobody racing
        for op in ops:
            _verify(op, total)

    errnos = {name.split(":")[1] for name in total.errnos}
    check = Checks(
        {
            "seconds": round(elapsed, 3),
            "race_seconds": round(race_seconds, 3),
            "threads": {"resolvers": RESOLVERS, "mutators": MUTATORS},
            "layout": {
                "op_regions": OP_REGIONS,
                "churn_regions": CHURN_REGIONS,
                "pages_each": arena.pages,
                "page_size": arena.page_size,
            },
            "ops_done": dict(total.ops),
            "op_errnos": dict(total.errnos),
            "mutations_done": dict(total.mutations),
            "mutation_errnos": dict(total.mutation_errnos),
            "churn_slots_lost": {c.index: c.lost for c in churns if c.lost},
            "region_cycles": total.cycles,
            "pages_verified": total.pages_verified,
            "data_problems": len(total.problems),
        }
    )
    # Still blocked join_grace s after the deadline: hung in the kernel.
    check.expect("hung_threads", hung, 0)
    check.expect("thread_exceptions", [f"{type(e).__name__}: {e}" for e in errors], [])
    check.expect("unexpected_errnos", sorted(errnos - ALLOWED_ERRNOS), [])
    check.expect_that(
        "first_problems", total.problems[:MAX_REPORTED], not total.problems, "no data problems"
    )
    if not hung and (not total.ops or not total.mutations):
        check.problem("the race did not happen: no operations or no mutations completed")
    key = (
        f"ops={sum(total.ops.values())} mutations={sum(total.mutations.values())} "
        f"errnos={sorted(errnos) or 'none'} data={'ok' if not total.problems else 'BAD'}"
    )
    return check.observation(key=key)
