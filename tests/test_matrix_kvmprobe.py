"""``python -m uffdharness.matrix.kvmprobe SPEC``: the accelerator a matrix run will use,
printed before it (the CI workflow chooses its timeouts by it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from uffdharness.matrix import hosttools, kernels, kvmprobe


def _probe_cli(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "uffdharness.matrix.kvmprobe", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )


def _cached_kernel() -> kernels.KernelImage:
    problems = hosttools.check(hosttools.BOOT_TOOLS)
    if problems:
        pytest.skip(str(hosttools.MissingHostTools(problems)))
    cached = [image for image in kernels.cached_kernels() if image.package_version]
    if not cached:
        pytest.skip("no Debian kernel cached (uffdharness matrix --kernel debian:6.1 gets one)")
    return cached[-1]


def test_host_needs_no_qemu():
    done = _probe_cli("host")
    assert (done.returncode, done.stdout) == (0, "host\n"), done.stderr
    assert "without qemu" in done.stderr


def test_a_bad_spec_is_exit_2():
    done = _probe_cli("fedora:41")
    assert done.returncode == 2 and done.stdout == ""
    assert "unknown kernel spec 'fedora:41'" in done.stderr


def test_the_environment_forces_tcg_without_a_boot():
    image = _cached_kernel()
    done = _probe_cli(f"debian:{image.package_version}", UFFDHARNESS_ACCEL="tcg")
    assert (done.returncode, done.stdout) == (0, "tcg\n"), done.stderr
    assert "forced by UFFDHARNESS_ACCEL" in done.stderr


@pytest.mark.timeout(120)
def test_prints_the_verdict_the_matrix_reads():
    """A real probe boot (or its cached verdict): what it prints is what default_accel, and
    so the matrix run, chooses."""
    image = _cached_kernel()
    env = {key: value for key, value in os.environ.items() if key != "UFFDHARNESS_ACCEL"}
    done = subprocess.run(
        [sys.executable, "-m", "uffdharness.matrix.kvmprobe", f"debian:{image.package_version}"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    verdict = kvmprobe.cached_verdict()
    assert verdict is not None or not os.access("/dev/kvm", os.R_OK | os.W_OK)
    works = bool(verdict and verdict["works"])
    assert done.stdout == ("kvm\n" if works else "tcg\n")


@pytest.mark.parametrize(("works", "accel"), [(True, "kvm"), (False, "tcg")])
def test_a_probe_that_booted_is_kvm(monkeypatch, capsys, works, accel):
    image = kernels.KernelImage(
        "debian:6.1", "6.1.0-1-amd64", Path("/nonexistent/vmlinuz"), None, None, "6.1.1-1", None
    )
    monkeypatch.delenv("UFFDHARNESS_ACCEL", raising=False)
    monkeypatch.setattr(kvmprobe, "resolve", lambda spec: image)
    detail = "" if works else "qemu was killed: failed to set MSR 0x10a"
    monkeypatch.setattr(kvmprobe, "probe", lambda kernel: {"works": works, "detail": detail})
    assert kvmprobe.main(["debian:6.1"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{accel}\n"
    why = detail or "a probe boot of 6.1.0-1-amd64 under KVM"
    assert err == f"kvmprobe: debian:6.1: {accel} ({why})\n"
