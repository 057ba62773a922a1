"""The guest runner's host side, offline: job script, qemu command line, verdicts from a
stand-in for qemu, and the `host` kernel."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from uffdharness.matrix import guest, initramfs
from uffdharness.matrix.kernels import KernelImage

KERNEL = KernelImage(
    "debian:6.1",
    "6.1.0-56-amd64",
    Path("/k/bzImage"),
    Path("/k/vmlinux"),
    Path("/k/lib/modules/6.1.0-56-amd64"),
    "6.1.192-2",
    Path("/k"),
)


def test_job_script_quotes_argv_and_env(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(initramfs, "JOB_DIR", str(tmp_path))
    argv = ["printf", "%s|", "a b", "it's", "$HOME", ""]
    env = {"HOME": str(tmp_path / "home"), "ODD": 'x\'y "z"'}
    script = guest.job_script(argv + ["$ODD"], env, cwd=str(tmp_path))
    subprocess.run(["sh", "-c", script], check=True)
    assert (tmp_path / "stdout").read_text() == "a b|it's|$HOME||$ODD|"
    assert (tmp_path / "home").is_dir()


def test_job_script_exits_125_on_missing_cwd(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(initramfs, "JOB_DIR", str(tmp_path))
    script = guest.job_script(["true"], {}, cwd=str(tmp_path / "absent"))
    assert subprocess.run(["sh", "-c", script], stderr=subprocess.DEVNULL).returncode == 125


def test_guest_environment_makes_home_writable_and_keeps_path(monkeypatch):
    monkeypatch.setenv("PATH", "/opt/venv/bin:/usr/bin")
    monkeypatch.setenv("VIRTUAL_ENV", "/opt/venv")
    env = guest.guest_environment({"EXTRA": "1", "HOME": "/tmp/elsewhere"})
    assert env["PATH"] == "/opt/venv/bin:/usr/bin" and env["VIRTUAL_ENV"] == "/opt/venv"
    assert env["HOME"] == "/tmp/elsewhere" and env["EXTRA"] == "1"
    assert env["UFFDHARNESS_RESULTS"].startswith(initramfs.JOB_DIR)


def test_qemu_argv(tmp_path: Path):
    argv = guest.qemu_argv(KERNEL, Path("/c/initrd.cpio"), tmp_path, guest.GuestConfig(accel="tcg"))
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert "-kernel /k/vmlinux" in joined and "-initrd /c/initrd.cpio" in joined
    assert "-accel tcg,thread=multi -cpu max" in joined and "-no-reboot" in argv
    assert f"path=/,mount_tag={initramfs.ROOT_TAG}" in joined and "readonly=on" in joined
    assert f"path={tmp_path},mount_tag={initramfs.RESULTS_TAG}" in joined
    cmdline = argv[argv.index("-append") + 1].split()
    assert "console=ttyS0" in cmdline and "panic=-1" in cmdline
    bz = guest.qemu_argv(
        KERNEL,
        Path("/i"),
        tmp_path,
        guest.GuestConfig(accel="kvm", prefer_vmlinux=False, memory_mb=512),
    )
    assert "/k/bzImage" in bz and "kvm" in bz and bz[bz.index("-m") + 1] == "512"


def _fake_qemu(share: Path, body: str) -> list[str]:
    return ["sh", "-c", body.replace("SHARE", shlex.quote(str(share)))]


def test_boot_ok_collects_exit_code_output_files_and_boot_time(tmp_path: Path):
    (tmp_path / guest.RESULTS_SUBDIR).mkdir()
    body = (
        f"echo booting; sleep 0.2; echo '{initramfs.START_MARKER} 1.0 1.0'; "
        "echo hi > SHARE/stdout; echo '{}' > SHARE/out/r.json; echo 3 > SHARE/exit_code; "
        f"echo '{initramfs.END_MARKER} rc=3'"
    )
    result = guest._boot(_fake_qemu(tmp_path, body), tmp_path, 10, "tcg")
    assert (result.status, result.exit_code, result.stdout) == ("ok", 3, "hi\n")
    assert result.files == {"r.json": b"{}\n"}
    assert result.boot_s is not None and 0.15 < result.boot_s < result.total_s
    assert "booting" in result.console_tail


def test_boot_panic_is_error_with_console_tail(tmp_path: Path):
    (tmp_path / guest.RESULTS_SUBDIR).mkdir()
    body = "echo '[ 1.0] Kernel panic - not syncing: VFS'; echo '[ 1.1] ---[ end ]---'; exit 0"
    result = guest._boot(_fake_qemu(tmp_path, body), tmp_path, 10, "tcg")
    assert result.status == "error" and result.exit_code is None
    assert "Kernel panic - not syncing: VFS" in result.detail
    assert "end ]---" in result.console_tail


def test_boot_hang_is_killed(tmp_path: Path):
    (tmp_path / guest.RESULTS_SUBDIR).mkdir()
    body = f"echo '{initramfs.START_MARKER} 1 1'; exec sleep 30"
    result = guest._boot(_fake_qemu(tmp_path, body), tmp_path, 1.0, "tcg")
    assert result.status == "hang" and result.total_s < 10
    assert "killed after" in result.detail and result.boot_s is not None


def test_host_kernel_runs_directly():
    host = KernelImage("host", "x", None, None, None, None, None)
    code = (
        "import os,pathlib; pathlib.Path(os.environ['UFFDHARNESS_RESULTS'], 'a')"
        ".write_text('b'); print('out')"
    )
    result = guest.run_in_guest(host, [sys.executable, "-c", code], 30)
    assert (result.status, result.exit_code, result.stdout, result.accel) == (
        "ok",
        0,
        "out\n",
        "host",
    )
    assert result.files == {"a": b"b"}


def test_host_kernel_timeout_is_hang():
    result = guest.run_on_host([sys.executable, "-c", "import time; time.sleep(5)"], 0.5)
    assert result.status == "hang"


def test_boot_image_preference():
    assert KERNEL.boot_image() == Path("/k/vmlinux")
    assert KERNEL.boot_image(prefer_vmlinux=False) == Path("/k/bzImage")
    with pytest.raises(ValueError):
        KernelImage("host", "x", None, None, None, None, None).boot_image()


def test_qemu_refusing_to_start_is_an_error_naming_qemus_own_message(tmp_path: Path):
    # what qemu 7.2 prints for `-m 1` with a 3 MB initramfs, then exits 1
    (tmp_path / guest.RESULTS_SUBDIR).mkdir()
    said = "qemu: initrd is too large, cannot support.(max: 884735, need 2996748)"
    result = guest._boot(_fake_qemu(tmp_path, f"echo '{said}' >&2; exit 1"), tmp_path, 10, "tcg")
    assert result.status == "error"
    assert result.detail == f"qemu exited 1: {said}"
    option = "qemu-system-x86_64: -m 0: memory size must be greater than zero"
    result = guest._boot(_fake_qemu(tmp_path, f"echo '{option}' >&2; exit 1"), tmp_path, 10, "tcg")
    assert result.detail == f"qemu exited 1: {option}"


def test_a_guest_without_an_exit_code_and_no_cause_says_how_qemu_ended(tmp_path: Path):
    (tmp_path / guest.RESULTS_SUBDIR).mkdir()
    result = guest._boot(_fake_qemu(tmp_path, "echo '[ 0.1] booting'; exit 0"), tmp_path, 10, "tcg")
    assert result.detail == "qemu exited 0 before the job reported an exit code"
    killed = guest._boot(_fake_qemu(tmp_path, "kill -9 $$"), tmp_path, 10, "tcg")
    assert killed.detail == "qemu was killed before the job reported an exit code"
