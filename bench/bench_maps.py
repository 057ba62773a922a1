"""Benchmark uffdharness.maps against psutil on a process with many VMAs.

Usage: python bench/bench_maps.py [--vmas N] [--repeat R] [--json]

This process maps N pages and mprotects every other one read-only, which leaves N VMAs
that cannot merge, and writes to some of the writable ones so the counters differ between
VMAs. It then times each reader R times, round-robin so drift hits all alike, as wall
time and as process CPU time (user + system, which leaves out waiting for a CPU on a
busy machine). The ratios are taken from the minimum wall times.

The target is read_smaps at least 3x faster than psutil's memory_maps(grouped=False),
which parses the same /proc/PID/smaps. Both pay for the kernel producing the text (timed
alone as "read smaps text only"), so the ratio above that floor is printed as well.
Exit status: 0 target met, 1 missed, 2 cannot run.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import mmap
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uffdharness.maps import PAGE_SIZE, parse_smaps, read_maps, read_smaps  # noqa: E402

TARGET_RATIO = 3.0


class AlternatingMapping:
    """An anonymous mapping of ``pages`` pages, every other page PROT_READ, so each page
    is its own VMA (neighbours with different protections never merge). Every
    ``touch_every``-th page is written first, so Rss/Pss/Anonymous vary between VMAs."""

    def __init__(self, pages: int, touch_every: int = 3) -> None:
        self._map = mmap.mmap(-1, pages * PAGE_SIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._buffer = ctypes.c_char.from_buffer(self._map)
        base = ctypes.addressof(self._buffer)
        for page in range(0, pages, touch_every):
            self._map[page * PAGE_SIZE] = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for page in range(0, pages, 2):
            if libc.mprotect(base + page * PAGE_SIZE, PAGE_SIZE, mmap.PROT_READ) != 0:
                err = ctypes.get_errno()
                self.close()
                raise OSError(err, f"mprotect page {page}: {os.strerror(err)}")

    def close(self) -> None:
        del self._buffer
        self._map.close()

    def __enter__(self) -> AlternatingMapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def time_round_robin(
    methods: dict[str, Callable[[], object]], repeat: int
) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds of each run of each method; the result is dropped inside the
    timed region, so freeing it counts too."""
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in methods}
    for method in methods.values():  # untimed warm-up: imports, first-touch of the heap
        method()
    for _ in range(repeat):
        for name, method in methods.items():
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            method()
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vmas", type=int, default=20000, help="VMAs to create (default 20000)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per method")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    try:
        import psutil
    except ImportError:
        print(
            "psutil is not installed (pip install psutil); nothing to compare against",
            file=sys.stderr,
        )
        return 2

    max_map_count = int(Path("/proc/sys/vm/max_map_count").read_text())
    existing = len(read_maps())
    if existing + args.vmas + 100 > max_map_count:
        print(
            f"vm.max_map_count={max_map_count} is too small for {args.vmas} more VMAs "
            f"(process already has {existing})",
            file=sys.stderr,
        )
        return 2

    process = psutil.Process(os.getpid())
    with AlternatingMapping(args.vmas):
        smaps_text = Path("/proc/self/smaps").read_bytes()
        methods: dict[str, Callable[[], object]] = {
            "read_maps": read_maps,
            "read_smaps": read_smaps,
            "parse_smaps (text read once)": lambda: parse_smaps(smaps_text),
            "read smaps text only": lambda: Path("/proc/self/smaps").read_bytes(),
            "psutil memory_maps": lambda: process.memory_maps(grouped=False),
        }
        vma_count = len(read_smaps())
        psutil_count = len(process.memory_maps(grouped=False))
        times = time_round_robin(methods, args.repeat)

    summary = {
        name: {
            "min_s": min(runs["wall"]),
            "median_s": statistics.median(runs["wall"]),
            "cpu_min_s": min(runs["cpu"]),
        }
        for name, runs in times.items()
    }
    psutil_min = summary["psutil memory_maps"]["min_s"]
    smaps_ratio = psutil_min / summary["read_smaps"]["min_s"]
    maps_ratio = psutil_min / summary["read_maps"]["min_s"]
    smaps_cpu_ratio = (
        summary["psutil memory_maps"]["cpu_min_s"] / summary["read_smaps"]["cpu_min_s"]
    )
    floor = summary["read smaps text only"]["min_s"]
    above_floor_ratio = (psutil_min - floor) / max(summary["read_smaps"]["min_s"] - floor, 1e-9)
    met = smaps_ratio >= TARGET_RATIO
    result = {
        "vmas": vma_count,
        "psutil_vmas": psutil_count,
        "repeat": args.repeat,
        "times": summary,
        "ratio_psutil_over_read_smaps": smaps_ratio,
        "ratio_psutil_over_read_maps": maps_ratio,
        "cpu_ratio_psutil_over_read_smaps": smaps_cpu_ratio,
        "ratio_above_kernel_floor": above_floor_ratio,
        "target_ratio": TARGET_RATIO,
        "target_met": met,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"VMAs: {vma_count} (psutil saw {psutil_count}), {args.repeat} runs each")
        for name, stats in summary.items():
            print(
                f"  {name:30s} min {stats['min_s'] * 1e3:7.1f} ms"
                f"   median {stats['median_s'] * 1e3:7.1f} ms"
                f"   cpu min {stats['cpu_min_s'] * 1e3:7.1f} ms"
            )
        print(
            f"psutil / read_smaps: {smaps_ratio:.2f}x (target >= {TARGET_RATIO:.0f}x;"
            f" {smaps_cpu_ratio:.2f}x in CPU time)"
        )
        print(
            f"  above the {floor * 1e3:.1f} ms the kernel takes to produce the text:"
            f" {above_floor_ratio:.2f}x"
        )
        print(f"psutil / read_maps:  {maps_ratio:.2f}x (maps has no counters; for scale)")
        print("target met" if met else "target NOT met")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
