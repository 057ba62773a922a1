"""Command line entry point: ``uffdharness <command> ...``.

One module per command. Each exposes ``add_parser(subparsers)``, which builds the
command's parser and sets ``handler`` to the module's ``run(args) -> int``; list it in
``COMMANDS``. Every start builds every parser (each matrix guest's ``uffdharness run``
included), so building one imports nothing heavy: the handler imports the runner, the
scenarios, the matrix runner or the benchmark when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from uffdharness import __version__, interrupts

from . import bench, bisect, info, kconfig, matrix, mutations, run, stress

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    info.add_parser,
    run.add_parser,
    matrix.add_parser,
    bench.add_parser,
    stress.add_parser,
    kconfig.add_parser,
    mutations.add_parser,
    bisect.add_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uffdharness",
        description="Drive the real Linux userfaultfd(2) machinery and check what the kernel does.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for add_parser in COMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    # SIGTERM and SIGHUP unwind like Ctrl-C: every with-block gives back what it holds.
    # A command that can report what finished catches Interrupted itself.
    try:
        with interrupts.raising():
            return int(handler(args))
    except interrupts.Interrupted as stop:
        sys.stderr.write(f"uffdharness {args.command}: interrupted by {stop.signal_name}\n")
        return stop.exit_code
