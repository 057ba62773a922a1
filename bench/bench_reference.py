"""The bench's anon-4K COPY figures beside an independent tight C loop (bench/reference_loop.c).

Usage: python bench/bench_reference.py [--reps N] [--pages N] [--cpu N]

Compiles reference_loop.c with gcc into a temporary directory, then runs, interleaved
repetition by repetition, the reference loop (a child process) in its two forms
(``reference``: poll, read, COPY; ``reference-r``: read first, poll only on EAGAIN), the
harness's ``c-loop`` and the ``native`` engine (in this process, as
uffdharness.benchmark.measure runs them), all with toucher and handler pinned to one CPU
and the same number of pages.
When the bench's default page count (BenchConfig.pages_4k) differs from --pages, the
c-loop and native also run at that count (``c-loop@N``), in the same interleaving.
Prints each loop's median faults/s and its ratio to each reference (the median of the
per-repetition ratios, so drift between repetitions cancels), and the CPU time its two
threads used per fault, the figure to trust when other processes share the CPU (they
stretch the elapsed time, not the loop's own CPU time). Ratios only: the machine's
speed varies from run to run and between loads, a ratio taken in one run does not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uffdharness import benchmark  # noqa: E402
from uffdharness.abi import Feature  # noqa: E402
from uffdharness.handler import Copy, FaultHandler  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "reference_loop.c"
ENGINES = ("c-loop", "native")


def compile_reference(directory: str) -> str:
    binary = os.path.join(directory, "reference_loop")
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-pthread", "-o", binary, str(SOURCE)], check=True
    )
    return binary


def run_reference(binary: str, pages: int, cpu: int, read_first: bool) -> tuple[float, float]:
    """(faults/s, CPU ns per fault) of one run of the reference loop."""
    command = [binary, "-p", str(pages), "-c", str(cpu)] + (["-r"] if read_first else [])
    fields = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
    return float(fields[fields.index("faults/s") + 1]), float(
        fields[fields.index("cpu-ns/fault") + 1]
    )


def run_engine(
    workload: benchmark.Workload, engine: str, placement: benchmark.Placement
) -> tuple[float, float]:
    """(faults/s, CPU ns per fault) of one run, as benchmark.measure() takes it. The CPU
    time is this process's (toucher, handler, and the main thread waiting for them) over
    the touch alone: for native the handler is started before and its stats are read after
    (sorting the latency ring costs ~0.1 us per fault), as measure() does outside its
    clock."""
    workload.reset()
    if engine == "c-loop":
        cpu_before = time.process_time_ns()
        seconds, faults, _ = benchmark.measure(workload, engine, placement)
        cpu = time.process_time_ns() - cpu_before  # + a reset of nothing, a thread start
    else:
        handler = FaultHandler(
            workload.uffd,
            Copy(workload.source),
            workload.region,
            engine="native",
            cpu=placement.handler_cpu,
            release_on_stop=False,
        )
        with handler:
            cpu_before = time.process_time_ns()
            seconds = benchmark._touch(
                workload.region, workload.pages, False, placement.toucher_cpu
            )
            cpu = time.process_time_ns() - cpu_before
        faults = handler.stats.faults.total
    if faults != workload.pages:
        print(f"{engine}: {faults} faults for {workload.pages} pages")
    return faults / seconds, cpu / faults


def _ratio(mine: list[float], theirs: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(mine, theirs, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pages", type=int, default=100_000)
    parser.add_argument("--cpu", type=int, default=sorted(os.sched_getaffinity(0))[-1])
    args = parser.parse_args(argv)
    placement = benchmark.Placement("same-cpu", args.cpu, args.cpu)
    counts = [args.pages]
    if benchmark.BenchConfig().pages_4k != args.pages:
        counts.append(benchmark.BenchConfig().pages_4k)
    loops = ["reference", "reference-r"] + [
        engine if pages == args.pages else f"{engine}@{pages}"
        for pages in counts
        for engine in ENGINES
    ]
    rates: dict[str, list[float]] = {loop: [] for loop in loops}
    cpu_ns: dict[str, list[float]] = {loop: [] for loop in loops}
    with tempfile.TemporaryDirectory() as directory, ExitStack() as stack:
        binary = compile_reference(directory)
        workloads = [
            benchmark._copy_workload(stack, "anon", "anon-4K COPY", "anon", pages, Feature(0))
            for pages in counts
        ]
        for workload in workloads:  # warm-up, as the bench's repetition 0
            for engine in ENGINES:
                benchmark.measure(workload, engine, placement)
        for rep in range(args.reps):
            figures = [
                (loop, run_reference(binary, args.pages, args.cpu, read_first))
                for read_first, loop in ((False, "reference"), (True, "reference-r"))
            ]
            for workload in workloads:
                for engine in ENGINES:
                    loop = engine if workload.pages == args.pages else f"{engine}@{workload.pages}"
                    figures.append((loop, run_engine(workload, engine, placement)))
            for loop, (rate, ns) in figures:
                rates[loop].append(rate)
                cpu_ns[loop].append(ns)
            line = "  ".join(f"{loop} {rate / 1e3:.1f}k/{ns:.0f}ns" for loop, (rate, ns) in figures)
            print(f"repetition {rep + 1}/{args.reps}: {line}", flush=True)
    print(
        f"anon-4K COPY, {args.pages} pages, toucher and handler on CPU {args.cpu}, {args.reps} "
        "repetitions. faults/s: median and best; x ref = median of the per-repetition ratios "
        "to reference / reference-r. cpu ns/fault: CPU time of both threads per fault, which "
        "other processes on the CPU do not inflate; x ref = the reference's CPU time over "
        "this loop's (above 1: cheaper)"
    )
    print(
        f"  {'loop':<16}{'faults/s':>9}{'best':>9}{'x ref':>7}{'x ref-r':>9}"
        f"{'cpu ns':>9}{'x ref':>7}{'x ref-r':>9}"
    )
    for loop in loops:
        print(
            f"  {loop:<16}{statistics.median(rates[loop]) / 1e3:8.1f}k"
            f"{max(rates[loop]) / 1e3:8.1f}k"
            f"{_ratio(rates[loop], rates['reference']):7.2f}"
            f"{_ratio(rates[loop], rates['reference-r']):9.2f}"
            f"{statistics.median(cpu_ns[loop]):9.0f}"
            f"{_ratio(cpu_ns['reference'], cpu_ns[loop]):7.2f}"
            f"{_ratio(cpu_ns['reference-r'], cpu_ns[loop]):9.2f}"
        )
    print(
        f"  native to c-loop: {_ratio(rates['native'], rates['c-loop']):.2f}x faults/s, "
        f"{_ratio(cpu_ns['c-loop'], cpu_ns['native']):.2f}x cpu"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
