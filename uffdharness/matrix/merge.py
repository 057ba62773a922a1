"""Merge the JSON of several matrix runs (one CI job per kernel) into one report.

    uffdharness matrix merge out/*.json [--json merged.json] [--junit merged.xml]
    python -m uffdharness.matrix.merge out/*.json [--json merged.json] [--junit merged.xml]

Both are one command (uffdharness.cli.matrix holds its arguments and output; this module
keeps ``python -m`` working for CI). Prints the combined kernel x scenario table.
Expectations are checked again with this installation's data, so every kernel is judged by
the same rules. Exits 1 on any fail, error, hang, expectation violation or guest failure,
4 when every kernel skipped every pair, 2 when no input is usable, else 0 (runner's
exit_status, as for the run it merges).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from ..cli import matrix as command
from . import report
from .runner import KernelRun


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
    """``python -m uffdharness.matrix.merge``: ``uffdharness matrix merge`` by another name."""
    parser = argparse.ArgumentParser(
        prog="python -m uffdharness.matrix.merge", description=command.MERGE_DESCRIPTION
    )
    command.add_merge_arguments(parser)
    return command.run_merge(parser.parse_args(argv), out)


if __name__ == "__main__":
    sys.exit(main())
