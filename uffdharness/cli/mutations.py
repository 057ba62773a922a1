"""``uffdharness mutations``: prove that the catalogue catches each kernel mutation.

Builds the base kernel (``debian-src:7.3`` unless ``--base``) and the base plus each
mutation's patch, incrementally in one build directory, boots each in qemu, runs the
whole catalogue there, and prints one row per mutation: what it breaks, the pairs the
manifest expects to catch it, the pairs that did, and every other verdict that moved.
Exits 0 when every mutation is caught and nothing else moved, 1 otherwise (an escape, an
unrelated change, a kernel that did not build or boot), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from .arguments import add_guest_timeouts, check_outputs, count


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mutations",
        help="build kernels that each break one checked behaviour; check the catalogue fails",
        description=__doc__.split("\n\n", 1)[1].replace("``", "'"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-k", dest="pattern", help="only mutations whose names match")
    parser.add_argument(
        "--base", metavar="SPEC", help="the kernel source the patches apply to (the manifest's)"
    )
    parser.add_argument(
        "--manifest",
        metavar="FILE",
        help="the suite's manifest (default: mutations/manifest.toml of this checkout)",
    )
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument(
        "--jobs", type=count(1, 8), default=2, metavar="N", help="guests at a time (2)"
    )
    add_guest_timeouts(parser)
    parser.add_argument("--json", metavar="FILE", help="write the mutation table as JSON")
    parser.add_argument(
        "--matrix-json", metavar="FILE", help="write every kernel's full matrix report"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(handler=run, usage_error=parser.error)


def _list(suite, chosen, out: TextIO) -> None:
    from uffdharness.mutations.table import group_pairs

    out.write(f"base {suite.base} (patches written against {suite.written_against})\n")
    for mutation in chosen:
        out.write(f"{mutation.name}\n    {mutation.summary}\n")
        what = f"reverts {mutation.reverts!r}" if mutation.reverts else mutation.breaks
        out.write(f"    {what}\n    caught by {group_pairs(sorted(mutation.caught_by))}\n")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = sys.stderr
    check_outputs(args.usage_error, json=args.json, matrix_json=args.matrix_json)

    from uffdharness.mutations import suite as suites

    try:
        suite = suites.load(Path(args.manifest)) if args.manifest else suites.load()
        chosen = suite.select(args.pattern)
    except suites.SuiteError as exc:
        err.write(f"uffdharness mutations: {exc}\n")
        return 2
    if args.list:
        _list(suite, chosen, out)
        return 0

    from uffdharness.matrix import hosttools, report
    from uffdharness.matrix.kernelspec import SpecError
    from uffdharness.matrix.progress import ProgressPrinter
    from uffdharness.matrix.runner import MatrixError, MatrixOptions, check_specs, require_tools
    from uffdharness.mutations import compare, table

    base = args.base or suite.base
    try:
        specs = check_specs([base] + [mutation.spec(base) for mutation in chosen])
        require_tools(specs)
    except SpecError as exc:
        err.write(f"uffdharness mutations: {exc}\n")
        return 2
    except hosttools.MissingHostTools as exc:
        err.write(f"{exc}\n")
        return 2
    options = MatrixOptions(timeout=args.timeout, guest_timeout=args.guest_timeout, jobs=args.jobs)
    progress = None if args.quiet else ProgressPrinter(err, specs)
    started = time.monotonic()
    from uffdharness.cli.matrix import stop_on_signals
    from uffdharness.matrix.children import CHILDREN
    from uffdharness.matrix.runner import run_matrix

    try:
        with stop_on_signals():
            runs = run_matrix(specs, options, progress)
    except MatrixError as exc:
        err.write(f"uffdharness mutations: {exc}\n")
        return 2
    finally:
        if progress is not None:
            progress.close()
    wall = time.monotonic() - started
    if args.matrix_json:
        report.write_json(args.matrix_json, runs, wall, {"specs": specs, "mutations": True})
    base_run, mutated = runs[0], runs[1:]
    if CHILDREN.stop_signal is not None:
        err.write("uffdharness mutations: interrupted\n")
        return 128 + CHILDREN.stop_signal
    base_error = compare.guest_error(base_run)
    if base_error:
        err.write(f"uffdharness mutations: the base kernel {base} gave no verdicts: {base_error}\n")
        return 1
    reference = compare.verdicts(base_run.results)
    outcomes = [compare.compare(m, reference, run) for m, run in zip(chosen, mutated, strict=True)]
    bad_base = sorted(
        f"{s}[{k}] {r.verdict}"
        for (s, k), r in reference.items()
        if r.verdict != "pass" and r.verdict != "skip"
    )
    out.write(f"base {base}: {base_run.release}; {len(reference)} pairs")
    out.write(
        f" (not pass or skip: {', '.join(bad_base)})\n" if bad_base else ", all pass or skip\n"
    )
    out.write(table.render(outcomes) + f"\n({wall:.0f} s)\n")
    if args.json:
        document = table.to_json(base, base_run.release, outcomes)
        document["wall_s"] = round(wall, 1)
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0 if all(o.ok for o in outcomes) else 1
