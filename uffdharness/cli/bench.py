"""``uffdharness bench``: fault-handling throughput of every engine beside a plain C loop
(the measuring lives in uffdharness.benchmark)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, TextIO

from uffdharness.cli import bench_demand
from uffdharness.cli.arguments import MAX_GUEST_TIMEOUT_S, check_outputs, count, seconds
from uffdharness.cli.ciargs import add_kcidb_arguments

if TYPE_CHECKING:
    from uffdharness.benchmark import BenchConfig

__all__ = ["add_parser", "config_from_args", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure fault-handling throughput of every engine against a plain C loop",
        description=(
            "Faults per second for anon-4K, shmem-4K and hugetlb-2M COPY and the write-protect "
            "and read-write-protect (7.3) round trips, for the native, thread and process "
            "engines beside a plain C loop, with both threads pinned to one CPU and to two; "
            "readahead pages/s; ratios and targets. Needs root for hugetlb (skipped with the "
            "reason otherwise). --kernel runs it in a guest, e.g. for RWP on a host without it. "
            "'bench demand-paging' measures V toucher threads instead (see its --help)."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer pages and repetitions")
    parser.add_argument("--reps", type=count(1, 1000), help="repetitions (default 7, quick 3)")
    parser.add_argument(
        "--pages", type=count(1, 1 << 20), help="4K pages per figure (default 4096)"
    )
    parser.add_argument(
        "--huge-pages", type=count(1, 4096), help="2M pages per figure (default 64)"
    )
    parser.add_argument(
        "--workloads",
        type=workloads,
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--kernel",
        metavar="SPEC",
        help="run the benchmark in a qemu guest of this kernel (a matrix SPEC, e.g. "
        "debian:7.3) and print its report",
    )
    parser.add_argument(
        "--guest-timeout",
        type=seconds(MAX_GUEST_TIMEOUT_S),
        default=3600.0,
        help="seconds before the guest counts as hung (3600)",
    )
    add_kcidb_arguments(parser)
    parser.set_defaults(handler=run, usage_error=parser.error)
    # Optional: plain `uffdharness bench [opts]` is the faults benchmark above; a named one
    # brings its own options (its parser's defaults replace handler and usage_error).
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="<benchmark>")
    bench_demand.add_parser(benchmarks)


WORKLOADS = ("anon", "shmem", "hugetlb", "wp", "rwp")


def workloads(text: str) -> str:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {','.join(WORKLOADS)}"
        )
    return text


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
    check_outputs(args.usage_error, kcidb=args.kcidb)
    if args.kernel:
        if args.kcidb:
            args.usage_error("--kcidb: only on the running kernel, not with --kernel")
        return _run_in_guest(args, out)
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
    if args.kcidb:
        from uffdharness import kcidb, system

        kcidb.write(args.kcidb, kcidb.bench_report(system.facts(), report.to_json(), args.origin))
    return 1 if report.missed else 0


def _run_in_guest(args: argparse.Namespace, out: TextIO) -> int:
    """The same command in a guest of ``args.kernel``: its report, its exit status."""
    from uffdharness.matrix.guestbench import bench_in_guest
    from uffdharness.matrix.kernelspec import SpecError, parse
    from uffdharness.matrix.runner import MatrixError, describe_error

    try:
        parse(args.kernel)
    except SpecError as exc:
        args.usage_error(str(exc))
    forwarded = ["--workloads", args.workloads]
    if args.json:
        forwarded.append("--json")
    if args.quick:
        forwarded.append("--quick")
    for option, value in (("--reps", args.reps), ("--pages", args.pages)):
        if value:
            forwarded += [option, str(value)]
    if args.huge_pages:
        forwarded += ["--huge-pages", str(args.huge_pages)]
    try:
        result = bench_in_guest(
            args.kernel, forwarded, args.guest_timeout, lambda text: print(text, file=sys.stderr)
        )
    except (MatrixError, OSError) as exc:
        sys.stderr.write(f"uffdharness bench: {args.kernel}: {describe_error(exc)}\n")
        return 2
    out.write(result.stdout)
    if result.exit_code is None:
        sys.stderr.write(
            f"uffdharness bench: {args.kernel}: guest {result.status}: {result.detail}\n"
        )
        return 1
    sys.stderr.write(result.stderr)
    return result.exit_code
