"""One mutated kernel's verdicts against the unpatched base's: caught, escaped, or moved.

A pair named in the manifest catches its mutation when its verdict becomes ``fail`` or
``hang`` (a thread the kernel never wakes is the bug showing, too). Any other pair whose
verdict differs from the base's is an unrelated change, which fails the suite as surely
as an escape does: a mutation must show where the manifest says, and nowhere else. A
kernel that did not build or boot caught nothing; its reason is the outcome's ``error``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..matrix.runner import GUEST_ROW_ID, KernelRun
from ..runner import Result
from .suite import Mutation, Pair

CATCHING_VERDICTS = frozenset({"fail", "hang"})


@dataclass(frozen=True)
class Change:
    pair: Pair
    before: str  # the base's verdict ("absent" when the base has no such pair)
    after: str
    reason: str  # the mutated kernel's reason for its verdict

    @property
    def name(self) -> str:
        return f"{self.pair[0]}[{self.pair[1]}]"


@dataclass(frozen=True)
class Outcome:
    mutation: Mutation
    caught: tuple[Change, ...] = ()  # expected pairs that failed or hung
    escaped: tuple[Change, ...] = ()  # expected pairs that did not
    unrelated: tuple[Change, ...] = ()  # other pairs whose verdict moved
    error: str = ""  # the kernel could not be built or booted
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.error or self.escaped or self.unrelated)

    @property
    def fully_caught(self) -> bool:
        return not self.error and not self.escaped


def verdicts(results: Iterable[Result]) -> dict[Pair, Result]:
    return {(r.id, r.memory): r for r in results if r.id != GUEST_ROW_ID}


def guest_error(run: KernelRun) -> str:
    """Why a kernel produced no verdicts, or ""."""
    rows = [r for r in run.results if r.id == GUEST_ROW_ID]
    return rows[0].reason.splitlines()[0] if rows else ""


def compare(mutation: Mutation, base: dict[Pair, Result], run: KernelRun) -> Outcome:
    timings = {
        key: float(value)
        for key, value in (
            ("build_s", (run.build or {}).get("build_s")),
            ("boot_s", run.guest.get("boot_s")),
            ("total_s", run.guest.get("total_s")),
        )
        if isinstance(value, (int, float))
    }
    error = guest_error(run)
    if error:
        return Outcome(mutation, error=error, timings=timings)
    after = verdicts(run.results)
    caught, escaped, unrelated = [], [], []
    for pair in sorted(set(base) | set(after)):
        before_verdict = base[pair].verdict if pair in base else "absent"
        result = after.get(pair)
        after_verdict = result.verdict if result else "absent"
        change = Change(pair, before_verdict, after_verdict, result.reason if result else "")
        if pair in mutation.caught_by:
            (caught if after_verdict in CATCHING_VERDICTS else escaped).append(change)
        elif after_verdict != before_verdict:
            unrelated.append(change)
    # An expected pair the catalogue did not run at all (a -k or --memory narrowing, a
    # skip on this kernel) is an escape too: nothing caught the mutation there.
    for pair in sorted(mutation.caught_by - set(base) - set(after)):
        escaped.append(Change(pair, "absent", "absent", "not run"))
    return Outcome(mutation, tuple(caught), tuple(escaped), tuple(unrelated), timings=timings)
