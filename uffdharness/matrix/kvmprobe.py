"""Decide once whether KVM can run ordinary kernels here, and remember the verdict.

/dev/kvm may exist yet be unusable for a full guest (on the development machine it is a
paravirtual module); only a probe boot that runs a command proves it works. The matrix
runner asks default_accel() and hands the answer to guest.run_in_guest in GuestConfig.accel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import hosttools
from .cachedir import cache_root, locked, write_atomic
from .children import CHILDREN
from .guest import GuestConfig, run_in_guest
from .kernels import KernelImage

PROBE_TIMEOUT_S = 30.0  # a TCG boot takes 3-5 s; a working KVM is faster still


def _probe_key() -> str:
    qemu = CHILDREN.run(["qemu-system-x86_64", "--version"]).stdout.splitlines()[:1]
    return f"{os.uname().release}|{qemu[0] if qemu else '?'}"


def _verdict_file() -> Path:
    return cache_root() / "kvm-probe.json"


def cached_verdict() -> dict | None:
    try:
        verdict = json.loads(_verdict_file().read_text())
    except (OSError, ValueError):
        return None
    return verdict if verdict.get("key") == _probe_key() else None


def probe(kernel: KernelImage) -> dict:
    """Boot `kernel` under KVM and run /bin/true; the verdict dict is cached on disk.

    MissingHostTools when qemu or a static busybox is missing: the verdict is keyed by
    qemu's version, and the probe is a guest boot.
    """
    hosttools.require(hosttools.BOOT_TOOLS)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return {"key": _probe_key(), "works": False, "detail": "/dev/kvm not accessible"}
    with locked(cache_root() / "locks" / "kvm-probe.lock"):
        verdict = cached_verdict()
        if verdict is not None:
            return verdict
        result = run_in_guest(
            kernel, ["/bin/true"], PROBE_TIMEOUT_S, config=GuestConfig(accel="kvm")
        )
        if result.status == "interrupted":
            CHILDREN.check()  # a probe cut short proves nothing: raise Stopped, cache nothing
        works = result.status == "ok" and result.exit_code == 0
        verdict = {
            "key": _probe_key(),
            "works": works,
            "kernel": kernel.release,
            "status": result.status,
            "total_s": round(result.total_s, 2),
            "detail": result.detail or "",
            "console_tail": result.console_tail[-2000:],
        }
        write_atomic(_verdict_file(), json.dumps(verdict, indent=2).encode())
        return verdict


def default_accel(kernel: KernelImage) -> str:
    """ "kvm" if the (cached) probe proved KVM boots a kernel here, else "tcg"."""
    forced = os.environ.get("UFFDHARNESS_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    return "kvm" if probe(kernel)["works"] else "tcg"
