"""Run the scenario catalogue under several kernels: one guest (or the host) per kernel.

Each kernel costs one interpreter start: the guest runs ``python -m uffdharness run --json
$UFFDHARNESS_RESULTS/report.json`` (the runner forks per scenario), and the report comes
back through the guest's results share. ``uffdharness run`` exits 1 when a scenario fails;
that is a verdict, not a guest failure. A guest that returns no report (panic, hang, a
broken interpreter, a report that is not one) becomes one ``error`` or ``hang`` row
carrying the console tail, and the other kernels still run.

A stop request (children.CHILDREN.stop, which the CLI calls on SIGINT, SIGTERM or SIGHUP)
kills every guest and helper this run started; the kernels that had finished keep their
results, the others get one ``error`` row saying they were interrupted.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import errno_name
from ..interrupts import signal_name
from ..kernelversion import KernelVersion
from ..runner import DEFAULT_TIMEOUT, EXIT_FAIL, EXIT_STATUSES, Result
from ..runner import exit_status as verdicts_exit_status
from ..scenarios.model import BAD_VERDICTS
from . import hosttools, kernels, kvmprobe, reportschema
from .children import CHILDREN, Stopped
from .defaults import DEFAULT_GUEST_TIMEOUT
from .expectations import Violation, check
from .guest import GuestConfig, GuestResult, cpus_per_guest, run_in_guest
from .kernelspec import SpecError, SpecKind, parse

REPORT_NAME = "report.json"
# Where a kernel's failure to produce a report is recorded: one row in that kernel's column.
GUEST_ROW_ID = "guest"
GUEST_ROW_MEMORY = "-"
TAIL_LINES = 25
INTERRUPTED = "interrupted"
# what a kernel that never produced a report failed to do, as its row's reason begins
PREPARE_FAILED = "cannot prepare the kernel"
RUN_FAILED = "the guest could not be run"  # the guest status of a kernel a stop request cut short
# How often the main thread wakes while guests run: Python runs signal handlers only in the
# main thread, and only between bytecodes, so it must not block indefinitely.
WAIT_POLL_S = 0.2

Stage = Literal["preparing", "note", "booting", "host", "done"]


@dataclass(frozen=True)
class Milestone:
    """One step of one kernel, for progress output.

    preparing: resolving the spec (a download may follow); note: something resolving said
    (a download, a fallback); booting / host: the guest or host run starts; done: the
    kernel finished (``text`` names how, and the time taken, but no verdicts: those are in
    the table)."""

    spec: str
    stage: Stage
    text: str

    def __str__(self) -> str:
        return f"{self.spec}: {self.text}"


Progress = Callable[[Milestone], None]


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
    def interrupted(self) -> bool:
        return self.guest.get("status") == INTERRUPTED

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
    """EXIT_FAIL (1) on any fail/error/hang row, expectation violation or guest failure, or
    no kernel at all; else the runner's status of every kernel's results together: EXIT_SKIP
    (4) when each of them skipped, EXIT_PASS (0) otherwise."""
    if not runs or not all(run.ok for run in runs):
        return EXIT_FAIL
    return verdicts_exit_status(result for run in runs for result in run.results)


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


def selects_anything(pattern: str | None, memory: Sequence[str] | None) -> bool:
    """Whether ``-k``/``--memory`` select any scenario: the guests run this installation's
    catalogue, so the host can tell before any guest boots."""
    from ..runner import select
    from ..scenarios import CATALOGUE

    return bool(select(CATALOGUE.values(), pattern, memory))


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
        futures = [pool.submit(run_kernel, spec, options, python, config, say) for spec in specs]
        interrupt = None
        pending = set(futures)
        while pending:
            try:
                _, pending = wait(pending, timeout=WAIT_POLL_S, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt as exc:  # SIGINT with Python's own handler in place
                interrupt = exc
                CHILDREN.stop(signal.SIGINT)
            CHILDREN.escalate()
        if interrupt is not None:  # raised once no guest of this run is left running
            CHILDREN.reset()
            raise interrupt
        runs = [future.result() for future in futures]
    for run in runs:
        run.check_expectations()
    return runs


def _serialised(progress: Progress | None) -> Progress:
    lock = threading.Lock()

    def say(message: Milestone) -> None:
        if progress is not None:
            with lock:
                progress(message)

    return say


def run_kernel(
    spec: str, options: MatrixOptions, python: str, config: GuestConfig, say: Progress
) -> KernelRun:
    """One kernel's column; never raises, so one kernel cannot stop the others."""
    started = time.monotonic()
    try:
        run = _run_kernel(spec, options, python, config, say)
    except Stopped as stop:
        run = interrupted_run(spec, stop.signum, time.monotonic() - started)
    took = time.monotonic() - started
    say(Milestone(spec, "done", _outcome(run, took)))
    return run


def _run_kernel(
    spec: str, options: MatrixOptions, python: str, config: GuestConfig, say: Progress
) -> KernelRun:
    CHILDREN.check()
    say(Milestone(spec, "preparing", "preparing the kernel"))
    try:
        image = kernels.resolve(spec, log=lambda text: say(Milestone(spec, "note", text)))
    except Stopped:
        raise
    except Exception as exc:  # noqa: BLE001 - a download, dpkg-deb or depmod failure of one
        # kernel must not stop the others
        CHILDREN.check()  # a helper the stop killed is no failure of the kernel
        return unfinished_run(spec, PREPARE_FAILED, describe_error(exc))
    try:
        if image.is_host:
            say(Milestone(spec, "host", f"running on the host kernel {image.release}"))
        else:
            config = replace(config, accel=kvmprobe.default_accel(image))
            version = f" ({image.package_version})" if image.package_version else ""
            say(
                Milestone(
                    spec,
                    "booting",
                    f"booting {image.release}{version} in qemu ({config.accel}, "
                    f"{config.cpus} vCPU, {config.memory_mb} MB)",
                )
            )
        outcome = run_in_guest(
            image,
            run_argv(options, python, image.carried_fixes),
            options.guest_timeout,
            config=config,
        )
    except Stopped:
        raise
    except Exception as exc:  # noqa: BLE001 - one kernel's harness failure must not stop the rest
        CHILDREN.check()
        if isinstance(exc, hosttools.MissingHostTools):
            return unfinished_run(spec, RUN_FAILED, str(exc), image.release, named=False)
        return unfinished_run(spec, RUN_FAILED, describe_error(exc), image.release)
    run = from_guest(spec, image.release, image.package_version, outcome)
    run.build = image.build or {}
    return run


def describe_error(exc: BaseException) -> str:
    """One line for an exception: its message for the errors we raise on purpose, the errno
    name for OS errors (``ENOSPC (No space left on device): /tmp/x``), else its type too."""
    if isinstance(exc, OSError) and exc.errno:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{errno_name(exc.errno)} ({exc.strerror}){where}"
    expected = (kernels.KernelFetchError, hosttools.MissingHostTools, SpecError)
    text = str(exc) if isinstance(exc, expected) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def _outcome(run: KernelRun, took_s: float) -> str:
    """The done milestone: how the kernel ended and how long it took, no verdicts."""
    guest = run.guest
    status = guest.get("status")
    if status == INTERRUPTED:
        return f"interrupted after {took_s:.1f} s"
    if guest.get("failed_to"):
        return f"{guest['failed_to']} ({took_s:.1f} s; the reason is in the table)"
    if status != "ok":
        return f"guest {status} after {took_s:.1f} s (the reason is in the table)"
    boot, accel = guest.get("boot_s"), guest.get("accel")
    if accel == "host":
        return f"finished in {took_s:.1f} s (on the host)"
    return f"finished in {took_s:.1f} s " + (
        f"(boot {boot:.1f} s, {accel})" if boot is not None else f"({accel})"
    )


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
    if outcome.boot_panics:
        guest["boot_panics"] = outcome.boot_panics
    run = KernelRun(spec, release, package_version, guest=guest)
    report, problem = _read_report(outcome)
    if report is not None:
        run.kernel, run.summary, run.results = report
    if outcome.status != "ok" or problem:
        verdict = "hang" if outcome.status == "hang" else "error"
        # the cause (qemu's message, a panic, a full share) first, then what it left missing
        reason = outcome.detail or problem or outcome.status
        if problem and outcome.detail and outcome.status != INTERRUPTED:
            reason = f"{outcome.detail}; {problem}"
        guest["console_tail"] = _tail(outcome.console_tail)
        guest["stderr_tail"] = _tail(outcome.stderr)
        row = guest_row(verdict, reason, guest)
        if outcome.status == INTERRUPTED:
            row = replace(row, key="guest interrupted")
            if CHILDREN.stop_signal is not None:
                guest["signal"] = signal_name(CHILDREN.stop_signal)
        run.results.append(row)
    return run


GuestReport = tuple[dict[str, Any], dict[str, Any], list[Result]]  # kernel, summary, results


def _read_report(outcome: GuestResult) -> tuple[GuestReport | None, str]:
    """The guest's report and what is wrong with it ("" when nothing is)."""
    data = outcome.files.get(REPORT_NAME)
    if data is None:
        last = outcome.stderr.strip().splitlines()[-1:] if outcome.stderr.strip() else []
        said = f": {last[0]}" if last else ""
        return None, (
            f"no {REPORT_NAME} from uffdharness run (exit code {outcome.exit_code}){said}"
        )
    try:
        report = parse_report(data)
    except reportschema.ReportError as exc:
        return None, str(exc)
    if outcome.exit_code not in EXIT_STATUSES:
        return report, f"uffdharness run exited {outcome.exit_code}"
    return report, ""


def parse_report(data: bytes) -> GuestReport:
    """``uffdharness run --json`` output, checked; ReportError names what is wrong."""
    document = reportschema.decode(data, REPORT_NAME)
    if not isinstance(document, dict):
        raise reportschema.ReportError(
            f"{REPORT_NAME} holds {type(document).__name__}, not an object"
        )
    where = REPORT_NAME
    kernel = reportschema.kernel_section(document.get("kernel", {}), f"{where}: kernel")
    summary = document.get("summary", {})
    if not isinstance(summary, dict):
        raise reportschema.ReportError(f"{where}: summary is not an object")
    results = reportschema.results(document.get("results", []), f"{where}: results")
    for index, result in enumerate(results):
        if result.id == GUEST_ROW_ID:
            raise reportschema.ReportError(
                f"{where}: results[{index}].id: {GUEST_ROW_ID!r} is the matrix's own row"
            )
    return kernel, summary, results


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


def unfinished_run(
    spec: str, failed_to: str, detail: str, release: str = "", named: bool = True
) -> KernelRun:
    """An error row for a kernel that never ran its job: ``failed_to`` (PREPARE_FAILED,
    RUN_FAILED) begins the reason unless ``detail`` says it well enough (``named=False``)."""
    run = failed_run(spec, "error", f"{failed_to}: {detail}" if named else detail, release)
    run.guest["failed_to"] = failed_to
    return run


def interrupted_run(spec: str, signum: int, took_s: float) -> KernelRun:
    """The row of a kernel a stop request cut short before it finished."""
    detail = f"interrupted by {signal_name(signum)} after {took_s:.1f} s, before it finished"
    run = failed_run(spec, "error", detail)
    run.guest.update(status=INTERRUPTED, signal=signal_name(signum))
    run.results[0] = replace(run.results[0], key="guest interrupted")
    return run


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
