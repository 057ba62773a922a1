"""KCIDB reports: a run's or a matrix's results as KernelCI's common report data (schema 5).

One ``checkout`` and one ``build`` per kernel, one ``test`` per scenario x memory
(path ``uffdharness.<scenario>.<memory>``), each known bug an ``issue`` and each pair that
shows it an ``incident``; measurements among a result's facts are ``DONE`` tests with a
``number``. The schema is kcidb-io's (``kcidb_io.schema.LATEST``, v5.3), checked in the
test suite; this module builds plain JSON and needs no kcidb-io at run time.

What KCIDB has no word for:

- known-bug is ``FAIL`` (KCIDB has no expected failure) with an incident linking the bug's
  issue, so a dashboard can triage it as known; a ``fail`` that shows a known bug on a
  kernel claiming the fix links the same issue.
- hang is ``ERROR`` with ``TIMEOUT`` at the head of ``log_excerpt`` and ``misc.timeout``.
- A kernel is identified by what is known of its source: a Debian package version, the
  source and patches of a kernel built here, else only its release. Nothing here invents a
  git commit: ``git_commit_hash`` is set only for a clean git tree built from source.

Ids are ``<origin>:...`` strings. Checkouts, builds and issues get ids that stay the same
from run to run (a second submission of the same kernel updates it); tests and incidents
carry a run id (UTC time and a random suffix) so every run's results are kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .ciformat import kernel_labels, kernel_row, measurements

if TYPE_CHECKING:
    from .matrix.runner import KernelRun
    from .runner import Result
    from .scenarios.model import KnownBug
    from .system import SystemFacts

__all__ = [
    "DEFAULT_ORIGIN",
    "SCHEMA_VERSION",
    "STATUS",
    "Kernel",
    "Report",
    "bench_report",
    "host_kernel",
    "matrix_report",
    "new_run_id",
    "origin_problem",
    "run_report",
    "write",
]

SCHEMA_VERSION = {"major": 5, "minor": 3}
DEFAULT_ORIGIN = "uffdharness"
ORIGIN_RE = re.compile(r"[a-z0-9_]+")  # the schema's origin pattern
SUITE = "uffdharness"  # the root of every test path
STATUS = {
    "pass": "PASS",
    "known-bug": "FAIL",
    "fail": "FAIL",
    "error": "ERROR",
    "hang": "ERROR",
    "skip": "SKIP",
}
LOG_EXCERPT_MAX = 16384  # the schema's maxLength
ISSUE_VERSION = 1


def origin_problem(origin: str) -> str | None:
    """Why ``origin`` cannot name a KCIDB origin, or None."""
    if ORIGIN_RE.fullmatch(origin):
        return None
    return f"{origin!r} is not a KCIDB origin (lower-case letters, digits and _ only)"


def new_run_id() -> str:
    """A run's part of its test ids: UTC time and a random suffix, so runs never collide."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def _segment(text: str) -> str:
    """One node of a KCIDB path: [a-zA-Z0-9_-]+."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "_"


def _slug(text: str) -> str:
    """An id part readable by people: no spaces, no colons (they separate the id's parts)."""
    return re.sub(r"[^A-Za-z0-9._+=~/-]+", "-", text).strip("-") or "-"


def _clean(text: str) -> str:
    return text.replace("\0", "")


@dataclass
class Kernel:
    """One tested kernel, as KCIDB needs to know it.

    ``label``: the matrix spec (``host`` for ``uffdharness run``); ``build``: the matrix's
    description of a kernel built from source (``matrix/kbuild/resolve.describe``);
    ``build_problem``: why it could not be prepared; ``ran``: False when it never ran the
    catalogue (not prepared, or stopped)."""

    label: str
    release: str
    machine: str = ""
    package_version: str | None = None
    build: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    built_ok: bool = True
    build_problem: str = ""
    ran: bool = True

    @property
    def self_built(self) -> bool:
        """Built here from source (a failed build has no description, only its spec)."""
        return bool(self.build.get("self_built")) or self.label.startswith(("src:", "debian-src:"))

    def checkout_key(self) -> str:
        """The source: a Debian package version (a binary package and ``linux-source`` of
        the same version are one checkout), a tree's identity, else only the release; then
        the patches applied to it."""
        if self.package_version:
            key = f"debian-{_slug(self.package_version)}"
        elif self.build.get("identity") or self.build.get("source"):
            key = "src-" + _slug(str(self.build.get("identity") or self.build.get("source")))
        elif self.release:
            key = f"release-{_slug(self.release)}"
        else:
            key = f"spec-{_slug(self.label)}"
        patches = self.build.get("patches") or []
        if patches:
            digest = self.patchset_hash()
            key += "+" + (digest[:16] if digest else _slug("+".join(Path(p).name for p in patches)))
        return key

    def patchset_hash(self) -> str | None:
        """The schema's patchset hash: sha256 over each patch's sha256 and a newline ("" for
        none); from the digests the build recorded, else from the files (None when one
        cannot be read, e.g. a report from before the build recorded them, merged on another
        machine)."""
        patches = self.build.get("patches") or []
        digests = self.build.get("patch_sha256") or []
        if len(digests) != len(patches):
            try:
                digests = [hashlib.sha256(Path(str(p)).read_bytes()).hexdigest() for p in patches]
            except OSError:
                return None
        if not digests:
            return ""
        return hashlib.sha256("".join(f"{d}\n" for d in digests).encode()).hexdigest()

    def build_key(self) -> str:
        key = self.checkout_key()
        if not key.startswith("release-"):  # else the release is in it already
            key += f":{_slug(self.release or 'unknown')}"
        if self.machine:
            key += f":{_slug(self.machine)}"
        config = self.build.get("config") or []
        if config:
            names = "\n".join(str(c) for c in config).encode()
            key += ":config-" + hashlib.sha256(names).hexdigest()[:12]
        return key

    def checkout(self, origin: str) -> dict[str, Any]:
        item: dict[str, Any] = {"id": f"{origin}:{self.checkout_key()}", "origin": origin}
        misc: dict[str, Any] = {"spec": self.label}
        if self.self_built:
            source = str(self.build.get("source") or self.label)
            identity = str(self.build.get("identity", ""))
            patches = [str(p) for p in self.build.get("patches") or []]
            names = ", ".join(Path(p).name for p in patches)
            built = "built here from" if self.built_ok else "to be built here from"
            item["comment"] = f"{built} {source}" + (f" + {names}" if names else "")
            commit = re.fullmatch(r"git ([0-9a-f]{40})", identity)
            if commit:
                item["git_commit_hash"] = commit.group(1)
            if identity.startswith("linux-source-"):
                item["tree_name"] = "debian"
            digest = self.patchset_hash()
            if digest is not None:
                item["patchset_hash"] = digest
            if patches:
                # Local files: the schema wants URLs; file:// says where they were read.
                item["patchset_files"] = [
                    {"name": Path(p).name, "url": Path(p).absolute().as_uri()} for p in patches
                ]
            misc.update(source=source, identity=identity, patches=patches)
            fixes = self.build.get("carries_fixes") or []
            if fixes:
                misc["carries_fixes"] = list(fixes)
        elif self.package_version:
            item["tree_name"] = "debian"
            item["comment"] = f"Debian's linux {self.package_version}"
        else:
            item["comment"] = f"Linux {self.release or self.label} (its source is not known)"
        if self.package_version:
            misc["package_version"] = self.package_version
        if self.release:
            misc["release"] = self.release
        if self.built_ok:
            item["valid"] = True
        elif "does not apply" in self.build_problem:  # the patches, not the build
            item["valid"] = False
        item["misc"] = misc
        return item

    def build_item(self, origin: str) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": f"{origin}:{self.build_key()}",
            "origin": origin,
            "checkout_id": f"{origin}:{self.checkout_key()}",
        }
        architecture = _slug(self.machine).lower().replace("-", "_")
        if architecture and re.fullmatch(r"[a-z0-9_]*", architecture):
            item["architecture"] = architecture
        misc: dict[str, Any] = {"spec": self.label}
        if self.release:
            misc["release"] = self.release
        if self.self_built:
            item["comment"] = f"{self.release or self.label}, built here (make tinyconfig + "
            item["comment"] += "uffdharness kconfig)"
            item["config_name"] = "tinyconfig+uffdharness"
            config = [str(c) for c in self.build.get("config") or []]
            if config:
                item["input_files"] = [
                    {"name": Path(c).name, "url": Path(c).absolute().as_uri()} for c in config
                ]
            if isinstance(self.build.get("build_s"), (int, float)):
                item["duration"] = float(self.build["build_s"])
            for key in ("files_compiled", "entry"):
                if self.build.get(key) is not None:
                    misc[key] = self.build[key]
        elif self.package_version:
            item["comment"] = f"Debian's linux-image {self.release} {self.package_version}"
            item["config_name"] = "debian"
            misc["package_version"] = self.package_version
        else:
            item["comment"] = f"Linux {self.release or self.label}"
        if self.built_ok:
            item["status"] = "PASS"
        else:
            # A source build that failed is the kernel's (or its patches'); a kernel that
            # could not be fetched is the harness's.
            item["status"] = "FAIL" if self.self_built else "MISS"
            item["log_excerpt"] = _clean(self.build_problem)[:LOG_EXCERPT_MAX]
        item["misc"] = misc
        return item


class Report:
    """A KCIDB document being assembled; objects with the same id are kept once."""

    def __init__(self, origin: str = DEFAULT_ORIGIN, run_id: str | None = None):
        problem = origin_problem(origin)
        if problem:
            raise ValueError(problem)
        self.origin = origin
        self.run_id = run_id or new_run_id()
        self._objects: dict[str, dict[str, dict[str, Any]]] = {
            name: {} for name in ("checkouts", "builds", "tests", "issues", "incidents")
        }

    def _add(self, kind: str, item: dict[str, Any]) -> None:
        self._objects[kind].setdefault(item["id"], item)

    def add_kernel(self, kernel: Kernel, results: Sequence[Result], scope: str) -> None:
        """``kernel``'s checkout and build, and a test per result. ``scope`` tells apart
        the tests of two columns of one matrix that ran the same kernel."""
        from .scenarios import CATALOGUE

        self._add("checkouts", kernel.checkout(self.origin))
        build = kernel.build_item(self.origin)
        self._add("builds", build)
        prefix = f"{self.origin}:{self.run_id}/{_slug(scope)}"
        for result in results:
            item = CATALOGUE.get(result.id)
            bug = item.known_bug if item is not None else None
            test = self._test(prefix, build["id"], kernel, result, bug)
            self._add("tests", test)
            if bug is not None and _shows(result, bug):
                self._incident(test, bug, item.id if item else result.id)
            for measured in measurements(result):
                self._add("tests", self._measurement(test, *measured))

    def _test(
        self,
        prefix: str,
        build_id: str,
        kernel: Kernel,
        result: Result,
        bug: KnownBug | None,
    ) -> dict[str, Any]:
        path = test_path(result)
        status = STATUS[result.verdict]
        misc: dict[str, Any] = {
            "verdict": result.verdict,
            "scenario": result.id,
            "memory": result.memory,
            "key": result.key,
        }
        if result.verdict == "hang":
            misc["timeout"] = True
        if bug is not None:
            misc["known_bug"] = {"fix": bug.fix, "fixed_in": bug.fixed_in}
        if not kernel.ran and kernel_row(result) == "guest":
            status = "MISS"  # the kernel never ran the catalogue: nothing was tested
        test: dict[str, Any] = {
            "id": f"{prefix}/{path}",
            "origin": self.origin,
            "build_id": build_id,
            "path": path,
            "status": status,
            "comment": _clean(f"{result.name}: {result.verdict}" + _then(result.key)),
            "log_excerpt": log_excerpt(result),
            "duration": round(float(result.duration_s), 4),
            "misc": misc,
        }
        if kernel.environment:
            test["environment"] = kernel.environment
        return test

    def _measurement(
        self, test: dict[str, Any], name: str, value: float, unit: str
    ) -> dict[str, Any]:
        return {
            "id": f"{test['id']}.{name}",
            "origin": self.origin,
            "build_id": test["build_id"],
            "path": f"{test['path']}.{_segment(name)}",
            "status": "DONE",
            "number": {"value": value, "unit": unit},
            "comment": f"{test['misc']['scenario']}[{test['misc']['memory']}] {name}",
            **({"environment": test["environment"]} if "environment" in test else {}),
        }

    def _incident(self, test: dict[str, Any], bug: KnownBug, scenario: str) -> None:
        issue = self._issue(bug, scenario)
        self._add(
            "incidents",
            {
                "id": f"{self.origin}:{test['id'].split(':', 1)[1]}",
                "origin": self.origin,
                "issue_id": issue["id"],
                "issue_version": ISSUE_VERSION,
                "build_id": test["build_id"],
                "test_id": test["id"],
                "present": True,
                "comment": _clean(
                    f"{test['misc']['scenario']}[{test['misc']['memory']}] "
                    f"shows the bug fixed by '{bug.fix}'"
                ),
            },
        )

    def _issue(self, bug: KnownBug, scenario: str) -> dict[str, Any]:
        issue_id = f"{self.origin}:issue/{_slug(bug.fix)}"
        issue = self._objects["issues"].get(issue_id)
        if issue is None:
            issue = {
                "id": issue_id,
                "version": ISSUE_VERSION,
                "origin": self.origin,
                "report_subject": _clean(bug.fix),
                "culprit": {"code": True, "tool": False, "harness": False},
                "comment": _clean(
                    f"{bug.signature}; fixed in {bug.fixed_in} by '{bug.fix}'"
                    + (f" (stable: {', '.join(bug.backports)})" if bug.backports else "")
                ),
                "misc": {
                    "fix_subject": bug.fix,
                    "fixed_in": bug.fixed_in,
                    "backports": list(bug.backports),
                    "scenarios": [],
                },
            }
            self._add("issues", issue)
        if scenario not in issue["misc"]["scenarios"]:
            issue["misc"]["scenarios"].append(scenario)
        return issue

    def add_bench(self, kernel: Kernel, bench: dict[str, Any], scope: str) -> None:
        """``kernel``'s checkout and build, and a DONE test per figure of ``uffdharness
        bench --json`` (``bench``): its median as the ``number``; a SKIP test per skipped
        workload. A missed target is in ``misc``: it measures the harness, not the kernel."""
        self._add("checkouts", kernel.checkout(self.origin))
        build = kernel.build_item(self.origin)
        self._add("builds", build)
        prefix = f"{self.origin}:{self.run_id}/{_slug(scope)}"

        def add(path: str, status: str, **fields: Any) -> None:
            test = {"id": f"{prefix}/{path}", "origin": self.origin, "build_id": build["id"]}
            test.update(path=path, status=status, **fields)
            if kernel.environment:
                test["environment"] = kernel.environment
            self._add("tests", test)

        for figure in bench.get("figures", []):
            parts = [figure.get(key, "?") for key in ("workload", "engine", "placement")]
            path = ".".join([SUITE, "bench", *(_segment(str(part)) for part in parts)])
            extra = ("samples", "min", "max", "ratio", "target", "missed", "handler_us", "note")
            add(
                path,
                "DONE",
                number={
                    "value": float(figure.get("median", 0.0)),
                    "unit": str(figure.get("unit", "")),
                },
                comment=_clean(" / ".join(str(part) for part in parts) + ": median"),
                misc={key: figure[key] for key in extra if figure.get(key) is not None},
            )
        for skipped in bench.get("skipped", []):
            name, _, reason = str(skipped).partition(": ")
            add(
                f"{SUITE}.bench.{_segment(name)}",
                "SKIP",
                log_excerpt=_clean(f"{skipped}\n")[:LOG_EXCERPT_MAX],
                comment=_clean(f"{name}: skipped: {reason}"),
            )

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"version": dict(SCHEMA_VERSION)}
        for kind, items in self._objects.items():
            document[kind] = list(items.values())
        return document


def _shows(result: Result, bug: KnownBug) -> bool:
    """The result shows ``bug``: a known-bug verdict, or a fail that names its fix (the
    bug on a kernel claiming the fix)."""
    return result.verdict == "known-bug" or (result.verdict == "fail" and bug.fix in result.reason)


def _then(text: str) -> str:
    return f"; {text}" if text else ""


def test_path(result: Result) -> str:
    """``uffdharness.<scenario>.<memory>``; the matrix's own rows are ``uffdharness.guest``
    and ``uffdharness.expectations``."""
    row = kernel_row(result)
    if row:
        return f"{SUITE}.{row}"
    return f"{SUITE}.{_segment(result.id)}.{_segment(result.memory)}"


def log_excerpt(result: Result) -> str:
    """What a reader of the test needs: the verdict (TIMEOUT for a hang), the reason, the
    key fact, the facts (an error's traceback as text)."""
    head = "TIMEOUT" if result.verdict == "hang" else result.verdict
    lines = [f"{result.name}: {head}" + (f": {result.reason}" if result.reason else "")]
    if result.key:
        lines.append(f"key: {result.key}")
    facts = dict(result.facts)
    traceback = facts.pop("traceback", None)
    tails = {name: facts.pop(name) for name in ("console_tail", "stderr_tail") if name in facts}
    if facts:
        lines.append("facts: " + json.dumps(facts, default=str, sort_keys=True))
    if isinstance(traceback, str):
        lines.append(traceback.rstrip())
    for name, tail in tails.items():
        lines.append(f"{name.replace('_', ' ')}:\n{tail}")
    text = _clean("\n".join(lines) + "\n")
    if len(text) > LOG_EXCERPT_MAX:
        text = text[: LOG_EXCERPT_MAX - 4] + "...\n"
    return text


# --- the two sources: one run, a matrix --------------------------------------------------


def debian_version(uname_version: str) -> str | None:
    """The Debian package version a Debian kernel names in ``uname -v`` ("#1 SMP
    PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-01-01)"), else None."""
    found = re.search(r"\bDebian (\d[\w.+~:-]*)", uname_version)
    return found.group(1) if found else None


def host_kernel(info: SystemFacts, what: str = "uffdharness run") -> Kernel:
    """The running kernel, from its facts."""
    from .abi import flag_names

    return Kernel(
        "host",
        info.release,
        info.machine,
        debian_version(info.version),
        environment={
            "comment": f"the running kernel ({what}, no qemu)",
            "misc": {
                "root": info.is_root,
                "features": flag_names(info.offered),
                "carried_fixes": sorted(info.carried_fixes),
            },
        },
    )


def run_report(
    info: SystemFacts,
    results: Sequence[Result],
    origin: str = DEFAULT_ORIGIN,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The KCIDB document of ``uffdharness run`` on the running kernel."""
    report = Report(origin, run_id)
    report.add_kernel(host_kernel(info), results, "host")
    return report.to_json()


def bench_report(
    info: SystemFacts,
    bench: dict[str, Any],
    origin: str = DEFAULT_ORIGIN,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The KCIDB document of ``uffdharness bench`` on the running kernel (``bench``: its
    ``--json`` report)."""
    report = Report(origin, run_id)
    report.add_bench(host_kernel(info, "uffdharness bench"), bench, "host")
    return report.to_json()


def matrix_report(
    runs: Sequence[KernelRun], origin: str = DEFAULT_ORIGIN, run_id: str | None = None
) -> dict[str, Any]:
    """The KCIDB document of a matrix: each kernel's results, its guest row if it returned
    no report, and its expectation check (``uffdharness.expectations``)."""
    from .matrix.report import expectations_row
    from .matrix.runner import INTERRUPTED, PREPARE_FAILED

    report = Report(origin, run_id)
    for run, scope in zip(runs, kernel_labels([run.spec for run in runs]), strict=True):
        guest = {
            key: run.guest[key]
            for key in ("status", "accel", "boot_s", "total_s", "exit_code", "failed_to")
            if run.guest.get(key) is not None
        }
        accel = guest.get("accel")
        if accel == "host":
            comment = "the host (no qemu)"
        else:
            comment = f"qemu guest ({accel})" if accel else "no guest: the kernel never booted"
        failed_to = guest.get("failed_to")
        problem = next((r.reason for r in run.results if kernel_row(r) == "guest"), "")
        kernel = Kernel(
            run.spec,
            run.release or str(run.kernel.get("release", "")),
            str(run.kernel.get("machine") or ""),
            run.package_version,
            run.build or {},
            environment={"comment": comment, "misc": guest},
            built_ok=failed_to != PREPARE_FAILED,
            build_problem=problem,
            ran=not failed_to and guest.get("status") != INTERRUPTED,
        )
        results = list(run.results)
        if run.version is not None:
            results.append(expectations_row(run))
        report.add_kernel(kernel, results, scope)
    return report.to_json()


def write(path: str, document: dict[str, Any]) -> None:
    with open(path, "w") as out:
        json.dump(document, out, indent=2, default=str)
        out.write("\n")
