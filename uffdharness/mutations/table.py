"""The mutation table (one row per mutation) and its JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .compare import Change, Outcome


def group_pairs(pairs: Sequence[tuple[str, str]]) -> str:
    """('a','anon'),('a','shmem'),('b','anon') -> 'a[anon,shmem] b[anon]'."""
    kinds: dict[str, list[str]] = {}
    for scenario, kind in sorted(pairs):
        kinds.setdefault(scenario, []).append(kind)
    return " ".join(f"{s}[{','.join(k)}]" for s, k in kinds.items()) or "-"


def _changes(changes: Sequence[Change]) -> str:
    return "; ".join(f"{c.name} {c.before}->{c.after}" for c in changes) or "-"


def status(outcome: Outcome) -> str:
    if outcome.error:
        return "ERROR"
    if outcome.escaped:
        return "ESCAPED"
    if outcome.unrelated:
        return "caught, other verdicts moved"
    return "caught"


def render(outcomes: Sequence[Outcome]) -> str:
    lines = []
    for outcome in outcomes:
        m = outcome.mutation
        lines.append(f"{m.name}: {status(outcome)}")
        lines.append(f"  breaks:     {m.reverts and 'reverts ' + repr(m.reverts) or m.breaks}")
        lines.append(f"  expected:   {group_pairs(sorted(m.caught_by))}")
        if outcome.error:
            lines.append(f"  error:      {outcome.error}")
            continue
        caught = [c.pair for c in outcome.caught]
        lines.append(f"  caught by:  {group_pairs(caught)}")
        if outcome.escaped:
            lines.append(
                "  escaped:    "
                + "; ".join(
                    f"{c.name} {c.after} ({c.reason or 'no reason'})" for c in outcome.escaped
                )
            )
        lines.append(f"  also moved: {_changes(outcome.unrelated)}")
    caught = sum(o.fully_caught for o in outcomes)
    clean = sum(o.ok for o in outcomes)
    lines.append("")
    lines.append(
        f"{caught} of {len(outcomes)} mutations caught"
        + (
            f"; {len(outcomes) - clean} with other verdicts moved or errors"
            if clean < caught
            else ""
        )
    )
    return "\n".join(lines)


def _change_json(change: Change) -> dict[str, Any]:
    return {
        "pair": change.name,
        "before": change.before,
        "after": change.after,
        "reason": change.reason,
    }


def to_json(base_spec: str, base_release: str, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {
        "base": {"spec": base_spec, "release": base_release},
        "summary": {
            "mutations": len(outcomes),
            "caught": sum(o.fully_caught for o in outcomes),
            "clean": sum(o.ok for o in outcomes),
        },
        "mutations": [
            {
                "name": o.mutation.name,
                "patch": str(o.mutation.patch),
                "summary": o.mutation.summary,
                "reverts": o.mutation.reverts,
                "breaks": o.mutation.breaks,
                "expected": sorted(f"{s}[{k}]" for s, k in o.mutation.caught_by),
                "status": status(o),
                "caught": [_change_json(c) for c in o.caught],
                "escaped": [_change_json(c) for c in o.escaped],
                "unrelated": [_change_json(c) for c in o.unrelated],
                "error": o.error,
                "timings": o.timings,
            }
            for o in outcomes
        ],
    }
