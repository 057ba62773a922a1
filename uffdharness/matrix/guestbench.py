"""``uffdharness bench --kernel SPEC``: the benchmark inside one guest kernel.

A feature the host lacks (7.3's read-write protection on a 6.18 host) is measured beside
the workloads it is compared with in the same guest, so the ratios stay within one run.
The guest runs ``uffdharness bench`` itself; its report comes back on the guest's stdout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from . import kernels, kvmprobe
from .guest import GuestConfig, GuestResult, run_in_guest
from .runner import guest_python, precompile

__all__ = ["bench_in_guest"]


def bench_in_guest(
    spec: str,
    bench_args: Sequence[str],
    timeout: float,
    say: Callable[[str], None] = lambda _text: None,
) -> GuestResult:
    """Boot ``spec`` and run ``uffdharness bench *bench_args`` in it, both guest vCPUs
    given to it (the benchmark pins a toucher and a handler to one CPU and to two)."""
    python = guest_python()
    precompile()
    image = kernels.resolve(spec, log=say)
    config = GuestConfig(cpus=2)
    if not image.is_host:
        config = replace(config, accel=kvmprobe.default_accel(image))
        say(f"booting {image.release} in qemu ({config.accel}, 2 vCPU) for the benchmark")
    return run_in_guest(
        image, [python, "-m", "uffdharness", "bench", *bench_args], timeout, config=config
    )
