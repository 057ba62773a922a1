"""What one kernel's run means to ``git bisect run``: the bug shows, the kernel behaves
fixed, or this commit cannot be tested; and the exit status that says so.

git bisect run reads its command's exit status: 0 marks the commit old ("good"), 125 skips
it, any other status from 1 to 127 marks it new ("bad"), and 128 or more aborts the
bisection. By default a kernel that behaves fixed is old, to find the commit that broke
it. ``find_fix`` swaps 0 and 1, to find the commit that fixed it under
``git bisect start --term-old=broken --term-new=fixed``: the old commits show the bug.

Only verdicts of scenarios decide 0 or 1. The matrix's version-keyed expectations do not:
a 6.1 commit carrying a backported fix passes where 6.1 is expected to show the bug, and
that pass is exactly what a bisection for the fix looks for.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from ..runner import Result
from .runner import GUEST_ROW_ID, KernelRun

SKIP_STATUS = 125  # git bisect run: "this commit cannot be tested"
# The runner calls a bug "known-bug" on a kernel older than the fix and "fail" on one that
# should have it; which of the two a commit gets depends on its version, not on whether it
# shows the bug, so both mean "shows the bug" here. A hang or a crashed scenario process
# (error) is the kernel misbehaving under the scenario too.
SHOWS_BUG_VERDICTS = frozenset({"fail", "known-bug", "hang", "error"})
DETAIL_WIDTH = 300
# A failed build's reason names its log, then quotes the log's tail, which the log holds.
_BUILD_LOG_NAMED = re.compile(r"^.*?\(log: [^)]*\)")


class Behaviour(str, enum.Enum):
    FIXED = "behaves fixed"
    SHOWS_BUG = "shows the bug"
    UNTESTABLE = "cannot test"


@dataclass(frozen=True)
class StepVerdict:
    behaviour: Behaviour
    detail: str  # "unregister-merge[anon] known-bug: vmas_after_unregister=3 (expected 2)"

    def exit_status(self, find_fix: bool = False) -> int:
        if self.behaviour is Behaviour.UNTESTABLE:
            return SKIP_STATUS
        shows_bug = self.behaviour is Behaviour.SHOWS_BUG
        return int(shows_bug != find_fix)

    def line(self, find_fix: bool = False) -> str:
        """The step's one line: what was seen, the exit status and what it means."""
        return (
            f"bisect-step: {self.detail} -> {self.exit_status(find_fix)} ({self.behaviour.value})"
        )


def judge(run: KernelRun) -> StepVerdict:
    """The bisection's reading of ``run``: a guest that failed or returned no report, or a
    run in which every pair skipped, tested nothing."""
    if run.interrupted:
        return _untestable("interrupted before the kernel finished")
    if run.guest_failed:
        failure = next(result for result in run.results if result.id == GUEST_ROW_ID)
        return _untestable(failure.reason or failure.key)
    if not run.results:
        return _untestable("the guest ran no scenario")
    tested = [result for result in run.results if result.verdict != "skip"]
    if not tested:
        first = run.results[0]
        return _untestable(f"every selected pair skipped ({first.name}: {first.reason})")
    showing = [result for result in tested if result.verdict in SHOWS_BUG_VERDICTS]
    if showing:
        detail = _described(showing[0])
        if len(showing) > 1:
            detail += f"; {len(showing) - 1} more: " + ", ".join(
                f"{result.name} {result.verdict}" for result in showing[1:]
            )
        return StepVerdict(Behaviour.SHOWS_BUG, _clipped(detail))
    skipped = len(run.results) - len(tested)
    detail = _described(tested[0]) if len(tested) == 1 else f"{len(tested)} pairs pass"
    if skipped:
        detail += f" ({skipped} skipped)"
    return StepVerdict(Behaviour.FIXED, _clipped(detail))


def _described(result: Result) -> str:
    # A scenario's key states its observation ("vmas_after_unregister=3 (expected 2)"); a
    # hang's or an error's key only repeats the verdict, its reason says what happened.
    said = result.reason if result.verdict in ("hang", "error") else result.key or result.reason
    return f"{result.name} {result.verdict}" + (f": {said}" if said else "")


def _untestable(why: str) -> StepVerdict:
    named = _BUILD_LOG_NAMED.match(why)
    why = named.group(0) if named else why
    return StepVerdict(Behaviour.UNTESTABLE, _clipped(f"cannot test: {why}"))


def _clipped(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_WIDTH else text[: DETAIL_WIDTH - 3] + "..."
