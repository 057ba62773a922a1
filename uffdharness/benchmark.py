"""Fault-handling throughput: every engine beside the plain C loop, per memory kind and
CPU placement (``uffdharness bench``; ``bench/bench_faults.py`` runs the same).

Every figure is one toucher pthread (cext/uffd_bench.c) touching pages one by one while
one handler serves them: the C reference loop, or a FaultHandler engine. Placement
dominates on small VMs (waking a halted vCPU costs ~60 us), so each figure is taken
twice: toucher and handler
pinned to one CPU (``same-cpu``) and to two (``cross-cpu``); ratios only ever compare
figures of one placement, taken in the same run, interleaved repetition by repetition so
drift hits them alike.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

from . import syscalls as sc
from ._native import ffi, lib
from .abi import Feature, RegisterMode, missing_features_reason
from .errors import FeatureUnavailable, UffdError
from .handler import Copy, FaultHandler, Readahead, RwpUnprotect, Unprotect
from .hugepages import HugepageError, HugepagePool
from .memory import Region, allocate
from .uffd import Userfaultfd

ENGINES = ("c-loop", "native", "native-busy", "thread", "process")
TARGETS = {"native": 0.95, "thread": 0.25}  # x the C loop, same workload and placement
READAHEAD_WINDOW = 64
READAHEAD_TARGET = 5.0  # x the pages/s of one page per fault


@dataclass
class Figure:
    workload: str
    engine: str
    placement: str
    unit: str
    samples: list[float] = field(default_factory=list)
    handler_us: list[float] = field(default_factory=list)  # handler's median read->resolve
    ratio: float | None = None  # median / the reference's median, same placement
    target: float | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else 0.0

    @property
    def low(self) -> float:
        return min(self.samples, default=0.0)

    @property
    def high(self) -> float:
        return max(self.samples, default=0.0)

    @property
    def missed(self) -> bool:
        return self.target is not None and self.ratio is not None and self.ratio < self.target

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(median=self.median, min=self.low, max=self.high, missed=self.missed)
        return data


@dataclass
class Placement:
    name: str
    toucher_cpu: int
    handler_cpu: int


@dataclass
class BenchConfig:
    pages_4k: int = 4096
    pages_2m: int = 64
    reps: int = 7
    workloads: tuple[str, ...] = ("anon", "shmem", "hugetlb", "wp", "rwp")


@dataclass
class BenchReport:
    config: BenchConfig
    placements: list[Placement]
    figures: list[Figure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    other_load: float = 0.0  # share of all CPU time other processes used during the run

    def find(self, workload: str, engine: str, placement: str) -> Figure | None:
        for figure in self.figures:
            if (figure.workload, figure.engine, figure.placement) == (workload, engine, placement):
                return figure
        return None

    @property
    def missed(self) -> list[Figure]:
        return [figure for figure in self.figures if figure.missed]

    def to_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "placements": [asdict(p) for p in self.placements],
            "figures": [figure.to_json() for figure in self.figures],
            "skipped": self.skipped,
            "other_load": self.other_load,
            "missed": [f"{f.workload}/{f.engine}/{f.placement}" for f in self.missed],
            "notes": notes(self),
            "seconds": self.seconds,
        }


# ---- workloads -------------------------------------------------------------------------


@dataclass
class Workload:
    """A registered region, its COPY source, and how to make every page fault again."""

    name: str
    title: str
    region: Region
    uffd: Userfaultfd
    source: Region | None
    resolve: int  # lib.UH_BENCH_COPY / _WP / _RWP: how a fault is resolved
    reset: Callable[[], None]

    @property
    def writes(self) -> bool:
        """WP and RWP round trips are measured with writes (a WP fault needs one)."""
        return self.resolve != lib.UH_BENCH_COPY

    @property
    def pages(self) -> int:
        return self.region.pages


def _copy_workload(
    stack: ExitStack, name: str, title: str, kind: str, pages: int, features: Feature
) -> Workload:
    region = stack.enter_context(allocate(kind, pages))
    # Not inherited by the process engine's helper: nothing to COW-share with it.
    region.madvise(sc.MADV_DONTFORK)
    source = stack.enter_context(allocate("anon", region.length // os.sysconf("SC_PAGE_SIZE")))
    source.fill_indexed(1)
    uffd = stack.enter_context(Userfaultfd.open(features))
    uffd.register(region)
    drop_advice = region.kind.spec.drop_advice

    def reset() -> None:
        region.madvise(drop_advice)

    return Workload(name, title, region, uffd, source, lib.UH_BENCH_COPY, reset)


def _wp_workload(stack: ExitStack, pages: int) -> Workload:
    region = stack.enter_context(allocate("anon", pages))
    region.madvise(sc.MADV_DONTFORK)
    region.fill_indexed(2)
    uffd = stack.enter_context(Userfaultfd.open(Feature.PAGEFAULT_FLAG_WP))
    uffd.register(region, mode=RegisterMode.WP)

    def reset() -> None:
        uffd.writeprotect(region)

    return Workload("wp", "WP round trip anon-4K", region, uffd, None, lib.UH_BENCH_WP, reset)


def _rwp_workload(stack: ExitStack, pages: int) -> Workload:
    """A write to a read-write-protected page and UFFDIO_RWPROTECT mode 0 (7.3)."""
    region = stack.enter_context(allocate("anon", pages))
    region.madvise(sc.MADV_DONTFORK)
    region.fill_indexed(3)
    uffd = stack.enter_context(Userfaultfd.open(Feature.RWP))
    uffd.register(region, mode=RegisterMode.RWP)

    def reset() -> None:
        uffd.rwprotect(region)

    return Workload("rwp", "RWP round trip anon-4K", region, uffd, None, lib.UH_BENCH_RWP, reset)


def make_workloads(stack: ExitStack, config: BenchConfig, skipped: list[str]) -> list[Workload]:
    made = []
    for name in config.workloads:
        try:
            if name == "anon":
                made.append(
                    _copy_workload(stack, name, "anon-4K COPY", "anon", config.pages_4k, Feature(0))
                )
            elif name == "shmem":
                made.append(
                    _copy_workload(
                        stack,
                        name,
                        "shmem-4K COPY",
                        "shmem",
                        config.pages_4k,
                        Feature.MISSING_SHMEM,
                    )
                )
            elif name == "hugetlb":
                try:
                    stack.enter_context(HugepagePool(config.pages_2m))
                except (HugepageError, OSError) as exc:
                    skipped.append(
                        f"hugetlb-2M COPY: cannot reserve {config.pages_2m} hugepages ({exc})"
                    )
                    continue
                made.append(
                    _copy_workload(
                        stack,
                        name,
                        "hugetlb-2M COPY",
                        "hugetlb",
                        config.pages_2m,
                        Feature.MISSING_HUGETLBFS,
                    )
                )
            elif name == "wp":
                made.append(_wp_workload(stack, config.pages_4k))
            elif name == "rwp":
                made.append(_rwp_workload(stack, config.pages_4k))
        except FeatureUnavailable as exc:
            missing = Feature(sum(Feature[n] for n in exc.missing if n in Feature.__members__))
            skipped.append(f"{name}: {missing_features_reason(missing)}")
        except UffdError as exc:
            skipped.append(f"{name}: {exc}")
    return made


# ---- one measurement ---------------------------------------------------------------------


def _touch(region: Region, count: int, write: bool, cpu: int) -> float:
    elapsed = lib.uh_bench_touch(
        ffi.cast("char *", region.addr), count, region.page_size, int(write), cpu
    )
    if elapsed < 0:
        raise OSError(-elapsed, f"toucher: {os.strerror(-elapsed)}")
    return elapsed / 1e9


def measure(
    workload: Workload, engine: str, placement: Placement, policy_readahead: int = 1
) -> tuple[float, int, float]:
    """Touch every page once; (seconds, faults handled, handler median us)."""
    region = workload.region
    workload.reset()
    if engine == "c-loop":
        faults = ffi.new("uint64_t *")
        src = ffi.cast("char *", workload.source.addr if workload.source else 0)
        elapsed = lib.uh_bench_c_loop(
            workload.uffd.fileno(),
            ffi.cast("char *", region.addr),
            region.pages,
            region.page_size,
            src,
            workload.resolve,
            placement.toucher_cpu,
            placement.handler_cpu,
            faults,
        )
        if elapsed < 0:
            raise OSError(-elapsed, f"C loop: {os.strerror(-elapsed)}")
        return elapsed / 1e9, faults[0], 0.0
    policy = {
        lib.UH_BENCH_WP: Unprotect(),
        lib.UH_BENCH_RWP: RwpUnprotect(),
    }.get(workload.resolve) or Copy(workload.source)
    if policy_readahead > 1:
        policy = Readahead(policy, policy_readahead)
    handler = FaultHandler(
        workload.uffd,
        policy,
        region,
        engine="native" if engine == "native-busy" else engine,  # type: ignore[arg-type]
        busy_poll=engine == "native-busy",
        cpu=placement.handler_cpu,
        release_on_stop=False,
    )
    with handler:
        seconds = _touch(region, region.pages, workload.writes, placement.toucher_cpu)
    stats = handler.stats
    return seconds, stats.faults.total, stats.latency.median_us


def measure_first_touch(region: Region, placement: Placement) -> float:
    region.madvise(sc.MADV_DONTNEED)
    return _touch(region, region.pages, False, placement.toucher_cpu)


# ---- the run -----------------------------------------------------------------------------


def placements() -> list[Placement]:
    cpus = sorted(os.sched_getaffinity(0))
    found = [Placement("same-cpu", cpus[-1], cpus[-1])]
    if len(cpus) > 1:
        found.append(Placement("cross-cpu", cpus[0], cpus[-1]))
    return found


def _cpu_seconds() -> tuple[float, float]:
    """(busy seconds of every CPU, seconds this process and its reaped children used)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return busy, own.user + own.system + own.children_user + own.children_system


class OtherLoad:
    """What other processes took of the CPUs from construction on: busy time of every CPU
    (/proc/stat) less this process's own and its reaped children's."""

    def __init__(self) -> None:
        self._busy, self._own = _cpu_seconds()

    def share(self, seconds: float) -> float:
        """Their share of all CPU time in the ``seconds`` since construction."""
        busy, own = _cpu_seconds()
        available = seconds * len(os.sched_getaffinity(0))
        others = (busy - self._busy) - (own - self._own)
        return max(0.0, others / available) if available else 0.0


def run(config: BenchConfig, progress: Callable[[str], None] | None = None) -> BenchReport:
    started = time.monotonic()
    load = OtherLoad()
    report = BenchReport(config, placements())
    say = progress or (lambda _text: None)
    with ExitStack() as stack:
        workloads = make_workloads(stack, config, report.skipped)
        baseline = stack.enter_context(allocate("anon", config.pages_4k))
        readahead = next((w for w in workloads if w.name == "anon"), None)
        figures: dict[tuple[str, str, str], Figure] = {}

        def figure(workload: str, engine: str, placement: str, unit: str) -> Figure:
            key = (workload, engine, placement)
            if key not in figures:
                figures[key] = Figure(workload, engine, placement, unit)
                report.figures.append(figures[key])
            return figures[key]

        # Repetition 0 warms up (first allocation of hugepages, page tables, caches) and
        # is not counted.
        for rep in range(config.reps + 1):
            say(f"repetition {rep}/{config.reps}" if rep else "warm-up")
            if rep == 1:
                report.figures.clear()
                figures.clear()
            for placement in report.placements:
                for workload in workloads:
                    for engine in ENGINES:
                        seconds, faults, handler_us = measure(workload, engine, placement)
                        entry = figure(workload.title, engine, placement.name, "faults/s")
                        entry.samples.append(faults / seconds)
                        if handler_us:
                            entry.handler_us.append(handler_us)
                        if faults != workload.pages:
                            entry.note = f"{faults} faults for {workload.pages} pages"
                seconds = measure_first_touch(baseline, placement)
                figure(
                    "no-uffd first read anon-4K", "kernel", placement.name, "faults/s"
                ).samples.append(baseline.pages / seconds)
                if readahead is not None:
                    for engine in ("native", "thread"):
                        for window in (1, READAHEAD_WINDOW):
                            seconds, _, _ = measure(readahead, engine, placement, window)
                            figure(
                                f"readahead-{window} anon-4K", engine, placement.name, "pages/s"
                            ).samples.append(readahead.pages / seconds)
    _ratios(report)
    report.seconds = time.monotonic() - started
    report.other_load = load.share(report.seconds)
    return report


def _ratios(report: BenchReport) -> None:
    """Median of per-repetition ratios: each repetition measures an engine right after its
    reference, so pairing them cancels drift between repetitions."""
    for figure in report.figures:
        reference = None
        if figure.unit == "faults/s" and figure.engine in ENGINES:
            reference = report.find(figure.workload, "c-loop", figure.placement)
            figure.target = TARGETS.get(figure.engine)
        elif figure.workload.startswith(f"readahead-{READAHEAD_WINDOW} "):
            reference = report.find("readahead-1 anon-4K", figure.engine, figure.placement)
            figure.target = READAHEAD_TARGET
        if reference is not None and len(reference.samples) == len(figure.samples):
            figure.ratio = statistics.median(
                mine / theirs
                for mine, theirs in zip(figure.samples, reference.samples, strict=True)
                if theirs
            )


# ---- output ------------------------------------------------------------------------------


def _rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def render(report: BenchReport) -> str:
    config = report.config
    lines = [
        f"uffdharness bench: {config.reps} repetitions, {config.pages_4k} x 4K pages, "
        f"{config.pages_2m} x 2M pages; median (min..max); ratio = median of per-repetition "
        f"ratios to the reference of the same placement",
    ]
    for placement in report.placements:
        lines.append("")
        lines.append(
            f"{placement.name}: toucher on CPU {placement.toucher_cpu}, handler on CPU "
            f"{placement.handler_cpu}"
        )
        lines.append(
            f"  {'workload':<28}{'engine':<13}{'median':>9}  {'min..max':<17}{'ratio':>7}"
            f"  {'target':<10}{'handler us':>10}"
        )
        for figure in report.figures:
            if figure.placement != placement.name:
                continue
            ratio = "" if figure.ratio is None else f"{figure.ratio:.2f}x"
            target = ""
            if figure.target is not None:
                verdict = "MISSED" if figure.missed else "ok"
                target = f">={figure.target:g} {verdict}"
            handler = f"{statistics.median(figure.handler_us):.1f}" if figure.handler_us else ""
            span = f"{_rate(figure.low)}..{_rate(figure.high)}"
            unit = "" if figure.unit == "faults/s" else f" {figure.unit}"
            lines.append(
                f"  {figure.workload:<28}{figure.engine:<13}{_rate(figure.median):>9}  "
                f"{span:<17}{ratio:>7}  {target:<10}{handler:>10}{unit}"
                + (f"  ({figure.note})" if figure.note else "")
            )
    for text in report.skipped:
        lines.append(f"skipped: {text}")
    lines.append("")
    lines.extend(notes(report))
    lines.append(
        f"took {report.seconds:.1f}s; other processes used {report.other_load:.0%} of the CPUs"
    )
    return "\n".join(lines) + "\n"


def notes(report: BenchReport) -> list[str]:
    """Busy-poll verdict, then one line per missed target with what the run shows about it."""
    found = []
    if report.other_load > 0.1:
        found.append(
            f"WARNING: other processes used {report.other_load:.0%} of the CPUs during the "
            "run: the figures are disturbed, compare them with care"
        )
    for placement in report.placements:
        for figure in report.figures:
            if figure.engine != "native-busy" or figure.placement != placement.name:
                continue
            sleeping = report.find(figure.workload, "native", placement.name)
            if sleeping and sleeping.median:
                gain = figure.median / sleeping.median
                if figure.low > sleeping.high:
                    verdict = "beats sleeping in poll() in every repetition"
                elif figure.high < sleeping.low:
                    verdict = "loses to sleeping in poll() in every repetition"
                else:
                    verdict = "no clear difference (the ranges overlap)"
                found.append(
                    f"busy-poll vs poll() {placement.name} {figure.workload}: {gain:.2f}x, "
                    f"{verdict}"
                )
    found.extend(_rwp_against_wp(report))
    for figure in report.missed:
        found.append(
            f"MISSED: {figure.workload} {figure.engine} {figure.placement}: "
            f"{figure.ratio:.2f}x < {figure.target:g}x. {_why(report, figure)}"
        )
    if not report.missed:
        found.append("all targets met")
    return found


def _rwp_against_wp(report: BenchReport) -> list[str]:
    """The RWP round trip as a ratio to the WP round trip, per engine and placement: both
    measured in this run, on this kernel (a guest's, where the host lacks RWP)."""
    lines = []
    for placement in report.placements:
        for engine in ENGINES:
            rwp = report.find("RWP round trip anon-4K", engine, placement.name)
            wp = report.find("WP round trip anon-4K", engine, placement.name)
            if not (rwp and wp and len(rwp.samples) == len(wp.samples) and wp.median):
                continue
            ratio = statistics.median(
                mine / theirs for mine, theirs in zip(rwp.samples, wp.samples, strict=True)
            )
            lines.append(
                f"RWP vs WP round trip, {engine} {placement.name}: {ratio:.2f}x "
                f"({_rate(rwp.median)} vs {_rate(wp.median)} faults/s)"
            )
    return lines


def _why(report: BenchReport, figure: Figure) -> str:
    """What the figures of this run say about a miss (the numbers, not a guess)."""
    if figure.unit == "pages/s":
        return (
            "one fault already resolves a page quickly here, so a 64-page window "
            "saves less than the per-page COPY cost it keeps"
        )
    reference = report.find(figure.workload, "c-loop", figure.placement)
    if not reference or not figure.median or not reference.median:
        return ""
    per_fault = 1e6 / figure.median
    per_fault_c = 1e6 / reference.median
    handler = statistics.median(figure.handler_us) if figure.handler_us else 0.0
    share = handler / per_fault if per_fault else 0.0
    text = (
        f"{per_fault:.1f} us per fault against {per_fault_c:.1f} us for the C loop; "
        f"{handler:.1f} us ({share:.0%} of the round trip) pass from reading a fault to the "
        "return of the ioctl that resolved it (on one CPU that includes the woken toucher "
        "running first), the rest is the fault itself, the wake-up and the switches"
    )
    if figure.high >= reference.low and reference.high >= figure.low:
        text += (
            f"; the two ranges overlap ({_rate(figure.low)}..{_rate(figure.high)} vs "
            f"{_rate(reference.low)}..{_rate(reference.high)}): within this run's spread"
        )
    if figure.placement == "cross-cpu" and share < 0.25:
        text += (
            "; across CPUs both loops mostly wait for the other vCPU to wake from "
            "halt, which no handler code can shorten (busy-poll avoids it)"
        )
    return text
