"""``uffdharness bisect-step``: one step of ``git bisect run``. Build the kernel tree as it
is checked out now, boot it in qemu, run the selected scenarios there, and exit with the
status git bisect run reads (``matrix.bisectstep``).

The build is the matrix's ``src:TREE`` kernel: the tree is never written, and every commit
of one tree shares one build directory, so each step after the first recompiles only what
the checkout changed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from uffdharness.interrupts import signal_name

from .arguments import add_guest_timeouts, check_outputs
from .matrix import stop_on_signals
from .run import add_selection_arguments

if TYPE_CHECKING:
    from uffdharness.matrix.runner import KernelRun, Milestone

__all__ = ["add_parser", "run", "source_spec"]

PROG = "uffdharness bisect-step"
# pre-wrapped: the epilog's layout needs the raw formatter, which wraps nothing
DESCRIPTION = """\
Build the kernel tree as it is checked out now (make tinyconfig plus the catalogue's
fragment, cached; the tree is never written; each later commit recompiles only what
changed), boot it in qemu, run the scenarios -k selects, and exit 0 when the kernel
behaves fixed, 1 when it shows the bug, 125 when this commit cannot be tested.
"""
EPILOG = """\
exit status, as git bisect run reads it:
  0    the kernel behaves fixed: every selected pair passes (some may skip)
  1    it shows the bug: a pair fails, is a known-bug, hangs or errors
       (--find-fix swaps 0 and 1)
  125  cannot test, git skips the commit: the build or a --patch fails, the guest
       boots to no report (a panic, a guest timeout), or every selected pair skips
  2    bad input, refused before any build (git bisect run would count it as a
       'bad' commit: run the command once by hand first)
  128+N  stopped by signal N; git bisect run then stops too

find the commit that broke a scenario:
  git bisect start BAD GOOD
  git bisect run uffdharness bisect-step -k unregister-merge --memory anon

find the commit that fixed it (old commits show the bug):
  git bisect start --term-old=broken --term-new=fixed FIXED BROKEN
  git bisect run uffdharness bisect-step -k unregister-merge --memory anon --find-fix
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bisect-step",
        help="build and boot a kernel tree's current state, run scenarios, exit for git bisect run",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_selection_arguments(parser)
    parser.add_argument(
        "--kernel-tree",
        default=".",
        metavar="DIR",
        help="the kernel tree to build (default: the current directory, where git bisect "
        "run starts its command)",
    )
    parser.add_argument(
        "--find-fix",
        action="store_true",
        help="exit 0 when the bug shows and 1 when the kernel behaves fixed, for "
        "git bisect start --term-old=broken --term-new=fixed",
    )
    parser.add_argument(
        "--patch",
        dest="patches",
        action="append",
        metavar="FILE",
        help="apply this diff (patch -p1) to every commit before building (repeatable)",
    )
    parser.add_argument(
        "--config",
        dest="fragments",
        action="append",
        metavar="FRAGMENT",
        help="config options on top of the catalogue's (repeatable)",
    )
    add_guest_timeouts(parser)
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="write the matrix JSON report of this kernel to FILE, with a bisect_step section",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(handler=run, usage_error=parser.error)


class TreeSpecError(ValueError):
    """A path that the kernel spec syntax cannot carry."""


def source_spec(tree: str, patches: list[str] | None, fragments: list[str] | None) -> str:
    """The matrix spec that builds ``tree`` with the patches and fragments, paths made
    absolute: the build directory is keyed by the tree's path, whatever the cwd."""
    parts = [f"src:{Path(tree).resolve()}"]
    parts += [f"patch={Path(path).resolve()}" for path in patches or ()]
    parts += [f"config={Path(path).resolve()}" for path in fragments or ()]
    for part in parts:
        if "," in part:
            raise TreeSpecError(f"{part.partition(':')[2] or part}: a path with a comma")
    return ",".join(parts)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Build, boot, judge. SIGINT, SIGTERM and SIGHUP stop the build or the guest and exit
    128 + the signal's number, which makes git bisect run stop as well."""
    try:
        with stop_on_signals():
            return _run(args, out or sys.stdout)
    except KeyboardInterrupt as stop:  # a signal before the handlers were in place
        signum = getattr(stop, "signum", signal.SIGINT)
        sys.stderr.write(f"{PROG}: interrupted by {signal_name(signum)}\n")
        return 128 + signum


def _run(args: argparse.Namespace, out: TextIO) -> int:
    if not args.pattern:
        args.usage_error("the following arguments are required: -k")
    check_outputs(args.usage_error, json=args.json)

    from uffdharness.matrix import bisectstep, hosttools, report
    from uffdharness.matrix.children import CHILDREN
    from uffdharness.matrix.kernelspec import SpecError
    from uffdharness.matrix.runner import (
        MatrixError,
        MatrixOptions,
        check_specs,
        require_tools,
        run_matrix,
        selects_anything,
    )

    err = sys.stderr
    if not selects_anything(args.pattern, args.memory):
        memory = f" on memory {', '.join(args.memory)}" if args.memory else ""
        err.write(f"{PROG}: no scenario matches -k {args.pattern!r}{memory}\n")
        return 2
    try:
        spec = source_spec(args.kernel_tree, args.patches, args.fragments)
        check_specs([spec])
        require_tools([spec])
    except (TreeSpecError, SpecError) as exc:
        err.write(f"{PROG}: {exc}\n")
        return 2
    except hosttools.MissingHostTools as exc:
        err.write(f"{exc}\n")
        return 2
    options = MatrixOptions(
        pattern=args.pattern,
        memory=tuple(args.memory or ()),
        timeout=args.timeout,
        guest_timeout=args.guest_timeout,
    )
    started, started_epoch = time.monotonic(), time.time()
    try:
        [kernel_run] = run_matrix([spec], options, None if args.quiet else _progress(err))
    except MatrixError as exc:
        err.write(f"{PROG}: {exc}\n")
        return 2
    step_s = time.monotonic() - started
    signum = CHILDREN.stop_signal
    if signum is not None:
        err.write(f"{PROG}: interrupted by {signal_name(signum)}; no verdict\n")
        return 128 + signum
    verdict = bisectstep.judge(kernel_run)
    status = verdict.exit_status(args.find_fix)
    timing = step_timing(kernel_run, step_s, started_epoch)
    if not args.quiet:
        err.write(f"{PROG}: {describe_timing(kernel_run, timing)}\n")
    if args.json:
        section = {
            "tree": str(Path(args.kernel_tree).resolve()),
            "identity": kernel_run.build.get("identity"),
            "behaviour": verdict.behaviour.value,
            "detail": verdict.detail,
            "find_fix": args.find_fix,
            "exit_status": status,
            **timing,
        }
        settings = {"spec": spec, "pattern": args.pattern, "memory": list(options.memory)}
        try:
            report.write_json(args.json, [kernel_run], step_s, {**settings, "bisect_step": section})
        except OSError as exc:
            # the verdict stands: a report that could not be written changes no commit's
            # behaviour, and 125 would make git skip a commit that was tested
            err.write(f"{PROG}: cannot write --json {args.json}: {exc}\n")
    out.write(verdict.line(args.find_fix) + "\n")
    out.flush()
    return status


def _progress(err: TextIO):
    """One line per milestone. There is one kernel, so its spec (the tree's long path) is
    left out; the build's own notes name it."""

    def say(milestone: Milestone) -> None:
        # A cached kernel is found in no time; how the kernel ended is the verdict line's.
        if milestone.stage not in ("preparing", "done"):
            err.write(f"{PROG}: {milestone.text}\n")
            err.flush()

    return say


def step_timing(run: KernelRun, step_s: float, started_epoch: float) -> dict[str, Any]:
    """Where the step's time went: building (only when this step built the kernel; a
    commit built before comes from the cache) and the guest."""
    entry = run.build.get("entry")
    try:
        built_now = bool(entry) and os.stat(Path(entry) / "kernel.json").st_mtime >= started_epoch
    except OSError:
        built_now = False
    guest_s = run.guest.get("total_s")
    return {
        "step_s": round(step_s, 1),
        "built_now": built_now,
        "build_s": run.build.get("build_s") if built_now else None,
        "files_compiled": run.build.get("files_compiled") if built_now else None,
        "guest_s": guest_s,
        "build_dir": run.build.get("build_dir"),
    }


def describe_timing(run: KernelRun, timing: dict[str, Any]) -> str:
    """``step 41.2 s (git 1a2b...): built in 22.4 s (3 files compiled), guest 18.1 s``"""
    identity = run.build.get("identity")
    head = f"step {timing['step_s']} s" + (f" ({identity})" if identity else "")
    if timing["built_now"]:
        kernel = f"built in {timing['build_s']} s ({timing['files_compiled']} files compiled)"
    else:
        kernel = "kernel from the cache" if run.build else "no kernel"
    guest = f", guest {timing['guest_s']} s" if timing["guest_s"] else ""
    return f"{head}: {kernel}{guest}"
