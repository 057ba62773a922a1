"""Boot a kernel in qemu, run one command from the host's root file system, collect results.

The guest sees the host's / read-only (virtio-9p), a tmpfs /tmp, and a writable results
share at initramfs.JOB_DIR; the job writes files into $UFFDHARNESS_RESULTS, and they come
back in GuestResult.files. A guest that panics or whose init fails is `error`; one that
outlives `timeout` is killed and is `hang`; one whose run was asked to stop (children.stop,
on a signal) is killed and is `interrupted`. All carry the console tail, and the detail
names the cause: qemu's own error line, a panic, the init's complaint, or a full results
share (ENOSPC).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import errno_name
from ..interrupts import signal_name
from . import hosttools, initramfs
from .children import CHILDREN
from .kernels import KernelImage

Status = Literal["ok", "error", "hang", "interrupted"]
QEMU = "qemu-system-x86_64"
CONSOLE_TAIL_LINES = 60
# what qemu itself prints before it gives up: "qemu-system-x86_64: -m 1: ...",
# "qemu: initrd is too large, cannot support.(max: 884735, need 2996748)"
QEMU_MESSAGE = re.compile(r"qemu(-system-[\w-]+)?: ")
# Less free space than this on the results share after a guest that reported nothing means
# the share filled up: the guest's writes failed with ENOSPC.
SHARE_FULL_BYTES = 64 * 1024
RESULTS_SUBDIR = "out"
# quiet + loglevel keep the serial console (slow under TCG) short; panic=-1 with
# -no-reboot turns a kernel panic into a qemu exit instead of a hang.
BASE_CMDLINE = (
    "console=ttyS0",
    "panic=-1",
    "quiet",
    "loglevel=4",
    "rdinit=/init",
    "i8042.noaux",
    "i8042.nokbd",
    "tsc=reliable",
    "no_timer_check",
)
# Passed from the host when set, so a venv or pyenv python behaves the same in the guest.
PASSTHROUGH_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYENV_ROOT",
    "PYENV_VERSION",
)


@dataclass
class GuestResult:
    status: Status
    exit_code: int | None
    stdout: str
    stderr: str
    console_tail: str
    files: dict[str, bytes] = field(default_factory=dict)
    boot_s: float | None = None  # qemu start to the job's start (host wall clock)
    total_s: float = 0.0
    accel: str = "tcg"
    detail: str = ""  # why the status is not ok
    # Panics before the job started, each retried once more (see BOOT_PANIC_RETRIES).
    boot_panics: list[str] = field(default_factory=list)


# A kernel that panics before the job starts is booted again, at most this often: under TCG
# Debian's 7.3.4 panicked once in about ten boots on this machine ("Oops: int3" in
# sched_clock_cpu while text_poke patched a static key). A panic that repeats is the verdict;
# one that does not is reported beside the results (``boot_panics``), never hidden.
BOOT_PANIC_RETRIES = 1


def _panicked_before_job(result: GuestResult) -> str | None:
    if result.status != "error" or result.boot_s is not None:
        return None
    for line in result.console_tail.splitlines():
        if "Kernel panic" in line:
            return line.strip()
    return None


def cpus_per_guest(parallel: int = 1) -> int:
    """vCPUs per guest so that `parallel` TCG guests do not oversubscribe the host.

    Measured (2 host cores, 6.12): two guests of 2 vCPUs each ran twice as slowly as two of
    1 vCPU; one guest alone is as fast with 1 vCPU as with 2.
    """
    return max(1, min(2, (os.cpu_count() or 1) // max(1, parallel)))


@dataclass(frozen=True)
class GuestConfig:
    # hugetlb-1g reserves a 1 GiB page at run time (alloc_contig_pages): it needs a free,
    # aligned GiB beside the run's own memory. RAM a TCG guest never touches costs the
    # host nothing.
    memory_mb: int = 3072
    cpus: int = field(default_factory=cpus_per_guest)
    # "tcg" or "kvm". The matrix runner passes kvmprobe.default_accel(kernel): /dev/kvm can
    # exist yet fail to boot a full guest, so only a probe boot decides for kvm.
    accel: str = "tcg"
    prefer_vmlinux: bool = True
    extra_cmdline: tuple[str, ...] = ()


def guest_environment(env: dict[str, str] | None) -> dict[str, str]:
    result = {key: os.environ[key] for key in PASSTHROUGH_ENV if key in os.environ}
    result.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    result.update(
        {
            "HOME": "/tmp/home",  # the host root is read-only; /tmp is the guest's tmpfs
            "TMPDIR": "/tmp",
            "PYTHONDONTWRITEBYTECODE": "1",
            "UFFDHARNESS_GUEST": "1",
            "UFFDHARNESS_RESULTS": f"{initramfs.JOB_DIR}/{RESULTS_SUBDIR}",
        }
    )
    result.update(env or {})
    return result


def job_script(argv: Sequence[str], env: dict[str, str], cwd: str) -> str:
    exports = "\n".join(f"export {key}={shlex.quote(value)}" for key, value in env.items())
    job_dir = initramfs.JOB_DIR
    return (
        f"{exports}\n"
        'mkdir -p "$HOME"\n'
        f"cd {shlex.quote(cwd)} || exit 125\n"
        f"exec {shlex.join(argv)} >{job_dir}/stdout 2>{job_dir}/stderr </dev/null\n"
    )


def qemu_argv(kernel: KernelImage, initrd: Path, share: Path, config: GuestConfig) -> list[str]:
    cmdline = " ".join((*BASE_CMDLINE, *config.extra_cmdline))
    accel_args = (
        ["-accel", "kvm", "-cpu", "host"]
        if config.accel == "kvm"
        else ["-accel", "tcg,thread=multi", "-cpu", "max"]
    )
    return [
        QEMU,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-machine",
        "pc",
        *accel_args,
        "-m",
        str(config.memory_mb),
        "-smp",
        str(config.cpus),
        "-chardev",
        "stdio,id=console,signal=off",
        "-serial",
        "chardev:console",
        "-kernel",
        str(kernel.boot_image(config.prefer_vmlinux)),
        "-initrd",
        str(initrd),
        "-append",
        cmdline,
        "-virtfs",
        f"local,path=/,mount_tag={initramfs.ROOT_TAG},security_model=none,"
        "readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={share},mount_tag={initramfs.RESULTS_TAG},security_model=none,multidevs=remap",
    ]


class _ConsoleReader(threading.Thread):
    """Collects the serial console and notes when the job-start marker went by."""

    def __init__(self, stream, started: float) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.started = started
        self.lines: list[str] = []
        self.job_started_at: float | None = None

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\r\n")
            if self.job_started_at is None and line.startswith(initramfs.START_MARKER):
                self.job_started_at = time.monotonic() - self.started
            self.lines.append(line)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _failure_detail(console: list[str], qemu_status: int | None) -> str:
    """Why a guest reported no exit code: the line that says so, and how qemu ended."""
    how = f"qemu exited {qemu_status}" if qemu_status is not None else "qemu was killed"
    for line in reversed(console):
        text = line.strip()
        if (
            QEMU_MESSAGE.match(text)
            or "Kernel panic" in text
            or text.startswith("uffdharness-init:")
        ):
            return f"{how}: {text}"
    return f"{how} before the job reported an exit code"


def share_full(share: Path) -> str:
    """Why the results share is (nearly) full, or "" when it is not. The guest's writes
    there (its report, its exit code) fail with ENOSPC, and come back as nothing at all."""
    try:
        stat = os.statvfs(share)
    except OSError:
        return ""
    free = stat.f_bavail * stat.f_frsize
    if free >= SHARE_FULL_BYTES:
        return ""
    return f"the results share {share} is full (ENOSPC): {free} bytes free"


def run_in_guest(
    kernel: KernelImage,
    argv: Sequence[str],
    timeout: float,
    env: dict[str, str] | None = None,
    *,
    cwd: str = "/",
    config: GuestConfig | None = None,
) -> GuestResult:
    """Boot `kernel` under `config.accel`, run `argv` in the host's root file system, and
    return what happened."""
    config = config or GuestConfig()
    if kernel.is_host:
        return run_on_host(argv, timeout, env, cwd=cwd)
    hosttools.require(hosttools.BOOT_TOOLS)
    initrd = initramfs.cached(kernel)
    CHILDREN.check()
    share = Path(tempfile.mkdtemp(prefix="uffdharness-guest-"))
    try:
        try:
            (share / RESULTS_SUBDIR).mkdir()
            (share / "job.sh").write_text(job_script(argv, guest_environment(env), cwd))
        except OSError as exc:
            return _unbootable(exc, share, config.accel)
        command = qemu_argv(kernel, initrd, share, config)
        panics: list[str] = []
        while True:
            result = _boot(command, share, timeout, config.accel)
            panic = _panicked_before_job(result)
            if panic is None or len(panics) >= BOOT_PANIC_RETRIES or CHILDREN.stopping:
                result.boot_panics = panics
                return result
            panics.append(panic)
    finally:
        _remove_share(share)


SHARE_REMOVAL_ATTEMPTS = 50


def _remove_share(share: Path) -> None:
    """Remove the results share, again while something still writes into it: a qemu
    being killed (or its 9p worker) can create a file after rmtree listed the directory,
    and rmtree then leaves it behind (ENOTEMPTY, ignored). Seen once under load, on
    SIGTERM during a boot."""
    for _attempt in range(SHARE_REMOVAL_ATTEMPTS):
        shutil.rmtree(share, ignore_errors=True)
        if not share.exists():
            return
        time.sleep(0.02)


def _unbootable(exc: OSError, share: Path, accel: str) -> GuestResult:
    """The results share could not be set up (a full /tmp: ENOSPC): an error, no boot."""
    name = errno_name(exc.errno) if exc.errno else type(exc).__name__
    where = f": {exc.filename}" if exc.filename else ""
    detail = f"cannot set up the results share {share}: {name} ({exc.strerror}){where}"
    return GuestResult("error", None, "", "", "", accel=accel, detail=detail)


def _boot(command: list[str], share: Path, timeout: float, accel: str) -> GuestResult:
    started = time.monotonic()
    hung = False
    with CHILDREN.started(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        reader = _ConsoleReader(proc.stdout, started)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            hung = True
            proc.kill()
            proc.wait()
        finally:
            reader.join(timeout=5)
            if proc.stdout:
                proc.stdout.close()
    total_s = time.monotonic() - started
    exit_text = _read_text(share / "exit_code").strip()
    files = {
        path.name: path.read_bytes()
        for path in sorted((share / RESULTS_SUBDIR).iterdir())
        if path.is_file()
    }
    result = GuestResult(
        status="ok",
        exit_code=int(exit_text) if exit_text.lstrip("-").isdigit() else None,
        stdout=_read_text(share / "stdout"),
        stderr=_read_text(share / "stderr"),
        console_tail="\n".join(reader.lines[-CONSOLE_TAIL_LINES:]),
        files=files,
        boot_s=reader.job_started_at,
        total_s=total_s,
        accel=accel,
    )
    if result.exit_code is not None:
        result.detail = share_full(share)  # the job ran, but its report may not have fit
        return result
    if CHILDREN.stop_signal is not None:
        result.status = "interrupted"
        result.detail = f"interrupted by {signal_name(CHILDREN.stop_signal)} after {total_s:.1f} s"
    elif hung:
        result.status = "hang"
        result.detail = f"killed after {timeout:.0f} s"
    else:
        result.status = "error"
        status = proc.returncode if proc.returncode >= 0 else None
        result.detail = share_full(share) or _failure_detail(reader.lines, status)
    return result


def run_on_host(
    argv: Sequence[str], timeout: float, env: dict[str, str] | None = None, *, cwd: str = "/"
) -> GuestResult:
    """The `host` kernel: run `argv` directly, with the same result shape and results dir."""
    started = time.monotonic()
    CHILDREN.check()
    with tempfile.TemporaryDirectory(prefix="uffdharness-host-") as results:
        full_env = dict(os.environ, UFFDHARNESS_RESULTS=results, **(env or {}))
        try:
            proc = CHILDREN.run(argv, cwd=cwd, env=full_env, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            return GuestResult(
                "hang",
                None,
                _as_text(exc.stdout),
                _as_text(exc.stderr),
                "",
                total_s=time.monotonic() - started,
                accel="host",
                detail=f"killed after {timeout:.0f} s",
            )
        files = {p.name: p.read_bytes() for p in sorted(Path(results).iterdir()) if p.is_file()}
        full = share_full(Path(results))
    return GuestResult(
        "ok",
        proc.returncode,
        proc.stdout,
        proc.stderr,
        "",
        files,
        0.0,
        time.monotonic() - started,
        "host",
        detail=full,
    )


def _as_text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""
