"""Reports of a matrix run: the kernel x scenario table, merged JSON, JUnit per kernel.

The JSON holds one section per kernel in the schema of ``uffdharness run --json``
(``kernel``, ``summary``, ``results``) plus ``spec``, ``guest`` and ``expectations``;
``load`` reads it back, so CI jobs that ran one kernel each can be merged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from .. import reports
from ..runner import EXIT_FAIL, Result
from . import reportschema
from .runner import GUEST_ROW_ID, INTERRUPTED, KernelRun, exit_status

SCHEMA = "uffdharness-matrix/1"
# Cell text per verdict; the capitals are what needs a look.
CELL = {
    "pass": "pass",
    "known-bug": "known",
    "fail": "FAIL",
    "skip": "skip",
    "error": "ERROR",
    "hang": "HANG",
}
NOT_RUN = "-"
INTERRUPTED_CELL = INTERRUPTED
VIOLATION_MARK = "!"
LEGEND = (
    "pass = behaves as a fixed kernel should    known = known-bug, kernel older than the fix\n"
    "skip = cannot run here (reason in JSON)    FAIL / ERROR / HANG = needs a look\n"
    f"{VIOLATION_MARK} = not what this kernel version must show (see below)    "
    f"{NOT_RUN} = not run"
)
DETAIL_WIDTH = 220


# --- KTAP --------------------------------------------------------------------------------


def ktap(runs: Sequence[KernelRun]) -> str:
    """The whole matrix as one KTAP document: a top-level test per kernel, named by its
    spec and release."""
    return reports.ktap_kernels(
        [(f"{run.spec} {run.release}".strip(), run.results) for run in runs]
    )


# --- JSON --------------------------------------------------------------------------------


def kernel_json(run: KernelRun) -> dict[str, Any]:
    return {
        "spec": run.spec,
        "release": run.release or run.kernel.get("release", ""),
        "package_version": run.package_version,
        "kernel": run.kernel,
        "summary": run.summary
        or {"counts": reports.counts(run.results), "total": len(run.results)},
        "results": [result.to_json() for result in run.results],
        "guest": run.guest,
        **({"build": run.build} if run.build else {}),
        "expectations": {
            "checked": run.checked,
            "violations": [v.to_json() for v in run.violations],
        },
    }


def summary_json(runs: Sequence[KernelRun]) -> dict[str, Any]:
    everything = [result for run in runs for result in run.results]
    return {
        "kernels": len(runs),
        "counts": reports.counts(everything),
        "total": len(everything),
        "violations": sum(len(run.violations) for run in runs),
        "guest_failures": sum(run.guest_failed for run in runs),
        "ok": exit_status(runs) != EXIT_FAIL,  # every kernel skipping everything is ok
    }


def to_json(
    runs: Sequence[KernelRun], wall_s: float | None = None, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    matrix: dict[str, Any] = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if wall_s is not None:
        matrix["wall_s"] = round(wall_s, 2)
    matrix.update(options or {})
    return {
        "matrix": matrix,
        "summary": summary_json(runs),
        "kernels": [kernel_json(run) for run in runs],
    }


def write_json(
    path: str,
    runs: Sequence[KernelRun],
    wall_s: float | None = None,
    options: dict[str, Any] | None = None,
) -> None:
    with open(path, "w") as out:
        json.dump(to_json(runs, wall_s, options), out, indent=2, default=str)
        out.write("\n")


def runs_from_json(document: Any) -> list[KernelRun]:
    """KernelRuns from a matrix JSON document (expectations are re-checked by the caller);
    ReportError (a ValueError) names the first field that is not as ``write_json`` writes it."""
    if not isinstance(document, dict) or not isinstance(document.get("kernels"), list):
        raise reportschema.ReportError("not a uffdharness matrix report (no 'kernels' list)")
    runs = []
    for index, section in enumerate(document["kernels"]):
        where = f"kernels[{index}]"
        if not isinstance(section, dict):
            raise reportschema.ReportError(f"{where} is not an object")
        version = section.get("package_version")
        if version is not None and not isinstance(version, str):
            raise reportschema.ReportError(f"{where}.package_version is not a string")
        runs.append(
            KernelRun(
                spec=reportschema.need(section, "spec", str, where),
                release=section.get("release") or "",
                package_version=version,
                kernel=reportschema.kernel_section(section.get("kernel", {}), f"{where}.kernel"),
                summary=_object(section, "summary", where),
                results=reportschema.results(section.get("results", []), f"{where}.results"),
                guest=_object(section, "guest", where),
                build=_object(section, "build", where),
            )
        )
        if not isinstance(runs[-1].release, str):
            raise reportschema.ReportError(f"{where}.release is not a string")
    return runs


def _object(section: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = section.get(key, {})
    if not isinstance(value, dict):
        raise reportschema.ReportError(f"{where}.{key} is not an object")
    return value


def load(path: str) -> list[KernelRun]:
    """The runs in a matrix JSON file; OSError, or ReportError naming the file."""
    with open(path, "rb") as source:
        data = source.read()
    try:
        return runs_from_json(reportschema.decode(data, path))
    except reportschema.ReportError as exc:
        message = str(exc)
        raise reportschema.ReportError(
            message if message.startswith(path) else f"{path}: {message}"
        ) from None


# --- JUnit -------------------------------------------------------------------------------


def junit_suites(runs: Sequence[KernelRun]) -> list[tuple[str, list[Result]]]:
    """One suite per kernel, named by its spec. The expectation check is one more test
    case per kernel, failing with the violations, so CI shows them like any failure."""
    suites = []
    for run in runs:
        results = list(run.results)
        if run.version is not None:
            results.append(expectations_row(run))
        suites.append((run.spec, results))
    return suites


def expectations_row(run: KernelRun) -> Result:
    facts = {
        "checked": run.checked,
        "violations": [v.to_json() for v in run.violations],
        "release": run.release,
    }
    if run.violations:
        reason = "; ".join(str(v) for v in run.violations)
        return Result(
            "matrix-expectations",
            "all",
            "fail",
            reason,
            f"{len(run.violations)} of {run.checked} expectations violated",
            facts,
        )
    return Result(
        "matrix-expectations", "all", "pass", "", f"{run.checked} expectations hold", facts
    )


def write_junit(path: str, runs: Sequence[KernelRun]) -> None:
    reports.write_junit(path, junit_suites(runs))


# --- the table ---------------------------------------------------------------------------


def rows(runs: Sequence[KernelRun]) -> list[tuple[str, str]]:
    """(scenario, memory) in catalogue order as the kernels reported them; guest rows last."""
    seen: dict[tuple[str, str], None] = {}
    for run in runs:
        for result in run.results:
            if result.id != GUEST_ROW_ID:
                seen.setdefault((result.id, result.memory), None)
    for run in runs:
        for result in run.results:
            if result.id == GUEST_ROW_ID:
                seen.setdefault((result.id, result.memory), None)
    return list(seen)


def cell(run: KernelRun, scenario: str, memory: str) -> str:
    result = next((r for r in run.results if (r.id, r.memory) == (scenario, memory)), None)
    if result is None:
        return NOT_RUN
    if result.id == GUEST_ROW_ID and run.interrupted:
        return INTERRUPTED_CELL
    text = CELL.get(result.verdict, result.verdict)
    if any((v.id, v.memory) == (scenario, memory) for v in run.violations):
        text += VIOLATION_MARK
    return text


def column_labels(runs: Sequence[KernelRun]) -> list[str]:
    """Column headings: the spec, or a kernel path's file name when that stays unique."""
    short = [Path(run.spec.split(",", 1)[0]).name if "/" in run.spec else run.spec for run in runs]
    return short if len(set(short)) == len(short) else [run.spec for run in runs]


def _version_label(run: KernelRun) -> str:
    version = run.version
    return str(version) if version is not None else (run.release or "?")


def print_table(runs: Sequence[KernelRun], out: TextIO, wall_s: float | None = None) -> None:
    """The kernel x scenario table, one line per kernel, then everything that needs a look."""
    table_rows = rows(runs)
    labels = [_row_label(scenario, memory) for scenario, memory in table_rows]
    first = max([len(label) for label in labels] + [len("scenario[memory]")])
    headings = column_labels(runs)
    cells = [[cell(run, scenario, memory) for run in runs] for scenario, memory in table_rows]
    widths = [
        max([len(heading), len(_version_label(run)), 6] + [len(row[column]) for row in cells])
        for column, (heading, run) in enumerate(zip(headings, runs, strict=True))
    ]
    out.write(_line("", headings, first, widths))
    out.write(_line("scenario[memory]", [_version_label(run) for run in runs], first, widths))
    for label, row in zip(labels, cells, strict=True):
        out.write(_line(label, row, first, widths))
    out.write(f"\n{LEGEND}\n")
    if any(run.interrupted for run in runs):
        out.write(f"{INTERRUPTED_CELL} = stopped by a signal before it finished\n")
    out.write("\n")
    width = max(len(heading) for heading in headings) if runs else 0
    for heading, run in zip(headings, runs, strict=True):
        out.write(f"{heading:<{width}}  {run.release or '?'}  {_timing(run)}\n")
        if run.build:
            out.write(f"{'':<{width}}  {built_from(run.build)}\n")
    _print_attention(runs, out)
    summary = summary_json(runs)
    tally = ", ".join(f"{n} {v}" for v, n in summary["counts"].items() if n)
    took = f" in {wall_s:.1f} s" if wall_s is not None else ""
    out.write(
        f"\n{len(runs)} kernels, {summary['total']} results{took}: {tally or 'none'}; "
        f"{summary['violations']} expectation violations, "
        f"{summary['guest_failures']} guest failures\n"
    )


def _row_label(scenario: str, memory: str) -> str:
    return "(guest run)" if scenario == GUEST_ROW_ID else f"{scenario}[{memory}]"


def _line(label: str, cells: Iterable[str], first: int, widths: Sequence[int]) -> str:
    body = "  ".join(f"{text:<{width}}" for text, width in zip(cells, widths, strict=True))
    return f"{label:<{first}}  {body}".rstrip() + "\n"


def built_from(build: dict[str, Any]) -> str:
    """How a kernel built from source was made, for the line under its timing."""
    text = f"self-built from {build.get('source', '?')}"
    patches = build.get("patches") or []
    if patches:
        text += " + " + ", ".join(Path(p).name for p in patches)
    config = build.get("config") or []
    if config:
        text += "; config " + ", ".join(Path(c).name for c in config)
    fixes = build.get("carries_fixes") or []
    if fixes:
        text += "; carries " + ", ".join(f"'{fix}'" for fix in fixes)
    return text


def _timing(run: KernelRun) -> str:
    guest = run.guest
    parts = [str(guest.get("status", "?"))]
    if guest.get("accel") == "host":
        parts.append(f"host, {guest.get('total_s') or 0:.1f} s")
    elif guest.get("accel"):
        boot = guest.get("boot_s")
        parts.append(
            f"{guest['accel']}, boot {boot:.1f} s" if boot is not None else str(guest["accel"])
        )
        parts.append(f"total {guest.get('total_s') or 0:.1f} s")
    for panic in guest.get("boot_panics", ()):
        parts.append(f"booted again after a panic before the job: {panic}")
    counts = reports.counts(run.results)
    tally = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    expectations = (
        f"{len(run.violations)}/{run.checked} expectations violated"
        if run.violations
        else f"{run.checked} expectations hold"
    )
    return f"{', '.join(parts)}; {tally}; {expectations}"


def _print_attention(runs: Sequence[KernelRun], out: TextIO) -> None:
    violations = [(run, v) for run in runs for v in run.violations]
    if violations:
        out.write("\nexpectation violations:\n")
        for run, violation in violations:
            out.write(
                f"  {run.spec}: {violation.name}: expected {violation.expected}, got "
                f"{_clip(violation.observed)}\n      why: {_clip(violation.why)}\n"
            )
    bad = [(run, r) for run in runs for r in run.results if r.verdict in ("fail", "error", "hang")]
    if bad:
        out.write("\nfail / error / hang:\n")
        for run, result in bad:
            label = _row_label(result.id, result.memory)
            out.write(f"  {run.spec}: {label} {result.verdict}: {_clip(result.reason)}\n")
            if result.id == GUEST_ROW_ID:
                for name in ("console_tail", "stderr_tail"):
                    tail = result.facts.get(name)
                    if tail and isinstance(tail, str):
                        out.write(f"    {name.replace('_', ' ')}:\n")
                        out.writelines(f"      {line}\n" for line in tail.splitlines()[-15:])


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_WIDTH else text[: DETAIL_WIDTH - 3] + "..."
