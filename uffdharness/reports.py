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


def ktap(results: Sequence[Result]) -> str:
    """KTAP version 1: known-bug is ok with a note, skip is '# SKIP', the rest 'not ok'."""
    lines = ["KTAP version 1", f"1..{len(results)}"]
    for number, result in enumerate(results, 1):
        name = f"{result.id}_{result.memory}".replace("-", "_")
        if result.verdict == "pass":
            lines.append(f"ok {number} {name}")
        elif result.verdict == "known-bug":
            lines.append(f"ok {number} {name} # known-bug: {_one_line(result.reason)}")
        elif result.verdict == "skip":
            lines.append(f"ok {number} {name} # SKIP {_one_line(result.reason)}")
        else:
            lines.append(f"# {result.verdict}: {_one_line(result.reason)}")
            lines.append(f"not ok {number} {name}")
    tally = counts(results)
    lines.append(
        f"# Totals: pass:{tally['pass'] + tally['known-bug']} "
        f"fail:{tally['fail'] + tally['error'] + tally['hang']} xfail:0 xpass:0 "
        f"skip:{tally['skip']} error:0"
    )
    return "\n".join(lines) + "\n"


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
