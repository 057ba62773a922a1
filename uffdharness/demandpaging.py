"""Demand paging with V vCPU-like toucher threads (``uffdharness bench demand-paging``).

Modelled on the KVM selftest ``demand_paging_test``: V toucher pthreads (cext/
uffd_demand.c), each touching its own slice of one region page by page, while the faults
are served by one handler per vCPU (each slice registered on its own uffd) or by one
handler for all (one uffd). Every V is measured three ways in one run, interleaved
repetition by repetition so drift hits them alike:

- ``c-loop``: the multi-toucher C reference, 1 or V handler pthreads doing poll + read +
  one resolve ioctl per fault;
- each FaultHandler engine (``native``, ``thread``, ``process``) with the built-in policy of
  the mode;
- ``first-touch``: the same touchers on an unregistered region of the same kind in the same
  state (the physical limit: what the kernel alone does per page).

Each toucher records the ns every page took, so a row gives pages/s and per-fault latency
min/median/p99, with the CPU placement it was measured with. After every uffd figure the
region's content is verified page by page.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from . import syscalls as sc
from ._native import ffi, lib
from .abi import Feature, RegisterMode, missing_features_reason
from .benchmark import OtherLoad
from .errors import HarnessError
from .handler import Address, Builtin, Continue, Copy, FaultHandler, Move, Zeropage
from .hugepages import HugepageError, HugepagePool
from .memory import SPECS, Family, KindSpec, Region, allocate
from .uffd import Userfaultfd, probe_api

ENGINES = ("native", "thread", "process")
HANDLERS = ("per-vcpu", "one")
SEED = 7  # fill_indexed seed of the content the handlers serve


class DemandError(HarnessError):
    """The run cannot start here (a kernel feature, the hugepage pool): one line."""


@dataclass(frozen=True)
class ModeSpec:
    """One resolve mode: what is registered, which memory it runs on, how a fault is served
    and what every page holds afterwards."""

    name: str
    register: RegisterMode
    families: tuple[Family, ...]
    resolve: int  # lib.UH_DEMAND_*: the C reference's ioctl
    features: Feature = Feature(0)  # beyond the kind's register-mode features
    from_source: bool = False  # COPY and MOVE take each page from an anonymous source
    zeros: bool = False  # the pages read as zeros afterwards (else the indexed content)
    default_memory: str = "anon"
    no_engine: tuple[tuple[str, str], ...] = ()  # (engine, why it cannot serve this mode)

    def policy(self, source: Address | None) -> Builtin:
        if self.name == "copy":
            return Copy(source)
        if self.name == "move":
            assert source is not None
            return Move(source)
        return Zeropage() if self.name == "zeropage" else Continue()


MODES: dict[str, ModeSpec] = {
    spec.name: spec
    for spec in (
        ModeSpec("copy", RegisterMode.MISSING, ("anon", "shmem", "hugetlb"), lib.UH_DEMAND_COPY,
                 from_source=True),
        # On anonymous memory UFFDIO_ZEROPAGE maps the shared zero page, the case measured
        # here (shmem would allocate a zeroed page-cache page; hugetlb refuses: EINVAL).
        ModeSpec("zeropage", RegisterMode.MISSING, ("anon",), lib.UH_DEMAND_ZEROPAGE,
                 zeros=True),
        # MINOR faults (5.13 hugetlbfs, 5.14 shmem): the page is in the page cache, filled
        # through a second, unregistered mapping; only the PTE is missing.
        ModeSpec("continue", RegisterMode.MINOR, ("shmem", "hugetlb"), lib.UH_DEMAND_CONTINUE,
                 default_memory="shmem"),
        # UFFDIO_MOVE (6.8) moves exclusive anonymous pages between anonymous VMAs of one mm;
        # fs/userfaultfd.c refuses a move from another mm (EINVAL), so no process engine.
        ModeSpec("move", RegisterMode.MISSING, ("anon",), lib.UH_DEMAND_MOVE,
                 features=Feature.MOVE, from_source=True,
                 no_engine=(("process", "UFFDIO_MOVE only works within the faulting process"),)),
    )
}  # fmt: skip

# The general memory kinds (one row each in memory.KIND_TABLE); which modes a kind allows
# follows from its family.
KINDS: tuple[str, ...] = ("anon", "shmem", "memfd", "memfd-private", "hugetlb", "hugetlb-private")


def default_pages_per_vcpu(memory: str) -> int:
    """16 MiB of 4K pages per vCPU (the default run of V = 1,2,4,8 takes 7 to 25 s here); 32
    MiB of 2M hugepages (the run reserves twice the largest V times that)."""
    return 16 if SPECS[memory].is_hugetlb else 4096


def usage_problem(mode: str, memory: str, engines: tuple[str, ...]) -> str | None:
    """Why this mode x memory x engine combination cannot run, in one line, or None."""
    spec = MODES[mode]
    kind = SPECS[memory]
    if kind.family not in spec.families:
        allowed = [name for name in KINDS if SPECS[name].family in spec.families]
        return f"--mode {mode} does not run on --memory {memory}; it runs on {', '.join(allowed)}"
    for engine, why in spec.no_engine:
        if engine in engines:
            return f"--mode {mode} cannot use --engine {engine}: {why}"
    return None


def needed_features(mode: str, memory: str) -> Feature:
    spec = MODES[mode]
    return SPECS[memory].mode_features(spec.register) | spec.features


def unavailable_reason(mode: str, memory: str) -> str | None:
    """What the running kernel lacks for this mode on this memory, or None."""
    missing = needed_features(mode, memory) & ~probe_api().features
    return missing_features_reason(missing) if missing else None


# ---- configuration, placement ---------------------------------------------------------------


@dataclass
class DemandConfig:
    vcpus: tuple[int, ...] = (1, 2, 4, 8)
    mode: str = "copy"
    memory: str = "anon"
    handlers: str = "per-vcpu"
    engines: tuple[str, ...] = ("native",)
    pages_per_vcpu: int = 4096
    reps: int = 5
    pin: bool = False
    writes: bool = True  # each touch is a write access (memstress's default); else a read


@dataclass(frozen=True)
class Placement:
    """Where the touchers and handlers of one figure ran (-1: unpinned)."""

    pinned: bool
    toucher_cpus: tuple[int, ...]
    handler_cpus: tuple[int, ...]

    def describe(self) -> str:
        """'unpinned', or 'pinned t=<toucher CPUs> h=<handler CPUs>' in order, a repeated
        run written once with its count: t=(0,1)x4 is 0,1,0,1,0,1,0,1."""
        if not self.pinned:
            return "unpinned"
        text = f"pinned t={_cpu_list(self.toucher_cpus)}"
        return f"{text} h={_cpu_list(self.handler_cpus)}" if self.handler_cpus else text


def _cpu_list(cpus: tuple[int, ...]) -> str:
    if len(cpus) > 4:
        for period in range(1, len(cpus) // 2 + 1):
            if len(cpus) % period == 0 and cpus == cpus[:period] * (len(cpus) // period):
                return f"({','.join(map(str, cpus[:period]))})x{len(cpus) // period}"
    return ",".join(map(str, cpus))


def placement_for(vcpus: int, handlers: int, pin: bool) -> Placement:
    """Unpinned, or toucher i on CPU i % ncpus (of this process's affinity) and handler k
    on the CPU of toucher k: each handler beside the vCPU whose faults it serves (the one
    handler beside toucher 0)."""
    if not pin:
        return Placement(False, (-1,) * vcpus, (-1,) * handlers)
    cpus = sorted(os.sched_getaffinity(0))
    touchers = tuple(cpus[i % len(cpus)] for i in range(vcpus))
    return Placement(True, touchers, touchers[:handlers])


# ---- results -------------------------------------------------------------------------------


def percentile(ordered: list[int], share: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return 0
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class Row:
    """One V x engine figure over every repetition."""

    vcpus: int
    engine: str  # c-loop, an engine name, or first-touch
    placement: Placement
    pages: int  # pages touched per repetition (V x pages per vCPU)
    rates: list[float] = field(default_factory=list)  # pages/s, one per repetition
    latencies_ns: list[int] = field(default_factory=list)  # every page of every repetition
    faults: list[int] = field(default_factory=list)  # faults handled per repetition
    verified: bool | None = None  # every page held the expected content (uffd rows)
    note: str = ""
    ratio_c_loop: float | None = None
    ratio_first_touch: float | None = None
    _ordered: list[int] | None = field(default=None, repr=False)

    @property
    def pages_per_s(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    def _sorted(self) -> list[int]:
        if self._ordered is None or len(self._ordered) != len(self.latencies_ns):
            self._ordered = sorted(self.latencies_ns)
        return self._ordered

    @property
    def latency_us(self) -> tuple[float, float, float]:
        """(min, median, p99) of the per-page latency, in us."""
        ordered = self._sorted()
        if not ordered:
            return 0.0, 0.0, 0.0
        return (
            ordered[0] / 1e3,
            percentile(ordered, 0.5) / 1e3,
            percentile(ordered, 0.99) / 1e3,
        )

    def to_json(self, config: DemandConfig) -> dict[str, Any]:
        low, median, p99 = self.latency_us
        return {
            "vcpus": self.vcpus,
            "engine": self.engine,
            "mode": config.mode,
            "memory": config.memory,
            "handlers": "none" if self.engine == "first-touch" else config.handlers,
            "placement": self.placement.describe(),
            "pinned": self.placement.pinned,
            "toucher_cpus": list(self.placement.toucher_cpus),
            "handler_cpus": list(self.placement.handler_cpus),
            "pages": self.pages,
            "pages_per_s": self.pages_per_s,
            "pages_per_s_samples": self.rates,
            "latency_min_us": low,
            "latency_median_us": median,
            "latency_p99_us": p99,
            "ratio_c_loop": self.ratio_c_loop,
            "ratio_first_touch": self.ratio_first_touch,
            "faults": self.faults,
            "verified": self.verified,
            "note": self.note,
        }


@dataclass
class DemandReport:
    config: DemandConfig
    page_size: int
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    other_load: float = 0.0  # share of all CPU time other processes used during the run

    def find(self, vcpus: int, engine: str) -> Row | None:
        return next((r for r in self.rows if (r.vcpus, r.engine) == (vcpus, engine)), None)

    @property
    def failures(self) -> list[Row]:
        """uffd rows whose pages were not all served with the right content."""
        return [row for row in self.rows if row.verified is False]

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "demand-paging",
            "kernel": os.uname().release,
            "cpus": sorted(os.sched_getaffinity(0)),
            "config": {**asdict(self.config), "page_size": self.page_size},
            "rows": [row.to_json(self.config) for row in self.rows],
            "seconds": self.seconds,
            "other_load": self.other_load,
        }


# ---- one V: memory, uffds, reset, verify ------------------------------------------------------


@dataclass
class Workload:
    """The registered region of V slices, its uffds, the source (COPY, MOVE), the page-cache
    view (CONTINUE) and the unregistered first-touch region of the same kind."""

    vcpus: int
    pages_each: int
    mode: ModeSpec
    kind: KindSpec
    region: Region
    baseline: Region
    uffds: list[Userfaultfd]
    source: Region | None

    @property
    def pages(self) -> int:
        return self.region.pages

    def slice_span(self, handler: int) -> tuple[int, int]:
        """(address, length) handler ``handler`` serves: its vCPU's slice, or everything."""
        if len(self.uffds) == 1:
            return self.region.addr, self.region.length
        length = self.pages_each * self.region.page_size
        return self.region.addr + handler * length, length

    def reset(self, region: Region) -> None:
        """Make every page of ``region`` fault again. MINOR: zap the PTEs only (the page
        cache stays); MISSING: give the pages back (MADV_REMOVE on shared memory, where
        DONTNEED leaves the page cache), and refill a MOVE source, which the run emptied."""
        if self.mode.register == RegisterMode.MINOR:
            region.madvise(sc.MADV_DONTNEED)
        else:
            region.madvise(self.kind.drop_advice)
        if region is self.region and self.mode.name == "move" and self.source is not None:
            self.source.view(self.region.page_size).fill_indexed(SEED)

    def verify(self) -> str:
        """'' when every page of the region holds what the mode serves, else what differs."""
        if self.mode.zeros:
            at = self.region.find_mismatch(b"\0")
        else:
            at = self.region.find_indexed_mismatch(SEED)
        if at is None:
            return ""
        page = at // self.region.page_size
        return f"page {page} (vCPU {page // self.pages_each}) differs at offset {at:#x}"


def _no_thp(region: Region) -> None:
    """4K pages throughout: the uffd runs resolve 4K faults, so the first-touch baseline
    must not get a THP per fault where THP is 'always'."""
    if not region.kind.spec.is_hugetlb:
        try:
            region.madvise(sc.MADV_NOHUGEPAGE)
        except OSError:
            pass  # a kernel without THP: nothing to turn off


@contextmanager
def workload(config: DemandConfig, vcpus: int) -> Iterator[Workload]:
    mode = MODES[config.mode]
    kind = SPECS[config.memory]
    features = needed_features(config.mode, config.memory)
    pages = vcpus * config.pages_per_vcpu
    with ExitStack() as stack:
        region = stack.enter_context(allocate(config.memory, pages, name="demand-paging"))
        baseline = stack.enter_context(allocate(config.memory, pages, name="first-touch"))
        for mapped in (region, baseline):
            _no_thp(mapped)
            # The process engine's helper inherits nothing of it: no COW sharing with it.
            mapped.madvise(sc.MADV_DONTFORK)
        source = None
        if mode.from_source:
            source = stack.enter_context(allocate("anon", length=region.length, name="source"))
            _no_thp(source)
            source.view(region.page_size).fill_indexed(SEED)
        if mode.register == RegisterMode.MINOR:
            # The page cache, written through mappings no uffd watches (made before
            # registering: Region.alias of MAP_SHARED|MAP_ANONYMOUS is an mremap copy).
            for mapped in (region, baseline):
                view = mapped.alias()
                view.fill_indexed(SEED)
            baseline.madvise(sc.MADV_DONTNEED)
        uffds = []
        handler_count = vcpus if config.handlers == "per-vcpu" else 1
        slice_length = region.length // handler_count
        for k in range(handler_count):
            uffd = stack.enter_context(Userfaultfd.open(features))
            uffd.register(region.addr + k * slice_length, slice_length, mode=mode.register)
            uffds.append(uffd)
        yield Workload(vcpus, config.pages_per_vcpu, mode, kind, region, baseline, uffds, source)


# ---- one measurement -------------------------------------------------------------------------


@dataclass
class Measured:
    seconds: float
    latencies_ns: list[int]
    faults: int


def _cpus(values: tuple[int, ...]) -> Any:
    return ffi.new("int[]", list(values))


def _touch(work: Workload, region: Region, placement: Placement, writes: bool) -> Measured:
    latency = ffi.new("uint64_t[]", work.pages)
    elapsed = lib.uh_demand_touch(
        ffi.cast("char *", region.addr),
        region.page_size,
        work.pages_each,
        work.vcpus,
        int(writes),
        _cpus(placement.toucher_cpus),
        latency,
    )
    if elapsed < 0:
        raise OSError(-elapsed, f"touchers: {os.strerror(-elapsed)}")
    return Measured(elapsed / 1e9, ffi.unpack(latency, work.pages), 0)


def measure_c_loop(work: Workload, placement: Placement, writes: bool) -> Measured:
    latency = ffi.new("uint64_t[]", work.pages)
    faults = ffi.new("uint64_t *")
    uffds = ffi.new("int[]", [uffd.fileno() for uffd in work.uffds])
    elapsed = lib.uh_demand_c_loop(
        uffds,
        len(work.uffds),
        ffi.cast("char *", work.region.addr),
        work.region.page_size,
        work.pages_each,
        work.vcpus,
        int(writes),
        work.mode.resolve,
        ffi.cast("char *", work.source.addr if work.source else 0),
        _cpus(placement.toucher_cpus),
        _cpus(placement.handler_cpus),
        latency,
        faults,
    )
    if elapsed < 0:
        raise OSError(-elapsed, f"C loop: {os.strerror(-elapsed)}")
    return Measured(elapsed / 1e9, ffi.unpack(latency, work.pages), faults[0])


def measure_engine(work: Workload, engine: str, placement: Placement, writes: bool) -> Measured:
    """The same touchers served by one FaultHandler per uffd on ``engine``."""
    handlers = []
    with ExitStack() as stack:
        for k, uffd in enumerate(work.uffds):
            addr, length = work.slice_span(k)
            source = None
            if work.source is not None:
                source = Address(work.source.addr + (addr - work.region.addr), length)
            cpu = placement.handler_cpus[k]
            handler = FaultHandler(
                uffd,
                work.mode.policy(source),
                (addr, length, work.region.page_size),
                engine=engine,  # type: ignore[arg-type]
                cpu=None if cpu < 0 else cpu,
                release_on_stop=False,
            )
            handlers.append(stack.enter_context(handler))
        measured = _touch(work, work.region, placement, writes)
    measured.faults = sum(handler.stats.faults.total for handler in handlers)
    return measured


# ---- the run ---------------------------------------------------------------------------------


def check(config: DemandConfig) -> None:
    """Refuse what cannot run before any work: DemandError with one line."""
    problem = usage_problem(config.mode, config.memory, config.engines)
    if problem:
        raise DemandError(problem)
    missing = unavailable_reason(config.mode, config.memory)
    if missing:
        raise DemandError(f"--mode {config.mode} on {config.memory}: {missing}")


def hugepages_needed(config: DemandConfig) -> int:
    """Hugepages the largest V maps: the region and the first-touch region; with CONTINUE
    also their page cache, which a private mapping reserves on top of its own pages (a
    MAP_PRIVATE hugetlb mmap reserves every page it may COW into)."""
    copies = 2
    if MODES[config.mode].register == RegisterMode.MINOR and not SPECS[config.memory].shared:
        copies = 4
    return copies * max(config.vcpus) * config.pages_per_vcpu


def run(config: DemandConfig, progress: Callable[[str], None] | None = None) -> DemandReport:
    check(config)
    say = progress or (lambda _text: None)
    started = time.monotonic()
    load = OtherLoad()
    kind = SPECS[config.memory]
    report = DemandReport(config, kind.page_size)
    with ExitStack() as stack:
        if kind.is_hugetlb:
            wanted = hugepages_needed(config)
            try:
                stack.enter_context(HugepagePool(wanted))
            except (HugepageError, OSError) as exc:
                raise DemandError(f"cannot reserve {wanted} hugepages: {exc}") from None
        for vcpus in config.vcpus:
            _measure_vcpus(config, vcpus, report, say)
    _ratios(report)
    report.seconds = time.monotonic() - started
    report.other_load = load.share(report.seconds)
    return report


def _measure_vcpus(
    config: DemandConfig, vcpus: int, report: DemandReport, say: Callable[[str], None]
) -> None:
    handler_count = vcpus if config.handlers == "per-vcpu" else 1
    placement = placement_for(vcpus, handler_count, config.pin)
    first_touch = placement_for(vcpus, 0, config.pin)
    names = ("c-loop", *config.engines, "first-touch")
    rows = {}
    for name in names:
        rows[name] = Row(
            vcpus,
            name,
            first_touch if name == "first-touch" else placement,
            vcpus * config.pages_per_vcpu,
        )
        report.rows.append(rows[name])
    with workload(config, vcpus) as work:
        # Repetition 0 warms up (page tables, the page allocator's lists, the handlers'
        # first wake-ups) and is not counted.
        for rep in range(config.reps + 1):
            for name in names:
                say(f"V={vcpus} {name} {rep}/{config.reps}" if rep else f"V={vcpus} {name} warm-up")
                row = rows[name]
                if name == "first-touch":
                    work.reset(work.baseline)
                    measured = _touch(work, work.baseline, first_touch, config.writes)
                    measured.faults = work.pages
                else:
                    work.reset(work.region)
                    if name == "c-loop":
                        measured = measure_c_loop(work, placement, config.writes)
                    else:
                        measured = measure_engine(work, name, placement, config.writes)
                    problem = work.verify()
                    if problem:
                        row.verified = False
                        row.note = problem
                    elif row.verified is None:
                        row.verified = True
                if not rep:
                    continue
                row.rates.append(work.pages / measured.seconds if measured.seconds else 0.0)
                row.latencies_ns.extend(measured.latencies_ns)
                row.faults.append(measured.faults)
                if name != "first-touch" and measured.faults != work.pages and not row.note:
                    row.note = f"{measured.faults} faults for {work.pages} pages"


def _paired_ratio(mine: Row, reference: Row | None) -> float | None:
    """Median of per-repetition ratios: each repetition measures every figure back to back,
    so pairing them cancels drift between repetitions."""
    if reference is None or len(reference.rates) != len(mine.rates) or not mine.rates:
        return None
    pairs = [a / b for a, b in zip(mine.rates, reference.rates, strict=True) if b]
    return statistics.median(pairs) if pairs else None


def _ratios(report: DemandReport) -> None:
    for row in report.rows:
        row.ratio_c_loop = _paired_ratio(row, report.find(row.vcpus, "c-loop"))
        row.ratio_first_touch = _paired_ratio(row, report.find(row.vcpus, "first-touch"))


# ---- output ----------------------------------------------------------------------------------


def _rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def render(report: DemandReport) -> str:
    config = report.config
    size = (
        f"{report.page_size >> 10}K" if report.page_size < 1 << 20 else f"{report.page_size >> 20}M"
    )
    lines = [
        f"uffdharness bench demand-paging: mode {config.mode}, memory {config.memory} "
        f"({size} pages), {config.pages_per_vcpu} pages per vCPU, handlers {config.handlers}, "
        f"{'write' if config.writes else 'read'} touches, {config.reps} repetitions "
        f"(median pages/s; latency over every page of every repetition; ratios = median of "
        f"per-repetition ratios)",
        f"{'V':>3}  {'engine':<12}{'placement':<26}{'pages/s':>9}  "
        f"{'lat us min':>10}{'median':>8}{'p99':>9}  {'x c-loop':>8}{'x 1st-touch':>12}",
    ]
    for row in report.rows:
        low, median, p99 = row.latency_us
        note = f"  ({row.note})" if row.note else ""
        if row.verified is False:
            note = f"  WRONG CONTENT: {row.note}"
        lines.append(
            f"{row.vcpus:>3}  {row.engine:<12}{row.placement.describe():<26}"
            f"{_rate(row.pages_per_s):>9}  {low:>10.1f}{median:>8.1f}{p99:>9.1f}  "
            f"{_ratio(row.ratio_c_loop):>8}{_ratio(row.ratio_first_touch):>12}{note}"
        )
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    lines.append(
        f"took {report.seconds:.1f}s on CPUs {cpus}; other processes used "
        f"{report.other_load:.0%} of the CPUs; first-touch: the same touchers on an "
        f"unregistered {config.memory} region in the same state"
    )
    if report.other_load > 0.1:
        lines.append(
            "WARNING: other processes ran during the measurement: the figures are "
            "disturbed, compare them with care"
        )
    return "\n".join(lines) + "\n"
