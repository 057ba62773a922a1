"""Fault-handling throughput of the native, thread and process engines beside a plain C loop.

Usage: python bench/bench_faults.py [--quick] [--json] [--reps N] [--pages N]
       [--huge-pages N] [--workloads anon,shmem,hugetlb,wp]

A thin runner for ``uffdharness bench`` (the code lives in uffdharness/benchmark.py so the
installed command works). Exit status: 0 all targets met, 1 a target missed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uffdharness.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
