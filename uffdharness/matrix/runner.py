"""Run the scenario catalogue under several kernels: one guest (or the host) per kernel.

Each kernel costs one interpreter start: the guest runs ``python -m uffdharness run --json
$UFFDHARNESS_RESULTS/report.json`` (the runner forks per scenario), and the report comes
back through the guest's results share. ``uffdharness run`` exits 1 when a scenario fails;
that is a verdict, not a guest failure. A guest that returns no report (panic, hang, a
broken interpreter) becomes one ``error`` or ``hang`` row carrying the console tail, and
the other kernels still run.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import reports
from ..kernelversion import KernelVersion
from ..runner import DEFAULT_TIMEOUT, Result
from ..scenarios.model import BAD_VERDICTS
from . import hosttools, kernels, kvmprobe
from .defaults import DEFAULT_GUEST_TIMEOUT
from .expectations import Violation, check
from .guest import GuestConfig, GuestResult, cpus_per_guest, run_in_guest
from .kernelspec import SpecError, SpecKind, parse

REPORT_NAME = "report.json"
# Where a kernel's failure to produce a report is recorded: one row in that kernel's column.
GUEST_ROW_ID = "guest"
GUEST_ROW_MEMORY = "-"
TAIL_LINES = 25

Progress = Callable[[str], None]


class MatrixError(RuntimeError):
    """The matrix cannot start at all (as opposed to one kernel failing)."""


@dataclass(frozen=True)
class MatrixOptions:
    pattern: str | None = None
    memory: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT  # per scenario x memory, inside the guest
    guest_timeout: float = DEFAULT_GUEST_TIMEOUT
    jobs: int = 1
    memory_mb: int = GuestConfig.memory_mb


@dataclass
class KernelRun:
    """One kernel's column: the guest's own report plus how the guest went."""

    spec: str
    release: str = ""
    package_version: str | None = None
    kernel: dict[str, Any] = field(default_factory=dict)  # the report's "kernel" section
    summary: dict[str, Any] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    guest: dict[str, Any] = field(default_factory=dict)  # status, boot_s, total_s, accel ...
    checked: int = 0  # expectations that applied
    violations: list[Violation] = field(default_factory=list)
    build: dict[str, Any] = field(default_factory=dict)  # a kernel built from source: how

    @property
    def version(self) -> KernelVersion | None:
        """The kernel version the guest reported, None when no report came back."""
        numbers = self.kernel.get("version")
        if not numbers:
            return None
        return KernelVersion(
            *numbers[:3],
            release=self.kernel.get("release", ""),
            patch_known=bool(self.kernel.get("patch_known", True)),
        )

    @property
    def guest_failed(self) -> bool:
        return any(r.id == GUEST_ROW_ID for r in self.results)

    @property
    def ok(self) -> bool:
        bad = any(r.verdict in BAD_VERDICTS for r in self.results)
        return not (bad or self.violations or self.guest_failed)

    def check_expectations(self) -> None:
        version = self.version
        if version is None:
            self.checked, self.violations = 0, []
        else:
            carried = self.kernel.get("carried_fixes") or ()
            self.checked, self.violations = check(version, self.results, carried_fixes=carried)


def exit_status(runs: Sequence[KernelRun]) -> int:
    """1 on any fail/error/hang row, expectation violation or guest failure; else 0."""
    return 0 if runs and all(run.ok for run in runs) else 1


def guest_python() -> str:
    """The interpreter that runs in each guest: this one, unresolved so a venv stays a venv.

    The guest sees the host's root read-only but mounts its own tmpfs on /tmp, so neither
    the interpreter nor the installed package may live there.
    """
    python = Path(sys.executable)
    package = Path(__file__).resolve().parent.parent
    for what, path in (
        ("python", python),
        ("python", python.resolve()),
        ("the uffdharness package", package),
    ):
        if str(path) == "/tmp" or str(path).startswith("/tmp/"):
            raise MatrixError(
                f"{what} at {path} lives under /tmp, which a guest replaces with its own "
                "tmpfs; install uffdharness into a venv elsewhere (e.g. ./.venv)"
            )
    return str(python)


def precompile() -> None:
    """Byte-compile the uffdharness package on the host before guests import it.

    Guests run with PYTHONDONTWRITEBYTECODE on a read-only root, so a module without a
    current .pyc is compiled again in every guest, under TCG; an editable install (and any
    environment with PYTHONDONTWRITEBYTECODE set) has none. Compiling here takes ~0.1 s.
    """
    import compileall

    try:
        compileall.compile_dir(str(Path(__file__).resolve().parent.parent), quiet=2)
    except OSError:
        pass  # a read-only installation: the guests compile, only slower


def run_argv(options: MatrixOptions, python: str, carried_fixes: Sequence[str] = ()) -> list[str]:
    """The guest's command. The shell expands $UFFDHARNESS_RESULTS, which differs between a
    guest (the results share) and the host (a temporary directory)."""
    command = [python, "-m", "uffdharness", "run", "--quiet", "--timeout", f"{options.timeout:g}"]
    for fix in carried_fixes:
        command += ["--carries-fix", fix]
    if options.pattern:
        command += ["-k", options.pattern]
    for kind in options.memory:
        command += ["--memory", kind]
    return [
        "/bin/sh",
        "-c",
        f'exec "$@" --json "$UFFDHARNESS_RESULTS/{REPORT_NAME}"',
        "sh",
        *command,
    ]


def check_specs(specs: Sequence[str]) -> list[str]:
    """The specs, parsed and de-duplicated in order; SpecError names a bad one."""
    seen: list[str] = []
    for text in specs:
        parse(text)
        if text not in seen:
            seen.append(text)
    return seen


def require_tools(specs: Sequence[str]) -> None:
    """MissingHostTools (with the apt-get line) when a spec needs qemu, or a kernel built
    from source the build tools, and they are absent.

    Kernels already in the cache need no fetch tools; resolve() asks for those itself.
    """
    kinds = {parse(text).kind for text in specs}
    needed = hosttools.BOOT_TOOLS if kinds - {SpecKind.HOST} else ()
    if kinds & {SpecKind.SOURCE, SpecKind.DEBIAN_SOURCE}:
        needed += hosttools.BUILD_TOOLS
    if needed:
        hosttools.require(needed)


def run_matrix(
    specs: Sequence[str], options: MatrixOptions, progress: Progress | None = None
) -> list[KernelRun]:
    """One KernelRun per spec, in the order given; ``options.jobs`` guests at a time."""
    specs = check_specs(specs)
    guests = sum(parse(spec).kind is not SpecKind.HOST for spec in specs)
    python = guest_python() if guests else sys.executable
    say = _serialised(progress)
    if guests:
        precompile()
    # vCPUs for as many guests as will really run at once
    parallel = max(1, min(options.jobs, guests))
    config = GuestConfig(memory_mb=options.memory_mb, cpus=cpus_per_guest(parallel))
    with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        runs = list(pool.map(lambda spec: run_kernel(spec, options, python, config, say), specs))
    for run in runs:
        run.check_expectations()
    return runs


def _serialised(progress: Progress | None) -> Progress:
    lock = threading.Lock()

    def say(message: str) -> None:
        if progress is not None:
            with lock:
                progress(message)

    return say


def run_kernel(
    spec: str, options: MatrixOptions, python: str, config: GuestConfig, say: Progress
) -> KernelRun:
    started = time.monotonic()
    try:
        image = kernels.resolve(spec)
    except Exception as exc:  # noqa: BLE001 - a download, dpkg-deb or depmod failure of one
        # kernel must not stop the others
        expected = (kernels.KernelFetchError, hosttools.MissingHostTools, SpecError, OSError)
        what = str(exc) if isinstance(exc, expected) else f"{type(exc).__name__}: {exc}"
        say(f"{spec}: cannot prepare the kernel: {what}")
        return failed_run(spec, "error", f"cannot prepare the kernel: {what}")
    if image.is_host:
        say(f"{spec}: running on the host kernel {image.release}")
    else:
        version = f" ({image.package_version})" if image.package_version else ""
        say(
            f"{spec}: booting {image.release}{version} in qemu, {config.cpus} vCPU, "
            f"{config.memory_mb} MB"
        )
    try:
        if not image.is_host:
            config = replace(config, accel=kvmprobe.default_accel(image))
        outcome = run_in_guest(
            image,
            run_argv(options, python, image.carried_fixes),
            options.guest_timeout,
            config=config,
        )
    except hosttools.MissingHostTools as exc:
        say(f"{spec}: {exc}")
        return failed_run(spec, "error", str(exc), release=image.release)
    except Exception as exc:  # noqa: BLE001 - one kernel's harness failure must not stop the rest
        say(f"{spec}: the guest could not be run: {type(exc).__name__}: {exc}")
        return failed_run(
            spec,
            "error",
            f"the guest could not be run: {type(exc).__name__}: {exc}",
            release=image.release,
        )
    run = from_guest(spec, image.release, image.package_version, outcome)
    run.build = image.build or {}
    say(f"{spec}: {describe(run, time.monotonic() - started)}")
    return run


def describe(run: KernelRun, wall_s: float | None = None) -> str:
    """One progress/summary line: guest status, timings, verdict counts."""
    guest = run.guest
    parts = [guest.get("status", "?")]
    if wall_s is not None:
        parts.append(f"in {wall_s:.1f} s")
    if guest.get("accel") and guest["accel"] != "host":
        boot = guest.get("boot_s")
        parts.append(
            f"(boot {boot:.1f} s, {guest['accel']})" if boot is not None else f"({guest['accel']})"
        )
    counts = reports.counts(run.results)
    tally = ", ".join(f"{n} {verdict}" for verdict, n in counts.items() if n)
    return f"{' '.join(parts)}: {len(run.results)} results ({tally})"


def from_guest(
    spec: str, release: str, package_version: str | None, outcome: GuestResult
) -> KernelRun:
    """A KernelRun from what the guest left behind: its report if any, else one bad row."""
    guest = {
        "status": outcome.status,
        "exit_code": outcome.exit_code,
        "boot_s": _rounded(outcome.boot_s),
        "total_s": _rounded(outcome.total_s),
        "accel": outcome.accel,
        "detail": outcome.detail,
    }
    run = KernelRun(spec, release, package_version, guest=guest)
    report, problem = _read_report(outcome)
    if report is not None:
        run.kernel = report.get("kernel", {})
        run.summary = report.get("summary", {})
        run.results = [result_from_json(item) for item in report.get("results", [])]
    if outcome.status != "ok" or problem:
        verdict = "hang" if outcome.status == "hang" else "error"
        reason = outcome.detail or problem or outcome.status
        if problem and outcome.detail:
            reason = f"{outcome.detail}; {problem}"
        guest["console_tail"] = _tail(outcome.console_tail)
        guest["stderr_tail"] = _tail(outcome.stderr)
        run.results.append(guest_row(verdict, reason, guest))
    return run


def _read_report(outcome: GuestResult) -> tuple[dict[str, Any] | None, str]:
    data = outcome.files.get(REPORT_NAME)
    if data is None:
        last = outcome.stderr.strip().splitlines()[-1:] if outcome.stderr.strip() else []
        said = f": {last[0]}" if last else ""
        return None, (
            f"no {REPORT_NAME} from uffdharness run (exit code {outcome.exit_code}){said}"
        )
    try:
        report = json.loads(data)
    except ValueError as exc:
        return None, f"unreadable {REPORT_NAME}: {exc}"
    if outcome.exit_code not in (0, 1):
        return report, f"uffdharness run exited {outcome.exit_code}"
    return report, ""


def guest_row(verdict: str, reason: str, guest: dict[str, Any]) -> Result:
    facts = {key: guest[key] for key in ("console_tail", "stderr_tail") if guest.get(key)}
    key = "guest hang" if verdict == "hang" else "guest error"
    return Result(
        GUEST_ROW_ID,
        GUEST_ROW_MEMORY,
        verdict,
        reason,
        key,
        facts,  # type: ignore[arg-type]
        guest.get("total_s") or 0.0,
    )


def failed_run(spec: str, verdict: str, reason: str, release: str = "") -> KernelRun:
    guest = {
        "status": verdict,
        "exit_code": None,
        "boot_s": None,
        "total_s": 0.0,
        "accel": None,
        "detail": reason,
    }
    return KernelRun(spec, release, guest=guest, results=[guest_row(verdict, reason, guest)])


def result_from_json(item: dict[str, Any]) -> Result:
    """The inverse of runner.Result.to_json."""
    return Result(
        item["id"],
        item["memory"],
        item["verdict"],
        item.get("reason", ""),
        item.get("key", ""),
        item.get("facts", {}),
        item.get("duration_s", 0.0),
    )


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
