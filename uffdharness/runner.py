"""Run scenarios: one forked child per scenario x memory kind, under a timeout.

One interpreter start per run; the hugepage pool is reserved once for the whole run and
given back whatever happens. A hang, a signal or an exception becomes a verdict.
"""

from __future__ import annotations

import fnmatch
import signal
import time
from collections.abc import Callable, Collection, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import system
from .defaults import DEFAULT_TIMEOUT
from .interrupts import Interrupted
from .isolation import run_in_child
from .kernelversion import KernelVersion
from .kernelversion import parse as parse_version
from .kindsetup import KindSetup
from .memory import MemoryKind
from .scenarios.context import Context
from .scenarios.model import BAD_VERDICTS, Observation, Scenario, Skip, Verdict
from .system import SystemFacts


@dataclass
class Result:
    id: str
    memory: str
    verdict: Verdict
    reason: str = ""
    key: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.id}[{self.memory}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "memory": self.memory,
            "verdict": self.verdict,
            "reason": self.reason,
            "key": self.key,
            "facts": self.facts,
            "duration_s": round(self.duration_s, 4),
        }


class RunInterrupted(Interrupted):
    """A stopping signal ended the run: the results that finished, and the pair that was
    running (its child already killed and reaped, the hugepage pool already restored)."""

    def __init__(self, signum: int, results: list[Result], during: str | None, total: int):
        super().__init__(signum)
        self.results = results
        self.during = during
        self.total = total

    def summary(self) -> str:
        during = f" during {self.during}" if self.during else ""
        return (
            f"interrupted by {self.signal_name}{during} after {len(self.results)} of "
            f"{self.total} scenario x memory pairs"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "signal": self.signal_name,
            "during": self.during,
            "done": len(self.results),
            "total": self.total,
        }


def select(
    catalogue: Iterable[Scenario],
    pattern: str | None = None,
    memory: Iterable[str] | None = None,
) -> list[tuple[Scenario, str]]:
    """Scenario x memory pairs to run. ``pattern`` matches ids as a glob or substring;
    several patterns are separated by commas (ids never hold one)."""
    kinds = set(memory) if memory else None
    patterns = [p for p in (pattern or "").split(",") if p]
    chosen = []
    for item in catalogue:
        if patterns and not any(fnmatch.fnmatchcase(item.id, p) or p in item.id for p in patterns):
            continue
        for kind in item.memory:
            if kinds is None or kind in kinds:
                chosen.append((item, kind))
    return chosen


def judge(
    item: Scenario,
    kernel: KernelVersion,
    observation: Observation,
    memory: str = "anon",
    carried_fixes: Collection[str] = (),
) -> tuple[Verdict, str]:
    """pass, or known-bug when a failing observation shows the scenario's known bug's
    signature (its ``shows`` facts) on a kernel without the fix, else fail.
    ``carried_fixes``: upstream fix subjects the kernel declares it carries whatever its
    version (a patched build); their bugs are failures there."""
    if observation.ok:
        return "pass", ""
    bug = item.known_bug
    if bug and bug.shown_by(observation.facts, memory):
        if not bug.fixed_on(kernel, carried_fixes):
            return "known-bug", (
                f"{bug.signature}; fixed in {bug.fixed_in} by '{bug.fix}', running {kernel}"
            )
        if bug.fix in carried_fixes and kernel < parse_version(bug.fixed_in):
            return "fail", (
                f"shows the bug fixed by '{bug.fix}' on {kernel}, which declares it carries "
                f"that fix: {observation.reason}"
            )
        return "fail", (
            f"shows the bug fixed in {bug.fixed_in} ('{bug.fix}') on {kernel}: {observation.reason}"
        )
    return "fail", observation.reason


def _run_one(item: Scenario, kind: str, info: SystemFacts, timeout: float) -> Observation:
    ctx = Context(MemoryKind(kind), info, item.modes, timeout, probes=item.probes)
    try:
        return item.run(ctx)
    finally:
        ctx.close()


def run_pair(
    item: Scenario, kind: str, info: SystemFacts, timeout: float, kind_skip: str | None
) -> Result:
    """``kind_skip``: why the run's set-up could not provide ``kind`` (kindsetup)."""
    started = time.monotonic()
    reason = item.skip_reason(
        info.kernel, info.offered, info.is_root, kind, privileges=info.privileges
    )
    if info.uffd_error:
        reason = f"userfaultfd unavailable: {info.uffd_error}"
    if reason is None and kind_skip:
        reason = kind_skip
    if reason is not None:
        return Result(item.id, kind, "skip", reason, key="skipped")
    # A scenario may declare a shorter budget than the run's, never a longer one.
    timeout = min(item.timeout, timeout) if item.timeout else timeout
    outcome = run_in_child(_run_one, item, kind, info, timeout, timeout=timeout)
    duration = time.monotonic() - started
    if outcome.status == "timeout":
        return Result(
            item.id,
            kind,
            "hang",
            f"no verdict within {outcome.duration_s:.1f} s (killed)",
            key="hang",
            duration_s=duration,
        )
    if outcome.status == "crashed":
        what = (
            f"scenario process killed by {signal.Signals(outcome.signal).name}"
            if outcome.signal
            else f"scenario process exited {outcome.exit_code} without a result"
        )
        return Result(item.id, kind, "error", what, key="crashed", duration_s=duration)
    if outcome.status == "raised":
        exc = outcome.exception
        if isinstance(exc, Skip):
            return Result(item.id, kind, "skip", str(exc), key="skipped", duration_s=duration)
        return Result(
            item.id,
            kind,
            "error",
            f"{type(exc).__name__}: {exc}",
            key="harness error",
            facts={"traceback": outcome.traceback},
            duration_s=duration,
        )
    observation: Observation = outcome.value
    verdict, reason = judge(item, info.kernel, observation, kind, info.carried_fixes)
    return Result(item.id, kind, verdict, reason, observation.key, observation.facts, duration)


def run(
    pairs: list[tuple[Scenario, str]],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    info: SystemFacts | None = None,
    progress: Callable[[int, int, Result | None, str], None] | None = None,
) -> list[Result]:
    info = info or system.facts()
    info.probe_lazy()  # once here, not again in every forked scenario
    results: list[Result] = []
    running: str | None = None
    try:
        with ExitStack() as stack:
            setup = stack.enter_context(
                KindSetup(((kind, item.hugepages) for item, kind in pairs), info.is_root)
            )
            for index, (item, kind) in enumerate(pairs):
                running = f"{item.id}[{kind}]"
                if progress:
                    progress(index, len(pairs), None, running)
                result = run_pair(item, kind, info, timeout, setup.skip_reason(kind))
                results.append(result)
                running = None
                if progress:
                    progress(index + 1, len(pairs), result, result.name)
    except KeyboardInterrupt as stop:  # Interrupted, or a bare Ctrl-C outside the CLI
        signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
        raise RunInterrupted(signum, results, running, len(pairs)) from None
    return results


# Exit statuses as kselftest runners read them (KSFT_* in tools/testing/selftests/kselftest.h;
# 2 stays the usage error it is for argparse, 128 + N a death by signal N).
EXIT_PASS = 0  # KSFT_PASS: every result pass, known-bug or skip, and at least one not skip
EXIT_FAIL = 1  # KSFT_FAIL: any fail, error or hang
EXIT_SKIP = 4  # KSFT_SKIP: every result a skip: nothing could be checked here
EXIT_STATUSES = (EXIT_PASS, EXIT_FAIL, EXIT_SKIP)  # what exit_status can give


class HasVerdict(Protocol):
    @property
    def verdict(self) -> str: ...


def exit_status(results: Iterable[HasVerdict]) -> int:
    """The exit status of a run with these results (a scenario run's, a matrix's, stress's).

    No results at all is EXIT_SKIP too: nothing was checked, so nothing passed.
    """
    verdicts = [result.verdict for result in results]
    if any(verdict in BAD_VERDICTS for verdict in verdicts):
        return EXIT_FAIL
    if all(verdict == "skip" for verdict in verdicts):
        return EXIT_SKIP
    return EXIT_PASS
