"""Time guests: boot-to-first-command and total, one kernel after another or N at a time.

    python -m uffdharness.matrix.timing [--parallel N] [--runs R] SPEC...

Each guest runs the host's python twice (print the release; open a userfaultfd and ask
UFFDIO_API for its features), which is what a scenario run costs at the least.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .guest import GuestConfig, GuestResult, cpus_per_guest, run_in_guest
from .kernels import KernelImage, resolve

FEATURES_PROGRAM = (
    "import ctypes, fcntl, struct\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.syscall.restype = ctypes.c_long\n"
    "fd = libc.syscall(323, 0o2000000 | 0o4000)  # userfaultfd(O_CLOEXEC | O_NONBLOCK)\n"
    "api = bytearray(struct.pack('QQQ', 0xAA, 0, 0))\n"
    "fcntl.ioctl(fd, (3 << 30) | (24 << 16) | (0xAA << 8) | 0x3F, api)  # UFFDIO_API\n"
    "print('features', hex(struct.unpack('QQQ', api)[1]))\n"
)


def probe_argv(python: str | None = None) -> list[str]:
    python = python or str(Path(sys.executable).resolve())
    release = f'{python} -c "import os; print(os.uname().release)"'
    return ["/bin/sh", "-c", f'{release} && {python} -c "$0"', FEATURES_PROGRAM]


def time_guests(
    kernel: KernelImage, runs: int, parallel: int, timeout: float = 300
) -> tuple[list[GuestResult], float]:
    config = GuestConfig(cpus=cpus_per_guest(parallel))
    started = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        results = list(
            pool.map(
                lambda _: run_in_guest(kernel, probe_argv(), timeout, config=config), range(runs)
            )
        )
    return results, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument(
        "--runs", type=int, default=0, help="guests per kernel (default: --parallel)"
    )
    args = parser.parse_args(argv)
    failed = False
    for spec in args.specs:
        kernel = resolve(spec)
        results, wall = time_guests(kernel, args.runs or args.parallel, args.parallel)
        for result in results:
            failed |= result.status != "ok" or result.exit_code != 0
            boot = f"{result.boot_s:.1f}" if result.boot_s is not None else "-"
            print(
                f"{spec:16} {kernel.release:24} {result.status:5} boot {boot:>5} s  "
                f"total {result.total_s:5.1f} s  {result.accel}  "
                f"{' | '.join(result.stdout.split(chr(10))).strip(' |')}"
            )
            if result.status != "ok":
                print(result.detail, result.console_tail[-1000:], sep="\n")
        print(f"{spec:16} {len(results)} guest(s), {args.parallel} at a time: wall {wall:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
