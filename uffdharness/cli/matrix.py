"""``uffdharness matrix``: the catalogue under several kernels, as a kernel x scenario table;
``uffdharness matrix merge``: the tables of several such runs as one.

Two operations, one command:

    uffdharness matrix --kernel SPEC [--kernel SPEC ...] [options]    run kernels
    uffdharness matrix merge FILE... [--json FILE] [--junit FILE]     merge their --json

``merge`` is an optional sub-command of ``matrix``; without it, ``matrix`` runs kernels as it
always has. argparse cannot require ``--kernel`` only when no sub-command follows, so
``run`` requires it itself, with argparse's own message and exit status 2; and ``merge``
refuses the options of a run given before it, which would otherwise be dropped silently.
``python -m uffdharness.matrix.merge`` is the same merge (its ``main`` calls ``run_merge``).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TextIO

from uffdharness.interrupts import signal_name

from .arguments import add_guest_timeouts, check_outputs, count, exit_status_help
from .ciargs import add_ci_arguments, add_kcidb_arguments
from .run import add_selection_arguments

if TYPE_CHECKING:
    from uffdharness.matrix.runner import KernelRun

MAX_JOBS = 64

__all__ = [
    "MERGE_DESCRIPTION",
    "add_merge_arguments",
    "add_parser",
    "run",
    "run_merge",
    "stop_on_signals",
]

SPEC_HELP = (
    "host (the running kernel, no qemu), debian:5.10 | debian:6.1 | debian:6.12 | "
    "debian:X.Y (newest Debian package of that series), debian:latest, debian:<package "
    "version> (e.g. debian:6.1.192-2), /path/to/bzImage[,modules=DIR] (vmlinux works too), "
    "or a kernel to build: src:PATH or debian-src:X.Y, each with ,patch=FILE (repeatable) and "
    ",config=FRAGMENT"
)
USAGE = (
    "%(prog)s --kernel SPEC [--kernel SPEC ...] [options]\n"
    "       %(prog)s merge FILE... [--json FILE] [--junit FILE]"
)
MATRIX_FAILURES = "fail, error or hang, expectation violation or guest failure"
MERGE_DESCRIPTION = (
    "Merge `uffdharness matrix --json` files (one CI job per kernel) into one kernel x "
    "scenario table, JSON and JUnit report. Expectations are checked again with this "
    "installation's data, so every kernel is judged by the same rules; a kernel in several "
    "files keeps its last section. " + exit_status_help(MATRIX_FAILURES) + " 2 also when "
    "no input is usable."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "matrix",
        usage=USAGE,
        help="run the catalogue under other kernels booted in qemu; merge such runs",
        description="Boot each kernel in qemu (the host's root file system, read-only), run "
        "`uffdharness run` there once, and print a kernel x scenario table. Each kernel's "
        "results are checked against what that kernel version is expected to show. "
        + exit_status_help(MATRIX_FAILURES),
        epilog=f"SPEC: {SPEC_HELP}. Debian kernels are downloaded once into "
        "~/.cache/uffdharness/kernels.",
    )
    run_options = _add_run_arguments(parser)
    operations = parser.add_subparsers(
        dest="operation", title="operations", metavar="<operation>", prog=parser.prog
    )
    merge = operations.add_parser(
        "merge",
        help="merge the --json of several matrix runs into one table and report",
        description=MERGE_DESCRIPTION,
    )
    add_merge_arguments(merge)
    # what the handlers' own usage checks need (see the module docstring)
    parser.set_defaults(handler=run, usage_error=parser.error, run_options=run_options)
    merge.set_defaults(handler=_merge_after_matrix)


def _add_run_arguments(parser: argparse.ArgumentParser) -> tuple[argparse.Action, ...]:
    """The options of a matrix run; what they are added as, for ``merge`` to refuse."""
    kernels = parser.add_argument(
        "--kernel",
        dest="kernels",
        action="append",
        metavar="SPEC",
        help="a kernel to run under (repeatable; required to run)",
    )
    return (
        kernels,
        *add_selection_arguments(parser),
        parser.add_argument(
            "--jobs",
            type=int,
            default=1,
            metavar="N",
            help="guests to run at once (default 1); vCPUs per guest are chosen "
            "so they do not oversubscribe the host",
        ),
        *add_guest_timeouts(parser),
        parser.add_argument(
            "--guest-memory",
            type=count(256, 1 << 20),
            default=None,
            metavar="MB",
            help="guest RAM in MiB (default: the guest runner's)",
        ),
        parser.add_argument("--json", metavar="FILE", help="write the JSON report to FILE"),
        parser.add_argument(
            "--junit", metavar="FILE", help="write JUnit XML to FILE, one testsuite per kernel"
        ),
        parser.add_argument(
            "--ktap",
            action="store_true",
            help="print one KTAP document (a top-level test per kernel) instead of the table",
        ),
        parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr"),
        *add_ci_arguments(parser, "once the kernels have run, the kernel first in its id"),
    )


def add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a merge, for ``matrix merge`` and ``python -m uffdharness.matrix.merge``.

    Their dests are not the run's (``json``, ``junit``): a run's ``--json`` given before
    ``merge`` must stay visible for ``merge`` to refuse it, not be overwritten.
    """
    parser.add_argument("inputs", nargs="+", metavar="FILE", help="matrix JSON files")
    parser.add_argument(
        "--json", dest="merged_json", metavar="FILE", help="write the merged JSON to FILE"
    )
    parser.add_argument(
        "--junit",
        dest="merged_junit",
        metavar="FILE",
        help="write JUnit XML to FILE, one testsuite per kernel",
    )
    add_kcidb_arguments(parser, prefix="merged_")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``uffdharness matrix --kernel SPEC ...``: boot, run, table, reports.

    SIGINT, SIGTERM and SIGHUP stop the run: every guest and helper it started is killed,
    the table and reports show what finished (the rest as interrupted), and the exit
    status is 128 + the signal's number. A second signal kills what is left at once.
    """
    try:
        with stop_on_signals():
            return _run(args, out or sys.stdout)
    except KeyboardInterrupt as stop:  # a signal before the handlers were in place
        signum = getattr(stop, "signum", signal.SIGINT)
        sys.stderr.write(
            f"uffdharness matrix: interrupted by {signal_name(signum)} before any kernel ran\n"
        )
        return 128 + signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Route the stopping signals to the matrix's stop request while the block runs."""
    from uffdharness import interrupts
    from uffdharness.matrix.children import CHILDREN

    try:
        with interrupts.calling(CHILDREN.stop):
            yield
    finally:
        CHILDREN.reset()


def _run(args: argparse.Namespace, out: TextIO) -> int:
    if not args.kernels:
        args.usage_error("the following arguments are required: --kernel")
    check_outputs(args.usage_error, json=args.json, junit=args.junit, kcidb=args.kcidb)

    from uffdharness.matrix import hosttools, report
    from uffdharness.matrix.children import CHILDREN
    from uffdharness.matrix.kernelspec import SpecError
    from uffdharness.matrix.progress import ProgressPrinter
    from uffdharness.matrix.runner import (
        MatrixError,
        MatrixOptions,
        check_specs,
        describe_error,
        exit_status,
        require_tools,
        run_matrix,
        selects_anything,
    )

    err = sys.stderr
    if args.jobs < 1:
        err.write("uffdharness matrix: --jobs must be at least 1\n")
        return 2
    if args.jobs > MAX_JOBS:
        err.write(f"uffdharness matrix: --jobs must be at most {MAX_JOBS}\n")
        return 2
    if not selects_anything(args.pattern, args.memory):
        # every guest would boot only to say so
        memory = f" on memory {', '.join(args.memory)}" if args.memory else ""
        err.write(f"uffdharness matrix: no scenario matches -k {args.pattern!r}{memory}\n")
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
    progress = None if args.quiet else ProgressPrinter(err, specs)
    started = time.monotonic()
    try:
        runs = run_matrix(specs, options, progress)
    except MatrixError as exc:
        err.write(f"uffdharness matrix: {exc}\n")
        return 2
    finally:
        if progress is not None:
            progress.close()
    wall = time.monotonic() - started
    settings = {
        "specs": specs,
        "pattern": args.pattern,
        "memory": list(options.memory),
        "jobs": args.jobs,
        "timeout": args.timeout,
        "guest_timeout": args.guest_timeout,
    }
    signum = CHILDREN.stop_signal
    if signum is not None:
        settings["interrupted"] = signal_name(signum)
    status = exit_status(runs)
    try:
        if args.lava:
            from uffdharness.lava import print_matrix

            print_matrix(runs, out)
        if args.ktap:
            out.write(report.ktap(runs))
        else:
            report.print_table(runs, out, wall)
        out.flush()
    except OSError as exc:  # a terminal gone with SIGHUP; the reports below still count
        err.write(f"uffdharness matrix: cannot print the table: {describe_error(exc)}\n")
    for option, path, write in (
        ("--json", args.json, lambda path: report.write_json(path, runs, wall, settings)),
        ("--junit", args.junit, lambda path: report.write_junit(path, runs)),
        ("--kcidb", args.kcidb, lambda path: _write_kcidb(path, runs, args.origin)),
    ):
        if path:
            try:
                write(path)
            except OSError as exc:
                why = describe_error(exc)
                err.write(f"uffdharness matrix: cannot write {option} {path}: {why}\n")
                status = status or 1
    if signum is not None:
        unfinished = [run.spec for run in runs if run.interrupted]
        err.write(
            f"uffdharness matrix: interrupted by {signal_name(signum)}: "
            f"{len(runs) - len(unfinished)} of {len(runs)} kernels finished"
            + (f"; not finished: {', '.join(unfinished)}" if unfinished else "")
            + "\n"
        )
        return 128 + signum
    return status


def _merge_after_matrix(args: argparse.Namespace) -> int:
    """``uffdharness matrix merge``: refuse run options written before ``merge``."""
    given = [
        option.option_strings[-1]
        for option in args.run_options
        if getattr(args, option.dest) != option.default
    ]
    if given:
        args.usage_error(f"not an option of merge, but of a matrix run: {', '.join(given)}")
    return run_merge(args)


def run_merge(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Merge ``args.inputs``; print the table, write ``--json``/``--junit`` if asked."""
    from uffdharness.matrix import report
    from uffdharness.matrix.merge import merge
    from uffdharness.matrix.runner import exit_status

    out = out or sys.stdout
    try:
        runs = merge(args.inputs)
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"merge: {exc}\n")
        return 2
    if not runs:
        sys.stderr.write("merge: the inputs hold no kernels\n")
        return 2
    report.print_table(runs, out)
    settings = {"merged_from": list(args.inputs)}
    if args.merged_json:
        report.write_json(args.merged_json, runs, None, settings)
    if args.merged_junit:
        report.write_junit(args.merged_junit, runs)
    if args.merged_kcidb:
        _write_kcidb(args.merged_kcidb, runs, args.merged_origin)
    return exit_status(runs)


def _write_kcidb(path: str, runs: Sequence[KernelRun], origin: str) -> None:
    from uffdharness import kcidb

    kcidb.write(path, kcidb.matrix_report(runs, origin))
