"""``uffdharness bench demand-paging``: V vCPU-like toucher threads faulting in their own
slices, served by the C reference loop and the chosen engines, beside the no-uffd
first-touch rate (the measuring lives in uffdharness.demandpaging)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from uffdharness.cli.arguments import check_outputs, count

__all__ = ["add_parser", "run"]

# Kept here as well as in uffdharness.demandpaging so building the parser imports nothing
# heavy (every start builds every parser); tests/test_demand_paging.py checks they agree.
MODE_NAMES = ("copy", "continue", "move", "zeropage")
ENGINE_NAMES = ("native", "thread", "process")
HANDLER_NAMES = ("per-vcpu", "one")
KIND_NAMES = ("anon", "shmem", "memfd", "memfd-private", "hugetlb", "hugetlb-private")
MAX_VCPUS = 256


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demand-paging",
        help="V toucher threads demand-faulting their own slices (KVM demand_paging_test)",
        description=(
            "V toucher pthreads each fault in their own slice of one region (as the KVM "
            "selftest demand_paging_test's vCPUs do), served by one handler per vCPU or one "
            "for all. Per V: pages/s and per-fault latency min/median/p99 for the plain C "
            "loop, each engine and the no-uffd first-touch rate of the same touchers, with "
            "the CPU placement of every figure. Every served page's content is verified."
        ),
    )
    parser.add_argument(
        "--vcpus",
        type=vcpu_list,
        default=(1, 2, 4, 8),
        metavar="V,V,...",
        help="toucher thread counts, one figure set each (default 1,2,4,8)",
    )
    parser.add_argument(
        "--mode",
        choices=MODE_NAMES,
        default="copy",
        help="how a fault is resolved: UFFDIO_COPY, UFFDIO_CONTINUE of a MINOR fault "
        "(page cache filled through a second mapping), UFFDIO_MOVE (6.8), UFFDIO_ZEROPAGE",
    )
    parser.add_argument(
        "--memory",
        choices=KIND_NAMES,
        help="memory kind (default anon; shmem for --mode continue)",
    )
    parser.add_argument(
        "--handlers",
        choices=HANDLER_NAMES,
        default="per-vcpu",
        help="one uffd and handler per vCPU slice (default), or one for the whole region",
    )
    parser.add_argument(
        "--engine",
        type=engine_list,
        default=("native",),
        metavar="E,E,...",
        help=f"FaultHandler engines beside the C loop, from {','.join(ENGINE_NAMES)} "
        "(default native)",
    )
    parser.add_argument(
        "--pages-per-vcpu",
        type=count(1, 1 << 20),
        help="pages each toucher faults in (default 4096 4K pages; 16 hugepages)",
    )
    parser.add_argument(
        "--reps", type=count(1, 100), default=5, help="repetitions after a warm-up (5)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin toucher i to CPU i %% ncpus and each handler beside its toucher "
        "(default: unpinned)",
    )
    parser.add_argument(
        "--read",
        action="store_true",
        help="touch with reads (default: a write access that keeps the content)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the rows as JSON to FILE")
    parser.set_defaults(handler=run, usage_error=parser.error)


def _names(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name for name in text.split(",") if name))
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what}(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {','.join(allowed)}"
        )
    return names


def engine_list(text: str) -> tuple[str, ...]:
    return _names(text, ENGINE_NAMES, "engine")


def vcpu_list(text: str) -> tuple[int, ...]:
    parse = count(1, MAX_VCPUS)
    values = tuple(dict.fromkeys(parse(part) for part in text.split(",") if part.strip()))
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: give vCPU counts like 1,2,4,8")
    return values


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from uffdharness import demandpaging

    out = out if out is not None else sys.stdout
    if getattr(args, "kernel", None):  # `bench --kernel SPEC demand-paging`
        args.usage_error("--kernel: demand-paging runs on the host kernel only")
    if getattr(args, "kcidb", None):  # `bench --kcidb FILE demand-paging`
        args.usage_error("--kcidb: the faults benchmark's figures only, not demand-paging's")
    check_outputs(args.usage_error, json=args.json)
    memory = args.memory or demandpaging.MODES[args.mode].default_memory
    problem = demandpaging.usage_problem(args.mode, memory, args.engine)
    if problem:
        args.usage_error(problem)
    config = demandpaging.DemandConfig(
        vcpus=args.vcpus,
        mode=args.mode,
        memory=memory,
        handlers=args.handlers,
        engines=args.engine,
        pages_per_vcpu=args.pages_per_vcpu or demandpaging.default_pages_per_vcpu(memory),
        reps=args.reps,
        pin=args.pin,
        writes=not args.read,
    )

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        report = demandpaging.run(config, progress)
    except (demandpaging.DemandError, OSError) as exc:  # OSError: a C loop's or toucher's
        sys.stderr.write(f"uffdharness bench demand-paging: {exc}\n")
        return 1
    out.write(demandpaging.render(report))
    if args.json:
        with open(args.json, "w") as report_file:
            json.dump(report.to_json(), report_file, indent=2)
            report_file.write("\n")
    return 1 if report.failures else 0
