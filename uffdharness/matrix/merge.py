"""Merge the JSON of several matrix runs (one CI job per kernel) into one report.

    python -m uffdharness.matrix.merge out/*.json [--json merged.json] [--junit merged.xml]

Prints the combined kernel x scenario table. Expectations are checked again with this
installation's data, so every kernel is judged by the same rules. Exits 1 on any fail,
error, hang, expectation violation or guest failure, and 2 when no input is usable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from . import report
from .runner import KernelRun, exit_status


def merge(paths: Sequence[str]) -> list[KernelRun]:
    """Every kernel section of every file, in order; a spec seen twice keeps the last."""
    by_spec: dict[str, KernelRun] = {}
    for path in paths:
        for run in report.load(path):
            by_spec.pop(run.spec, None)
            by_spec[run.spec] = run
    runs = list(by_spec.values())
    for run in runs:
        run.check_expectations()
    return runs


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog="python -m uffdharness.matrix.merge",
        description="Merge `uffdharness matrix --json` files into one kernel x scenario "
        "table, JSON and JUnit report.",
    )
    parser.add_argument("inputs", nargs="+", metavar="FILE", help="matrix JSON files")
    parser.add_argument("--json", metavar="FILE", help="write the merged JSON to FILE")
    parser.add_argument("--junit", metavar="FILE", help="write JUnit XML, one suite per kernel")
    args = parser.parse_args(argv)
    try:
        runs = merge(args.inputs)
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"merge: {exc}\n")
        return 2
    if not runs:
        sys.stderr.write("merge: the inputs hold no kernels\n")
        return 2
    report.print_table(runs, out)
    options = {"merged_from": list(args.inputs)}
    if args.json:
        report.write_json(args.json, runs, None, options)
    if args.junit:
        report.write_junit(args.junit, runs)
    return exit_status(runs)


if __name__ == "__main__":
    sys.exit(main())
