"""A checker for KTAP version 1 (the kernel's Documentation/dev-tools/ktap.rst): version
lines, plans, result lines, directives, nesting by two-space indentation. ``problems(text)``
returns what breaks the rules (empty: the document is valid)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

VERSION = re.compile(r"^KTAP version 1$")
PLAN = re.compile(r"^1\.\.(\d+)$")
RESULT = re.compile(r"^(ok|not ok) (\d+)(?: ([^#]*?))?(?: # ?(.*))?$")
DIRECTIVES = ("SKIP", "TODO", "XFAIL", "TIMEOUT", "ERROR")
MUST_NOT_BE_OK = ("TIMEOUT", "ERROR")  # "should be not ok"


@dataclass
class Level:
    depth: int
    plan: int | None = None
    results: int = 0
    failed: bool = False
    all_skipped: bool = True


@dataclass
class Checked:
    problems: list[str] = field(default_factory=list)
    results: list[tuple[int, str, str, str]] = field(
        default_factory=list
    )  # depth, ok, name, directive


def check(text: str) -> Checked:
    out = Checked()
    lines = text.splitlines()
    if not lines or lines[0] != "KTAP version 1":
        out.problems.append("line 1: not 'KTAP version 1'")
        return out
    stack = [Level(0)]
    expect_plan = True
    for number, raw in enumerate(lines[1:], 2):
        stripped = raw.lstrip(" ")
        indent = len(raw) - len(stripped)
        where = f"line {number}"
        if stripped.startswith("#"):
            continue  # a diagnostic line, at any indentation
        if indent % 2:
            out.problems.append(f"{where}: indented by {indent} spaces, not a multiple of 2")
            continue
        depth = indent // 2
        top = stack[-1]
        if VERSION.match(stripped):
            if depth != top.depth + 1:
                out.problems.append(
                    f"{where}: subtest version at depth {depth}, expected {top.depth + 1}"
                )
            stack.append(Level(depth))
            expect_plan = True
            continue
        plan = PLAN.match(stripped)
        if plan:
            if depth != top.depth or not expect_plan:
                out.problems.append(f"{where}: plan not right after its version line")
            top.plan = int(plan.group(1))
            expect_plan = False
            continue
        result = RESULT.match(stripped)
        if not result:
            out.problems.append(f"{where}: not a KTAP line: {raw!r}")
            continue
        expect_plan = False
        ok, index, name, tail = (
            result.group(1),
            int(result.group(2)),
            result.group(3) or "",
            result.group(4),
        )
        directive = (tail or "").split(" ", 1)[0]
        directive = directive if directive in DIRECTIVES else ""
        # A result line at depth d closes a subtest at depth d + 1 that is still open.
        if depth == top.depth - 1:
            child = stack.pop()
            if child.plan is not None and child.plan != child.results:
                out.problems.append(
                    f"{where}: subtest plan says {child.plan}, it has {child.results} results"
                )
            if child.failed and ok == "ok":
                out.problems.append(f"{where}: parent ok although a subtest is not ok")
            if child.all_skipped and child.results and directive != "SKIP":
                out.problems.append(f"{where}: every subtest skipped but the parent not SKIP")
            top = stack[-1]
        elif depth != top.depth:
            out.problems.append(f"{where}: result at depth {depth} inside depth {top.depth}")
            continue
        top.results += 1
        if index != top.results:
            out.problems.append(f"{where}: test number {index}, expected {top.results}")
        if directive in MUST_NOT_BE_OK and ok == "ok":
            out.problems.append(f"{where}: {directive} on an ok line")
        if directive == "XFAIL" and ok != "ok":
            out.problems.append(f"{where}: XFAIL on a not-ok line (kunit_parser counts it failed)")
        if ok == "not ok" and directive != "SKIP":
            top.failed = True
        if directive != "SKIP":
            top.all_skipped = False
        out.results.append((depth, ok, name.strip(), directive))
    if len(stack) != 1:
        out.problems.append(f"end: {len(stack) - 1} subtests never got their result line")
    root = stack[0]
    if root.plan is None:
        out.problems.append("end: no plan")
    elif root.plan != root.results:
        out.problems.append(f"end: plan says {root.plan}, there are {root.results} results")
    return out


def problems(text: str) -> list[str]:
    return check(text).problems
