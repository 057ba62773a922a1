"""Checked command-line values: numbers that are finite and in range, output paths that
can be written. A bad value is argparse's one-line usage error (exit 2), before any work."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

from uffdharness.defaults import DEFAULT_TIMEOUT
from uffdharness.matrix.defaults import DEFAULT_GUEST_TIMEOUT

MAX_SCENARIO_TIMEOUT_S = 3600.0
MAX_GUEST_TIMEOUT_S = 86400.0


def exit_status_help(failures: str = "fail, error or hang") -> str:
    """The exit statuses of a command judged by runner.exit_status, for its description."""
    return (
        "Exit status, as kselftest runners read it: 0 when every result is pass, known-bug "
        f"or skip and at least one is not a skip; 1 on any {failures}; 4 (KSFT_SKIP) when "
        "every result is a skip; 2 on bad input; 128 + N when stopped by signal N."
    )


def seconds(upper: float) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds in (0, upper]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or not 0 < value <= upper:
            raise argparse.ArgumentTypeError(f"{text!r}: give seconds in (0, {upper:g}]")
        return value

    return parse


def count(lower: int, upper: int) -> Callable[[str], int]:
    """An argparse type: an integer in [lower, upper]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lower <= value <= upper:
            raise argparse.ArgumentTypeError(f"{text!r}: give an integer in [{lower}, {upper}]")
        return value

    return parse


def unwritable_reason(path: str) -> str | None:
    """Why a report could not be written to ``path``, checked before a run starts."""
    if os.path.isdir(path):
        return f"{path} is a directory"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"{directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot create files in {directory}"
    return None


def check_outputs(error: Callable[[str], object], **paths: str | None) -> None:
    """Call ``error`` (a parser's ``error``: exits 2) for the first report path that cannot
    be written, named by its option."""
    for option, path in paths.items():
        if path:
            reason = unwritable_reason(path)
            if reason:
                error(f"--{option}: {reason}")


def add_guest_timeouts(parser: argparse.ArgumentParser) -> tuple[argparse.Action, argparse.Action]:
    """``--timeout`` (per scenario x memory, inside a guest) and ``--guest-timeout``, for
    every command that boots guests (matrix, mutations, bisect-step)."""
    return (
        parser.add_argument(
            "--timeout",
            type=seconds(MAX_SCENARIO_TIMEOUT_S),
            default=DEFAULT_TIMEOUT,
            metavar="S",
            help=f"seconds per scenario x memory inside a guest ({DEFAULT_TIMEOUT:g})",
        ),
        parser.add_argument(
            "--guest-timeout",
            type=seconds(MAX_GUEST_TIMEOUT_S),
            default=DEFAULT_GUEST_TIMEOUT,
            metavar="S",
            help=f"seconds a guest may run before it counts as a hang ({DEFAULT_GUEST_TIMEOUT:g})",
        ),
    )
