"""``uffdharness run``: the catalogue on the running kernel, with a table and reports."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import TYPE_CHECKING, TextIO

from uffdharness.cli.arguments import (
    MAX_SCENARIO_TIMEOUT_S,
    check_outputs,
    exit_status_help,
    seconds,
)
from uffdharness.cli.ciargs import add_ci_arguments
from uffdharness.defaults import DEFAULT_TIMEOUT
from uffdharness.memory import CATALOGUE_KINDS

if TYPE_CHECKING:
    from uffdharness.runner import Result

__all__ = ["add_parser", "add_selection_arguments", "run"]


def add_selection_arguments(parser: argparse.ArgumentParser) -> tuple[argparse.Action, ...]:
    """``-k`` and ``--memory``: which scenario x memory pairs to run (run and matrix)."""
    return (
        parser.add_argument(
            "-k",
            dest="pattern",
            help="only scenario ids matching (glob or substring; several comma-separated)",
        ),
        parser.add_argument(
            "--memory",
            action="append",
            choices=CATALOGUE_KINDS,
            help="only this memory kind (repeatable)",
        ),
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the scenario catalogue on the running kernel",
        description="Run every scenario on every memory kind it applies to, each in its own "
        "process under a timeout, and print one verdict per pair. " + exit_status_help(),
    )
    add_selection_arguments(parser)
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--timeout",
        type=seconds(MAX_SCENARIO_TIMEOUT_S),
        default=DEFAULT_TIMEOUT,
        help=f"seconds per scenario x memory before it counts as a hang ({DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--json", metavar="FILE", help="write the JSON report to FILE")
    parser.add_argument("--junit", metavar="FILE", help="write a JUnit XML report to FILE")
    parser.add_argument("--ktap", action="store_true", help="print KTAP instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    add_ci_arguments(parser, "as it finishes")
    parser.add_argument(
        "--carries-fix",
        dest="carried_fixes",
        action="append",
        metavar="SUBJECT",
        help="the running kernel carries this upstream fix (its subject, as a known bug "
        "names it) whatever its version, e.g. a patched build: that bug is then judged as "
        "fixed (repeatable; the matrix passes a patched kernel's)",
    )
    parser.set_defaults(handler=run, usage_error=parser.error)


def _list(out: TextIO) -> int:
    from uffdharness.scenarios import CATALOGUE

    for item in CATALOGUE.values():
        bug = f" [known bug, fixed in {item.known_bug.fixed_in}]" if item.known_bug else ""
        out.write(f"{item.id:<24} {','.join(item.memory)}{bug}\n    {item.checks}\n")
    return 0


HEARTBEAT_S = 30.0  # a non-terminal (a CI log) gets a line this often on a long run


def _progress_printer(stream: TextIO):
    """On a terminal, one live line. Elsewhere the table already lists every pair, so only
    a heartbeat on a long run says the harness is alive and what it is running."""
    interactive = stream.isatty()
    last_line = time.monotonic()

    def show(done: int, total: int, result: Result | None, name: str) -> None:
        nonlocal last_line
        if interactive:
            if result is None:
                line = f"[{done + 1}/{total}] {name} ..."
            else:
                line = f"[{done}/{total}] {name} {result.verdict}"
            stream.write("\r\033[K" + line)
            if result is not None and done == total:
                stream.write("\n")
        elif result is None and time.monotonic() - last_line >= HEARTBEAT_S:
            stream.write(f"[{done + 1}/{total}] running {name}\n")
            last_line = time.monotonic()
        else:
            return
        stream.flush()

    return show


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from uffdharness import reports, runner, system
    from uffdharness.scenarios import CATALOGUE

    out = out or sys.stdout
    if args.list:
        return _list(out)
    check_outputs(args.usage_error, json=args.json, junit=args.junit, kcidb=args.kcidb)
    pairs = runner.select(CATALOGUE.values(), args.pattern, args.memory)
    if not pairs:
        memory = f" on memory {', '.join(args.memory)}" if args.memory else ""
        sys.stderr.write(f"uffdharness run: no scenario matches -k {args.pattern!r}{memory}\n")
        return 2
    info = system.facts()
    if args.carried_fixes:
        info = dataclasses.replace(info, carried_fixes=frozenset(args.carried_fixes))
    progress = None if args.quiet else _progress_printer(sys.stderr)
    if args.lava:
        from uffdharness.lava import SignalPrinter

        progress = SignalPrinter(out, then=progress)
    started = time.monotonic()
    interrupted: runner.RunInterrupted | None = None
    try:
        results = runner.run(pairs, timeout=args.timeout, info=info, progress=progress)
    except runner.RunInterrupted as stop:  # report what finished, then exit 128 + signal
        interrupted, results = stop, stop.results
        if progress and sys.stderr.isatty():
            sys.stderr.write("\n")  # end the live progress line
    wall = time.monotonic() - started
    if args.ktap:
        out.write(reports.ktap(results))
    else:
        out.write(f"kernel {info.kernel} ({len(pairs)} scenario x memory pairs)\n")
        reports.print_table(results, out, wall)
    if args.json:
        reports.write_json(
            args.json, info, results, wall, interrupted.to_json() if interrupted else None
        )
    if args.junit:
        reports.write_junit(args.junit, [(f"kernel-{info.kernel}", results)])
    if args.kcidb:
        from uffdharness import kcidb

        kcidb.write(args.kcidb, kcidb.run_report(info, results, args.origin))
    if interrupted:
        sys.stderr.write(f"uffdharness run: {interrupted.summary()}\n")
        return interrupted.exit_code
    return runner.exit_status(results)
