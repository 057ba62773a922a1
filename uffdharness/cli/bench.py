"""``uffdharness bench``: fault-handling throughput of every engine beside a plain C loop
(the measuring lives in uffdharness.benchmark)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from uffdharness.benchmark import BenchConfig

__all__ = ["add_parser", "config_from_args", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure fault-handling throughput of every engine against a plain C loop",
        description=(
            "Faults per second for anon-4K, shmem-4K and hugetlb-2M COPY and a write-protect "
            "round trip, for the native, thread and process engines beside a plain C loop, "
            "with both threads pinned to one CPU and to two; readahead pages/s; ratios and "
            "targets. Needs root for hugetlb (skipped with the reason otherwise)."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer pages and repetitions")
    parser.add_argument("--reps", type=int, help="repetitions (default 7, quick 3)")
    parser.add_argument("--pages", type=int, help="4K pages per figure (default 4096)")
    parser.add_argument("--huge-pages", type=int, help="2M pages per figure (default 64)")
    parser.add_argument(
        "--workloads",
        default="anon,shmem,hugetlb,wp",
        help="comma-separated subset of anon,shmem,hugetlb,wp",
    )
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    from uffdharness.benchmark import BenchConfig

    config = BenchConfig(pages_4k=1024, pages_2m=16, reps=3) if args.quick else BenchConfig()
    if args.reps:
        config.reps = args.reps
    if args.pages:
        config.pages_4k = args.pages
    if args.huge_pages:
        config.pages_2m = args.huge_pages
    config.workloads = tuple(name for name in args.workloads.split(",") if name)
    return config


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from uffdharness import benchmark

    out = out if out is not None else sys.stdout
    config = config_from_args(args)

    def progress(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    report = benchmark.run(config, progress)
    if args.json:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")
    else:
        out.write(benchmark.render(report))
    return 1 if report.missed else 0
