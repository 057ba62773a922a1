"""Decide once whether KVM can run ordinary kernels here, and remember the verdict.

/dev/kvm may exist yet be unusable for a full guest (on the development machine it is a
paravirtual module); only a probe boot that runs a command proves it works. The matrix
runner asks default_accel() and hands the answer to guest.run_in_guest in GuestConfig.accel.

``python -m uffdharness.matrix.kvmprobe SPEC`` prints that answer for SPEC's kernel before a
matrix run (CI chooses its timeouts by it); the verdict it caches is the one the run reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import hosttools
from .cachedir import cache_root, locked, write_atomic
from .children import CHILDREN, Stopped
from .guest import GuestConfig, run_in_guest
from .kernels import KernelFetchError, KernelImage, resolve
from .kernelspec import SpecError

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


def main(argv: Sequence[str] | None = None) -> int:
    """Print ``kvm``, ``tcg`` or ``host`` (no qemu) for SPEC, and why on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m uffdharness.matrix.kvmprobe",
        description="Print the accelerator `uffdharness matrix --kernel SPEC` boots SPEC "
        "under: kvm when a probe boot under KVM ran a command (the verdict is cached for the "
        "run), tcg otherwise, host for the host kernel. UFFDHARNESS_ACCEL=kvm|tcg forces it. "
        "Exits 2 on a bad spec or missing host tools, 1 when the kernel cannot be had.",
    )
    parser.add_argument("spec", metavar="SPEC", help="a kernel spec, as for matrix --kernel")
    args = parser.parse_args(argv)
    from ..cli.matrix import stop_on_signals

    try:
        with stop_on_signals():
            image = resolve(args.spec)
            if image.is_host:
                accel, why = "host", "the host kernel runs without qemu"
            elif os.environ.get("UFFDHARNESS_ACCEL") in ("kvm", "tcg"):
                accel, why = default_accel(image), "forced by UFFDHARNESS_ACCEL"
            else:
                verdict = probe(image)
                accel = "kvm" if verdict["works"] else "tcg"
                why = verdict.get("detail") or f"a probe boot of {image.release} under KVM"
    except (SpecError, hosttools.MissingHostTools) as exc:
        sys.stderr.write(f"kvmprobe: {exc}\n")
        return 2
    except KernelFetchError as exc:
        sys.stderr.write(f"kvmprobe: {args.spec}: {exc}\n")
        return 1
    except Stopped as stop:
        sys.stderr.write(f"kvmprobe: {stop}\n")
        return 128 + stop.signum
    sys.stderr.write(f"kvmprobe: {args.spec}: {accel} ({why})\n")
    print(accel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
