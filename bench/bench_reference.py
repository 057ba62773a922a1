"""The bench's anon-4K COPY figures beside an independent tight C loop (bench/reference_loop.c).

Usage: python bench/bench_reference.py [--reps N] [--pages N] [--cpu N]

Compiles reference_loop.c with gcc into a temporary directory, then runs, interleaved
repetition by repetition, the reference loop (a child process, fresh mapping), the
harness's ``c-loop`` and the ``native`` engine (uffdharness.benchmark.measure, in this
process), all with toucher and handler pinned to one CPU and the same number of pages.
Prints each loop's median faults/s and its ratio to the reference: the median of the
per-repetition ratios, so drift between repetitions cancels. Ratios only: the machine's
speed varies from run to run and between loads, a ratio taken in one run does not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uffdharness import benchmark  # noqa: E402
from uffdharness.abi import Feature  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "reference_loop.c"
LOOPS = ("reference", "c-loop", "native")


def compile_reference(directory: str) -> str:
    binary = os.path.join(directory, "reference_loop")
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-pthread", "-o", binary, str(SOURCE)], check=True
    )
    return binary


def run_reference(binary: str, pages: int, cpu: int) -> float:
    out = subprocess.run(
        [binary, "-p", str(pages), "-c", str(cpu)], check=True, capture_output=True, text=True
    ).stdout
    fields = out.split()
    return float(fields[fields.index("faults/s") + 1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pages", type=int, default=100_000)
    parser.add_argument("--cpu", type=int, default=sorted(os.sched_getaffinity(0))[-1])
    args = parser.parse_args(argv)
    placement = benchmark.Placement("same-cpu", args.cpu, args.cpu)
    samples: dict[str, list[float]] = {loop: [] for loop in LOOPS}
    with tempfile.TemporaryDirectory() as directory, ExitStack() as stack:
        binary = compile_reference(directory)
        workload = benchmark._copy_workload(
            stack, "anon", "anon-4K COPY", "anon", args.pages, Feature(0)
        )
        for engine in ("c-loop", "native"):  # warm-up, as the bench's repetition 0
            benchmark.measure(workload, engine, placement)
        for rep in range(args.reps):
            samples["reference"].append(run_reference(binary, args.pages, args.cpu))
            for engine in ("c-loop", "native"):
                seconds, faults, _ = benchmark.measure(workload, engine, placement)
                if faults != args.pages:
                    print(f"{engine}: {faults} faults for {args.pages} pages", file=sys.stderr)
                samples[engine].append(faults / seconds)
            line = "  ".join(f"{loop} {samples[loop][-1] / 1e3:.1f}k" for loop in LOOPS)
            print(f"repetition {rep + 1}/{args.reps}: {line}", flush=True)
    print(
        f"anon-4K COPY, {args.pages} pages, toucher and handler on CPU {args.cpu}, "
        f"{args.reps} repetitions; ratio = median of per-repetition ratios to the reference"
    )
    reference = samples["reference"]
    for loop in LOOPS:
        ratios = [mine / theirs for mine, theirs in zip(samples[loop], reference, strict=True)]
        print(
            f"  {loop:<10} median {statistics.median(samples[loop]) / 1e3:7.1f}k faults/s"
            f"  ratio {statistics.median(ratios):.2f}x"
            f"  ({' '.join(f'{r:.2f}' for r in ratios)})"
        )
    native = [n / c for n, c in zip(samples["native"], samples["c-loop"], strict=True)]
    print(f"  native / c-loop: {statistics.median(native):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
