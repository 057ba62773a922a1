"""``uffdharness run``: the catalogue on the running kernel, with a table and reports."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from . import reports
from .runner import DEFAULT_TIMEOUT, Result, exit_status, kernel_info, run, select
from .scenarios import CATALOGUE
from .scenarios.model import ALL_KINDS


def add_run_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the scenario catalogue on the running kernel",
        description="Run every scenario on every memory kind it applies to, each in its own "
        "process under a timeout, and print one verdict per pair. Exits 1 on any fail, "
        "error or hang.",
    )
    parser.add_argument("-k", dest="pattern", help="only scenario ids matching (glob/substring)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--memory", action="append", choices=ALL_KINDS, help="only this memory kind (repeatable)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds per scenario x memory before it counts as a hang ({DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--json", metavar="FILE", help="write the JSON report to FILE")
    parser.add_argument("--junit", metavar="FILE", help="write a JUnit XML report to FILE")
    parser.add_argument("--ktap", action="store_true", help="print KTAP instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.set_defaults(handler=run_catalogue)


def _list(out: TextIO) -> int:
    for item in CATALOGUE.values():
        bug = f" [known bug, fixed in {item.known_bug.fixed_in}]" if item.known_bug else ""
        out.write(f"{item.id:<24} {','.join(item.memory)}{bug}\n    {item.checks}\n")
    return 0


def _progress_printer(stream: TextIO):
    interactive = stream.isatty()

    def show(done: int, total: int, result: Result | None, name: str) -> None:
        if result is None:
            line = f"[{done + 1}/{total}] {name} ..."
        else:
            line = f"[{done}/{total}] {name} {result.verdict}"
        if interactive:
            stream.write("\r\033[K" + line)
            if result is not None and done == total:
                stream.write("\n")
        elif result is not None:
            stream.write(line + "\n")
        stream.flush()

    return show


def run_catalogue(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if args.list:
        return _list(out)
    pairs = select(CATALOGUE.values(), args.pattern, args.memory)
    if not pairs:
        sys.stderr.write("no scenario matches\n")
        return 2
    info = kernel_info()
    progress = None if args.quiet else _progress_printer(sys.stderr)
    started = time.monotonic()
    results = run(pairs, timeout=args.timeout, info=info, progress=progress)
    wall = time.monotonic() - started
    if args.ktap:
        out.write(reports.ktap(results))
    else:
        out.write(f"kernel {info.version} ({len(pairs)} scenario x memory pairs)\n")
        reports.print_table(results, out, wall)
    if args.json:
        reports.write_json(args.json, info, results, wall)
    if args.junit:
        reports.write_junit(args.junit, [(f"kernel-{info.version}", results)])
    return exit_status(results)
