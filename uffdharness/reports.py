"""Reports of a run: the terminal table, JSON, JUnit XML and KTAP."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from typing import Any, TextIO

from .abi import flag_names
from .runner import Result
from .scenarios.model import VERDICTS
from .system import SystemFacts


def kernel_json(info: SystemFacts) -> dict[str, Any]:
    version = info.kernel
    return {
        "release": info.release,
        "version": [version.major, version.minor, version.patch],
        "patch_known": version.patch_known,
        "machine": info.machine,
        "features": flag_names(info.offered),
        "root": info.is_root,
        "uffd_error": info.uffd_error or None,
        "carried_fixes": sorted(info.carried_fixes),
    }


def counts(results: Sequence[Result]) -> dict[str, int]:
    tally = Counter(r.verdict for r in results)
    return {verdict: tally.get(verdict, 0) for verdict in VERDICTS}


def to_json(
    info: SystemFacts,
    results: Sequence[Result],
    wall_s: float,
    interrupted: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``interrupted`` (signal, during, done, total): the run stopped early; the results
    are the pairs that finished."""
    summary = {"counts": counts(results), "total": len(results), "wall_s": round(wall_s, 2)}
    if interrupted:
        summary["interrupted"] = interrupted
    return {
        "kernel": kernel_json(info),
        "summary": summary,
        "results": [r.to_json() for r in results],
    }


def write_json(
    path: str,
    info: SystemFacts,
    results: Sequence[Result],
    wall_s: float,
    interrupted: dict[str, Any] | None = None,
) -> None:
    with open(path, "w") as out:
        json.dump(to_json(info, results, wall_s, interrupted), out, indent=2, default=str)
        out.write("\n")


def junit_tree(suites: Sequence[tuple[str, Sequence[Result]]]) -> ET.ElementTree:
    """One <testsuite> per (name, results); known-bug passes with a property."""
    root = ET.Element("testsuites")
    for suite_name, results in suites:
        tally = counts(results)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=suite_name,
            tests=str(len(results)),
            failures=str(tally["fail"]),
            errors=str(tally["error"] + tally["hang"]),
            skipped=str(tally["skip"]),
            time=f"{sum(r.duration_s for r in results):.3f}",
            timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        for result in results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"{suite_name}.{result.id}",
                name=result.memory,
                time=f"{result.duration_s:.3f}",
            )
            properties = ET.SubElement(case, "properties")
            ET.SubElement(properties, "property", name="verdict", value=result.verdict)
            ET.SubElement(properties, "property", name="key", value=result.key)
            facts = json.dumps(result.facts, default=str, sort_keys=True)
            if result.verdict == "fail":
                ET.SubElement(case, "failure", message=result.reason, type="fail").text = facts
            elif result.verdict in ("error", "hang"):
                ET.SubElement(
                    case, "error", message=result.reason, type=result.verdict
                ).text = facts
            elif result.verdict == "skip":
                ET.SubElement(case, "skipped", message=result.reason)
            else:
                ET.SubElement(case, "system-out").text = facts
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(path: str, suites: Sequence[tuple[str, Sequence[Result]]]) -> None:
    junit_tree(suites).write(path, encoding="utf-8", xml_declaration=True)


KTAP_INDENT = "  "  # one nesting level (Documentation/dev-tools/ktap.rst)


def ktap(results: Sequence[Result]) -> str:
    """One KTAP version 1 document: a test per scenario, its memory kinds as subtests."""
    lines = ["KTAP version 1"]
    lines += _ktap_scenarios(results, "")
    lines.append(_ktap_totals(results))
    return "\n".join(lines) + "\n"


def ktap_kernels(runs: Sequence[tuple[str, Sequence[Result]]]) -> str:
    """One KTAP document for several kernels: a top-level test per kernel (its name the
    kernel's label), the scenarios and their memory kinds nested below."""
    lines = ["KTAP version 1", f"1..{len(runs)}"]
    everything: list[Result] = []
    for number, (label, results) in enumerate(runs, 1):
        lines.append(KTAP_INDENT + "KTAP version 1")
        lines += _ktap_scenarios(results, KTAP_INDENT)
        lines.append(_ktap_parent(number, _ktap_name(label), results))
        everything += results
    lines.append(_ktap_totals(everything))
    return "\n".join(lines) + "\n"


def _ktap_scenarios(results: Sequence[Result], indent: str) -> list[str]:
    """The plan and one test per scenario (in first-seen order), each with its kinds
    nested one level deeper; the document's or parent's version line is the caller's."""
    by_scenario: dict[str, list[Result]] = {}
    for result in results:
        by_scenario.setdefault(result.id, []).append(result)
    lines = [f"{indent}1..{len(by_scenario)}"]
    inner = indent + KTAP_INDENT
    for number, (scenario_id, kinds) in enumerate(by_scenario.items(), 1):
        lines += [f"{inner}KTAP version 1", f"{inner}1..{len(kinds)}"]
        for sub, result in enumerate(kinds, 1):
            lines += [inner + line for line in _ktap_case(sub, result)]
        lines.append(indent + _ktap_parent(number, scenario_id, kinds))
    return lines


def _ktap_case(number: int, result: Result) -> list[str]:
    """A memory kind's result line, after a diagnostic line for a failure. known-bug is
    ok # XFAIL (as kselftest's ktap_test_xfail writes it: kunit_parser counts it a pass);
    hang is not ok # TIMEOUT; a harness error not ok # ERROR."""
    name = _ktap_name(result.memory)
    reason = _ktap_text(result.reason)
    if result.verdict == "pass":
        return [f"ok {number} {name}"]
    if result.verdict == "known-bug":
        return [f"ok {number} {name} # XFAIL {reason}"]
    if result.verdict == "skip":
        return [f"ok {number} {name} # SKIP {reason}"]
    if result.verdict == "hang":
        return [f"not ok {number} {name} # TIMEOUT {reason}"]
    if result.verdict == "error":
        return [f"not ok {number} {name} # ERROR {reason}"]
    return [f"# {result.id} {result.memory}: {reason}", f"not ok {number} {name}"]


def _ktap_parent(number: int, name: str, results: Sequence[Result]) -> str:
    """A parent fails when a subtest does; skipped when every subtest was."""
    if any(r.verdict in ("fail", "error", "hang") for r in results):
        return f"not ok {number} {_ktap_name(name)}"
    if results and all(r.verdict == "skip" for r in results):
        return f"ok {number} {_ktap_name(name)} # SKIP every memory kind skipped"
    return f"ok {number} {_ktap_name(name)}"


def _ktap_totals(results: Sequence[Result]) -> str:
    tally = counts(results)
    return (
        f"# Totals: pass:{tally['pass']} fail:{tally['fail']} xfail:{tally['known-bug']} "
        f"xpass:0 skip:{tally['skip']} error:{tally['error'] + tally['hang']}"
    )


def _ktap_name(text: str) -> str:
    """A description may hold anything but '#' and a newline."""
    return " ".join(text.replace("#", "_").split())


def _ktap_text(text: str) -> str:
    return _one_line(text).replace("\n", " ")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def print_table(results: Sequence[Result], out: TextIO, wall_s: float) -> None:
    width_id = max([len(r.id) for r in results] + [8])
    width_mem = max([len(r.memory) for r in results] + [6])
    out.write(f"{'scenario':<{width_id}}  {'memory':<{width_mem}}  {'verdict':<9}  key fact\n")
    for r in results:
        detail = r.key if r.verdict in ("pass", "known-bug") else (r.reason or r.key)
        out.write(
            f"{r.id:<{width_id}}  {r.memory:<{width_mem}}  {r.verdict:<9}  {_one_line(detail)}\n"
        )
    tally = counts(results)
    summary = ", ".join(f"{n} {v}" for v, n in tally.items() if n)
    out.write(f"\n{len(results)} results in {wall_s:.1f} s: {summary}\n")
