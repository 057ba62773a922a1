"""``--kcidb FILE``, ``--origin NAME`` and ``--lava``: the CI result formats of ``run`` and
``matrix`` (the writers are ``uffdharness.kcidb`` and ``uffdharness.lava``)."""

from __future__ import annotations

import argparse

from uffdharness.kcidb import DEFAULT_ORIGIN, origin_problem

__all__ = ["add_ci_arguments", "add_kcidb_arguments", "origin"]


def origin(text: str) -> str:
    """An argparse type: a KCIDB origin name."""
    problem = origin_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def add_kcidb_arguments(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> tuple[argparse.Action, ...]:
    """``prefix`` sets the dests apart (``matrix merge``'s must not be a run's)."""
    return (
        parser.add_argument(
            "--kcidb",
            dest=f"{prefix}kcidb",
            metavar="FILE",
            help="write the results as a KCIDB report (schema 5) to FILE: a checkout and a "
            "build per kernel, a test per scenario x memory, known bugs as issues",
        ),
        parser.add_argument(
            "--origin",
            dest=f"{prefix}origin",
            type=origin,
            default=DEFAULT_ORIGIN,
            metavar="NAME",
            help=f"the KCIDB origin (your CI system's name) the ids start with ({DEFAULT_ORIGIN})",
        ),
    )


def add_ci_arguments(parser: argparse.ArgumentParser, when: str) -> tuple[argparse.Action, ...]:
    """``--kcidb``, ``--origin`` and ``--lava``; ``when`` says when the signals come."""
    return (
        *add_kcidb_arguments(parser),
        parser.add_argument(
            "--lava",
            action="store_true",
            help=f"print a LAVA test-case signal per result on stdout {when} (known-bug "
            "is pass, with the reason on the line before)",
        ),
    )
