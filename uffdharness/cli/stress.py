"""``uffdharness stress``: the uffd-stress design on every memory kind (the stressing lives
in uffdharness.stress)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, TextIO

from uffdharness.cli.arguments import check_outputs, count, exit_status_help, seconds

if TYPE_CHECKING:
    from uffdharness.stress import StressResult

__all__ = ["add_parser", "run"]

ENGINES = ("native", "thread", "process")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from uffdharness.memory import STRESS_KINDS

    parser = subparsers.add_parser(
        "stress",
        help="race faults, background UFFDIO_COPY and VMA churn on two bouncing areas",
        description=(
            "The kernel's uffd-stress design on the harness's handler engines: per bounce, "
            "locker threads increment per-page counters in the registered area (faulting it "
            "in), the handlers resolve the faults by UFFDIO_COPY from the other area, "
            "background threads UFFDIO_COPY every page racing them (EEXIST, then WAKE), and "
            "a thread churns the neighbouring VMAs; then the areas swap. Every counter is "
            "checked after each bounce; a kind that cannot run here is a skip. "
            + exit_status_help("lost or doubled increment, unexpected errno or stuck thread")
        ),
    )
    parser.add_argument(
        "--memory",
        action="append",
        choices=STRESS_KINDS,
        help="memory kind (repeatable; default: every kind)",
    )
    parser.add_argument("--mib", type=count(1, 1 << 16), default=32, help="MiB per area (32)")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--bounces", type=count(1, 1 << 20), help="bounces per kind (default 8)")
    limit.add_argument(
        "--seconds", type=seconds(86400.0), help="bounce until this many seconds per kind"
    )
    parser.add_argument("--engine", choices=ENGINES, default="native", help="handler engine")
    parser.add_argument(
        "--wp", action="store_true", help="register MISSING|WP and add write-protect round trips"
    )
    parser.add_argument(
        "--threads",
        type=count(1, 64),
        help="lockers, copiers and handlers each (default: one per CPU)",
    )
    parser.add_argument("--no-churn", action="store_true", help="leave the neighbouring VMAs alone")
    parser.add_argument(
        "--deadline",
        type=seconds(3600.0),
        default=30.0,
        help="seconds a bounce may take before its threads count as stuck (30)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(handler=run, usage_error=parser.error)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from uffdharness import runner, stress, system
    from uffdharness.kindsetup import KindSetup
    from uffdharness.memory import STRESS_KINDS, MemoryKind

    out = out or sys.stdout
    check_outputs(args.usage_error, json=args.json)
    kinds = args.memory or list(STRESS_KINDS)
    threads = args.threads or stress.default_threads()
    configs = [
        stress.StressConfig(
            memory=kind,
            mib=args.mib,
            bounces=None if args.seconds else (args.bounces or 8),
            seconds=args.seconds,
            engine=args.engine,
            wp=args.wp,
            threads=threads,
            churn=not args.no_churn,
            deadline=args.deadline,
        )
        for kind in kinds
    ]
    interactive = not args.quiet and sys.stderr.isatty()

    def progress(text: str) -> None:
        if interactive:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()

    facts = system.facts()
    needs = [
        (c.memory, 2 * stress.area_pages(MemoryKind(c.memory), c.mib, threads)) for c in configs
    ]
    results: list[StressResult] = []
    with KindSetup(needs, facts.is_root) as setup:
        for config in configs:
            reason = setup.skip_reason(config.memory) or stress.skip_reason(config, facts)
            if reason is None:
                try:
                    result = stress.run(config, progress)
                except stress.StressError as exc:
                    reason = str(exc)
            if reason is not None:
                result = stress.skipped(config, reason)
            if interactive:
                sys.stderr.write("\r\033[K")
            results.append(result)
            out.write(_line(result))
            out.flush()
    if args.json:
        document = {
            "kernel": facts.release,
            "cpus": len(os.sched_getaffinity(0)),
            "runs": [result.to_json() for result in results],
        }
        with open(args.json, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
    return runner.exit_status(results)


def _line(result: StressResult) -> str:
    head = f"{result.memory:<16}{result.engine:<8}{result.verdict:<6}"
    if result.verdict == "skip":
        return f"{head}{result.reason}\n"
    text = (
        f"{head}{len(result.bounces)} bounces of {result.pages} x {result.page_size >> 10} KiB "
        f"in {result.seconds:.2f} s: {result.pages_per_s:,.0f} pages/s, "
        f"{result.faults_per_s:,.0f} faults/s\n"
    )
    return text + "".join(f"    {problem}\n" for problem in result.problems)
