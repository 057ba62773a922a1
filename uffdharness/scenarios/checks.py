"""The one way a scenario judges: record facts, state what each must be, build the
Observation from the differences.

    check = Checks()
    check.expect("vmas_after_unregister", len(layout), 2)
    return check.observation(key=f"vmas_after_unregister={len(layout)}")

A failed expectation reads "vmas_after_unregister: 3, expected 2"; the reason of a failing
Observation lists exactly those, never a dump of every fact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import UffdError
from .model import Observation, fact_at


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


class Checks:
    def __init__(self, facts: dict[str, Any] | None = None) -> None:
        self.facts: dict[str, Any] = dict(facts or {})
        self.problems: list[str] = []

    def fact(self, name: str, value: Any) -> Any:
        """Record a fact without judging it; returns ``value``."""
        self.facts[name] = value
        return value

    def expect(self, name: str, observed: Any, wanted: Any) -> bool:
        """Record ``observed`` as fact ``name``; a problem unless it equals ``wanted``."""
        self.facts[name] = observed
        if observed == wanted:
            return True
        self.problems.append(f"{name}: {_shown(observed)}, expected {_shown(wanted)}")
        return False

    def expect_that(self, name: str, observed: Any, holds: bool, wanted: str) -> bool:
        """Record ``observed``; a problem unless ``holds``, with ``wanted`` saying what was
        expected in words ("a WP|WRITE fault at page 1")."""
        self.facts[name] = observed
        if not holds:
            self.problems.append(f"{name}: {_shown(observed)}, expected {wanted}")
        return holds

    def problem(self, text: str) -> None:
        """A difference no single fact states (relations between facts)."""
        self.problems.append(text)

    def nest(self, name: str, part: Checks) -> None:
        """Record ``part``'s facts as fact ``name``; its problems read "name.fact: ..."."""
        self.facts[name] = part.facts
        self.problems.extend(f"{name}.{problem}" for problem in part.problems)

    def expect_fields(self, name: str, observed: Mapping[str, Any], wanted: Mapping[str, Any]):
        """Record ``observed`` as fact ``name``; each wanted field (a dotted path inside it)
        that differs is a problem named by its full path: "bulk.bytes: 0, expected 32768"."""
        fields = Checks()
        for path, value in wanted.items():
            fields.expect(path, fact_at(observed, path), value)
        self.facts[name] = observed
        self.problems.extend(f"{name}.{problem}" for problem in fields.problems)

    @property
    def ok(self) -> bool:
        return not self.problems

    def observation(self, key: str) -> Observation:
        return Observation(self.facts, self.ok, key, "; ".join(self.problems))


def errno_of(call: Any, *args: Any, **kwargs: Any) -> str:
    """ "ok" if ``call`` returns, else the errno name of the UffdError it raises."""
    try:
        call(*args, **kwargs)
    except UffdError as exc:
        return exc.errno_name
    return "ok"


def expect_errnos(cases: Mapping[str, tuple[Callable[[], Any], str]]) -> Checks:
    """One expectation per case: ``name: (call, errno name it must give)``."""
    errnos = Checks()
    for name, (call, wanted) in cases.items():
        errnos.expect(name, errno_of(call), wanted)
    return errnos
