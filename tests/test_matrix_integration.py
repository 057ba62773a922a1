"""Boot a real Debian kernel in qemu and run the host's python in it.

Skipped unless qemu and a static busybox are installed and a Debian kernel is already in the
cache; UFFDHARNESS_MATRIX_SMOKE=1 downloads one (UFFDHARNESS_MATRIX_KERNEL, default
debian:6.1) instead of skipping.
"""

import json
import os
import sys
from pathlib import Path

import pytest

from uffdharness.matrix import guest, hosttools, kernels, kvmprobe
from uffdharness.matrix.cachedir import cache_root

UFFD_CHECK = r"""
import ctypes, fcntl, json, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fd = libc.syscall(323, 0o2000000 | 0o4000)  # userfaultfd(O_CLOEXEC | O_NONBLOCK)
report = {"release": os.uname().release, "fd": fd}
if fd >= 0:
    api = bytearray(struct.pack("QQQ", 0xAA, 0, 0))  # struct uffdio_api {api, features, ioctls}
    fcntl.ioctl(fd, (3 << 30) | (24 << 16) | (0xAA << 8) | 0x3F, api)  # UFFDIO_API
    report["api"], report["features"], report["ioctls"] = struct.unpack("QQQ", api)
with open(os.path.join(os.environ["UFFDHARNESS_RESULTS"], "uffd.json"), "w") as f:
    json.dump(report, f)
print(report["release"])
"""


def _kernel() -> kernels.KernelImage:
    problems = hosttools.check(hosttools.BOOT_TOOLS)
    if problems:
        pytest.skip(str(hosttools.MissingHostTools(problems)))
    if os.environ.get("UFFDHARNESS_MATRIX_SMOKE") == "1":
        hosttools.require()
        return kernels.resolve(os.environ.get("UFFDHARNESS_MATRIX_KERNEL", "debian:6.1"))
    cached = kernels.cached_kernels()
    if not cached:
        pytest.skip(
            f"no Debian kernel cached in {cache_root()}; "
            "set UFFDHARNESS_MATRIX_SMOKE=1 to download debian:6.1"
        )
    return cached[0]


@pytest.mark.timeout(300)
def test_host_python_runs_userfaultfd_in_guest():
    python = str(Path(sys.executable).resolve())
    if python.startswith("/tmp/"):
        pytest.skip(f"{python} lives under /tmp, which the guest replaces with a tmpfs")
    kernel = _kernel()
    config = guest.GuestConfig(accel=kvmprobe.default_accel(kernel))
    result = guest.run_in_guest(kernel, [python, "-c", UFFD_CHECK], timeout=180, config=config)
    assert result.status == "ok", f"{result.detail}\n{result.console_tail}"
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == kernel.release
    report = json.loads(result.files["uffd.json"])
    assert report["release"] == kernel.release
    assert report["fd"] >= 0 and report["api"] == 0xAA and report["features"] > 0
    assert result.boot_s is not None and result.boot_s < result.total_s
