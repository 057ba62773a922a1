"""``uffdharness matrix``: the catalogue under several kernels, as a kernel x scenario table."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from .runner import DEFAULT_TIMEOUT
from .scenarios.model import ALL_KINDS

# The same value as matrix.runner.DEFAULT_GUEST_TIMEOUT (a test holds them equal). Not
# imported from there: the parser is built on every `uffdharness` start, guests included,
# and importing the uffdharness.matrix package costs ~0.7 s of a guest's start under TCG.
DEFAULT_GUEST_TIMEOUT = 900.0

SPEC_HELP = (
    "host (the running kernel, no qemu), debian:5.10 | debian:6.1 | debian:6.12 | "
    "debian:X.Y (newest Debian package of that series), debian:latest, debian:<package "
    "version> (e.g. debian:6.1.192-2), or /path/to/bzImage[,modules=DIR] (vmlinux works too)"
)


def add_matrix_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "matrix",
        help="run the catalogue under other kernels booted in qemu",
        description="Boot each kernel in qemu (the host's root file system, read-only), run "
        "`uffdharness run` there once, and print a kernel x scenario table. Each kernel's "
        "results are checked against what that kernel version is expected to show. Exits 1 "
        "on any fail, error or hang, expectation violation or guest failure.",
        epilog=f"SPEC: {SPEC_HELP}. Debian kernels are downloaded once into "
        "~/.cache/uffdharness/kernels.",
    )
    parser.add_argument(
        "--kernel",
        dest="kernels",
        action="append",
        metavar="SPEC",
        required=True,
        help="a kernel to run under (repeatable)",
    )
    parser.add_argument("-k", dest="pattern", help="only scenario ids matching (glob/substring)")
    parser.add_argument(
        "--memory", action="append", choices=ALL_KINDS, help="only this memory kind (repeatable)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="guests to run at once (default 1); vCPUs per guest are chosen "
        "so they do not oversubscribe the host",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds per scenario x memory inside a guest ({DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--guest-timeout",
        type=float,
        default=DEFAULT_GUEST_TIMEOUT,
        metavar="S",
        help=f"seconds a guest may run before it counts as a hang ({DEFAULT_GUEST_TIMEOUT:g})",
    )
    parser.add_argument(
        "--guest-memory",
        type=int,
        default=None,
        metavar="MB",
        help="guest RAM in MiB (default: the guest runner's)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the JSON report to FILE")
    parser.add_argument(
        "--junit", metavar="FILE", help="write JUnit XML to FILE, one testsuite per kernel"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(handler=run_matrix_command)


def run_matrix_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from .matrix import hosttools, report
    from .matrix.kernelspec import SpecError
    from .matrix.runner import (
        MatrixError,
        MatrixOptions,
        check_specs,
        exit_status,
        require_tools,
        run_matrix,
    )

    out = out or sys.stdout
    err = sys.stderr
    if args.jobs < 1:
        err.write("uffdharness matrix: --jobs must be at least 1\n")
        return 2
    try:
        specs = check_specs(args.kernels)
        require_tools(specs)
    except SpecError as exc:
        err.write(f"uffdharness matrix: {exc}\n")
        return 2
    except hosttools.MissingHostTools as exc:
        err.write(f"{exc}\n")
        return 2
    options = MatrixOptions(
        pattern=args.pattern,
        memory=tuple(args.memory or ()),
        timeout=args.timeout,
        guest_timeout=args.guest_timeout,
        jobs=args.jobs,
        **({"memory_mb": args.guest_memory} if args.guest_memory else {}),
    )
    progress = None if args.quiet else (lambda line: err.write(f"matrix: {line}\n") or err.flush())
    started = time.monotonic()
    try:
        runs = run_matrix(specs, options, progress)
    except MatrixError as exc:
        err.write(f"uffdharness matrix: {exc}\n")
        return 2
    wall = time.monotonic() - started
    report.print_table(runs, out, wall)
    settings = {
        "specs": specs,
        "pattern": args.pattern,
        "memory": list(options.memory),
        "jobs": args.jobs,
        "timeout": args.timeout,
        "guest_timeout": args.guest_timeout,
    }
    if args.json:
        report.write_json(args.json, runs, wall, settings)
    if args.junit:
        report.write_junit(args.junit, runs)
    return exit_status(runs)
