"""The kernel's own uffd-stress beside ``uffdharness stress``, same memory, size and bounces.

Usage: python bench/bench_stress.py [--memory KIND]... [--mib N] [--bounces B] [--reps R]
       [--source SPEC] [--engine ENGINE] [--timeout S]

uffd-stress (tools/testing/selftests/mm/uffd-stress.c) comes from the kernel source SPEC
names (default debian-src:7.3: Debian's linux-source-7.3, downloaded and unpacked once by
uffdharness.matrix.kbuild.debsource). Only uffd-stress is built, in a scratch directory:
the UAPI headers with ``make O=<scratch> headers`` (the source tree is only read, so it
still takes ``make O=`` kernel builds) and then one cc line over uffd-stress.c and the
helper files the selftests' Makefile links it with. The binary is cached per source
version under ~/.cache/uffdharness/selftests.

What is timed:
- uffd-stress: its whole process, exec to exit (allocating and initialising the two areas,
  every bounce, the teardown) -> "uffd-stress pages/s". Its "~loop" column runs from the
  moment its first "bounces:" line arrives (it flushes stdout at the start of each bounce)
  to its exit: about its bounce loop.
- uffdharness: the bounce loop as ``uffdharness stress --json`` reports it ("seconds",
  "pages_per_s") -> "loop", and the whole ``uffdharness stress`` process (Python start,
  imports, set-up, teardown) -> "wall", the fairest match for uffd-stress's own figure.

pages/s = pages in one area x bounces / seconds; each side's own page count is used. The
reps run interleaved (uffd-stress and uffdharness alternate which goes first) and the
medians are compared. hugetlb kinds get the hugepages uffd-stress asks for (2 x area pages
+ CPUs - 1) reserved for the whole run and given back on every exit path, and every free
hugepage faulted in once before the first rep (a VM backs a new one on its first touch).

Exit status: 0 the native engine met its target (loop pages/s >= uffd-stress pages/s) or
the comparison was skipped (no source package, no ``uffdharness stress``); 1 target
missed; 2 a run failed or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from uffdharness import hugepages, interrupts  # noqa: E402
from uffdharness import syscalls as sc  # noqa: E402

TARGET_RATIO = 1.0
DEFAULT_SOURCE = "debian-src:7.3"
# Bump when the build recipe changes, so a cached binary built the old way is rebuilt.
BUILD_RECIPE = 1

# uffdharness memory kind -> uffd-stress <test type>. uffd-stress's "shmem" maps a memfd
# shared, which is the harness's "memfd"; "shmem" (MAP_SHARED|MAP_ANONYMOUS) is shmem too.
# uffd-stress.c 7.3 parses "shmem-private" but its shmem_allocate_area() maps MAP_SHARED
# whatever map_shared says, so it runs the shared case.
STRESS_TYPES = {
    "anon": "anon",
    "shmem": "shmem",
    "memfd": "shmem",
    "memfd-private": "shmem-private",
    "hugetlb": "hugetlb",
    "hugetlb-private": "hugetlb-private",
}
HUGETLB_TYPES = ("hugetlb", "hugetlb-private")

# uffd-stress.c: the bits of the bounces still to run (it counts down from B-1 to 0)
# choose each bounce's mode.
BOUNCE_RANDOM = 1 << 0
BOUNCE_RACINGFAULTS = 1 << 1
BOUNCE_VERIFY = 1 << 2
BOUNCE_POLL = 1 << 3
MAX_PARALLEL = 32  # uffd-stress caps its per-CPU thread sets at 32

KSFT_SKIP = 4  # kselftest exit status for "cannot run here"

Log = Callable[[str], None]


class BenchError(RuntimeError):
    """A run or a build failed; the message says which and why."""


class Skipped(Exception):
    """The comparison cannot run here (no source package, no compiler); exit 0."""


# ---- uffd-stress's model (pure) ----------------------------------------------------------


def bounce_mode(remaining: int) -> str:
    """The mode uffd-stress prints for the bounce run while ``remaining`` bounces follow
    (" rnd racing ver read"), as uffd-stress.c 7.3 derives it from the bits."""
    return (
        (" rnd" if remaining & BOUNCE_RANDOM else "")
        + (" racing" if remaining & BOUNCE_RACINGFAULTS else "")
        + (" ver" if remaining & BOUNCE_VERIFY else "")
        + (" poll" if remaining & BOUNCE_POLL else " read")
    )


def poll_bounces(bounces: int) -> int:
    """How many of ``bounces`` bounces serve faults with poll(2) rather than read(2)."""
    return sum(1 for remaining in range(bounces) if remaining & BOUNCE_POLL)


def parallel_threads(cpus: int) -> int:
    """uffd-stress's nr_parallel: one locking, one uffd and one background thread each."""
    return min(cpus, MAX_PARALLEL)


def area_pages(mib: int, page_size: int, cpus: int) -> int:
    """uffd-stress's nr_pages: the area's pages rounded down to a multiple of nr_parallel."""
    parallel = parallel_threads(cpus)
    return (mib * 1024 * 1024 // page_size // parallel) * parallel


def hugepages_needed(mib: int, page_size: int, cpus: int) -> int:
    """Free hugepages uffd-stress asks for: src and dst areas, plus nr_parallel - 1 for
    racing reservations (uffd-stress.c main())."""
    return 2 * (mib * 1024 * 1024 // page_size) + parallel_threads(cpus) - 1


def pages_per_s(pages: int, seconds: float) -> float:
    if seconds <= 0:
        raise ValueError(f"a run cannot take {seconds} s")
    return pages / seconds


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass(frozen=True)
class StressOutput:
    """What uffd-stress printed (KTAP on stdout)."""

    nr_pages: int | None
    nr_pages_per_cpu: int | None
    modes: tuple[str, ...]  # per bounce, in order: " rnd racing ver read"
    missing_faults: tuple[int, ...]  # per bounce: pages the uffd threads resolved
    wp_faults: tuple[int, ...]
    passed: bool
    skip_reason: str | None


_NR_PAGES = re.compile(r"nr_pages: (\d+), nr_pages_per_cpu: (\d+)")
_BOUNCE = re.compile(r"bounces: (\d+), mode:([a-z ]*),")
_USERFAULTS = re.compile(r"userfaults:([^\n#]*)")
_SKIP = re.compile(r"# SKIP ?(.*)")


def _count(pattern: str, text: str) -> int:
    found = re.search(rf"(\d+) {pattern}", text)
    return int(found.group(1)) if found else 0


def parse_stress_output(text: str) -> StressOutput:
    pages = _NR_PAGES.search(text)
    faults = [m.group(1) for m in _USERFAULTS.finditer(text)]
    skip = _SKIP.search(text)
    return StressOutput(
        nr_pages=int(pages.group(1)) if pages else None,
        nr_pages_per_cpu=int(pages.group(2)) if pages else None,
        modes=tuple(m.group(2) for m in _BOUNCE.finditer(text)),
        missing_faults=tuple(_count("missing", f) for f in faults),
        wp_faults=tuple(_count("wp", f) for f in faults),
        passed=re.search(r"^ok \d+ uffd-stress", text, re.M) is not None,
        skip_reason=skip.group(1).strip() if skip else None,
    )


# ---- uffdharness stress's report (pure) ---------------------------------------------------


@dataclass(frozen=True)
class HarnessRun:
    pages: int  # pages moved over all bounces: pages_per_s x seconds
    seconds: float  # the bounce loop
    pages_per_s: float
    verdict: str


def harness_run(report: dict, memory: str, engine: str) -> HarnessRun:
    """The run of ``memory`` on ``engine`` in a ``uffdharness stress --json`` report."""
    runs = report.get("runs")
    if not isinstance(runs, list):
        raise ValueError('the report has no "runs" list')
    for run in runs:
        if run.get("memory") == memory and run.get("engine") == engine:
            seconds = float(run["seconds"])
            rate = float(run["pages_per_s"])
            return HarnessRun(round(rate * seconds), seconds, rate, str(run["verdict"]))
    raise ValueError(f"the report has no run of memory {memory!r} on engine {engine!r}")


# ---- building uffd-stress -------------------------------------------------------------------

# What a kernel tree has once headers or a config were made in it: such a tree refuses
# later `make O=` builds ("source tree is not clean"), so the build must not leave any.
UNCLEAN_MARKERS = (".config", "include/config", "include/generated", "usr/include/linux")


def unclean_markers(tree: Path) -> list[str]:
    return [marker for marker in UNCLEAN_MARKERS if (tree / marker).exists()]


LINK_TARGETS = ("$(TEST_GEN_PROGS)", "$(TEST_GEN_FILES)", "$(OUTPUT)/uffd-stress")


def link_sources(makefile: str) -> list[str]:
    """The .c files the mm selftests' Makefile links into uffd-stress besides
    uffd-stress.c: the prerequisites of its "$(TEST_GEN_FILES): ..." (every test, in
    whichever list uffd-stress is) and "$(OUTPUT)/uffd-stress: ..." lines."""
    sources: list[str] = []
    for line in makefile.splitlines():
        target, colon, prerequisites = line.partition(":")
        if not colon or target.strip() not in LINK_TARGETS:
            continue
        for word in prerequisites.split():
            if word.endswith(".c") and word not in sources:
                sources.append(word)
    return sources


def compile_command(
    cc: str, mm_dir: Path, headers: Path, sources: Sequence[str], output: Path
) -> list[str]:
    """One cc line: the selftests' flags (-Wall -O2 -U_FORTIFY_SOURCE, -lrt -lpthread -lm)
    with the tree's own UAPI headers first, so a new kernel's ioctls are defined."""
    return [
        cc,
        "-Wall",
        "-O2",
        "-U_FORTIFY_SOURCE",
        "-isystem",
        str(headers),
        "-isystem",
        str(mm_dir.parent.parent.parent / "include" / "uapi"),  # tools/include/uapi
        "-I",
        str(mm_dir.parent),  # kselftest.h
        *(str(mm_dir / name) for name in ("uffd-stress.c", *sources)),
        "-lrt",
        "-lpthread",
        "-lm",
        "-o",
        str(output),
    ]


def selftest_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "uffdharness" / "selftests"


def entry_name(identity: str) -> str:
    """A directory name for a source identity ("linux-source-7.3=7.3.4-1~bpo13+1")."""
    return re.sub(r"[^A-Za-z0-9.+~_-]", "_", identity)


def _run(argv: Sequence[str], what: str, timeout: float) -> None:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what} did not finish in {timeout} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BenchError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def build_uffd_stress(tree: Path, identity: str, cache: Path, log: Log) -> Path:
    """The cached uffd-stress of this source, built first if needed."""
    from uffdharness.matrix.cachedir import locked, write_atomic

    mm_dir = tree / "tools" / "testing" / "selftests" / "mm"
    if not (mm_dir / "uffd-stress.c").is_file():
        raise Skipped(f"{tree} has no tools/testing/selftests/mm/uffd-stress.c")
    entry = cache / entry_name(identity)
    binary = entry / "uffd-stress"
    meta_path = entry / "build.json"
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache / f"{entry.name}.lock"):
        if binary.is_file() and meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("recipe") == BUILD_RECIPE:
                return binary
        _require_compiler()
        dirty = unclean_markers(tree)
        if dirty:
            raise BenchError(
                f"{tree} is not clean ({', '.join(dirty)}): make O= refuses it; use a fresh tree"
            )
        shutil.rmtree(entry, ignore_errors=True)
        entry.mkdir(parents=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="build-", dir=entry) as scratch_name:
            scratch = Path(scratch_name)
            log(f"building uffd-stress from {tree}")
            # O= puts everything `make headers` writes (usr/include, scripts) in scratch.
            _run(
                ["make", "-s", "-C", str(tree), f"O={scratch / 'obj'}", "headers"],
                "make headers",
                timeout=600,
            )
            if unclean_markers(tree):
                raise BenchError(f"make O= headers wrote into {tree}; the tree is not clean now")
            sources = link_sources((mm_dir / "Makefile").read_text())
            cc = os.environ.get("CC", "gcc")
            command = compile_command(
                cc, mm_dir, scratch / "obj" / "usr" / "include", sources, scratch / "uffd-stress"
            )
            _run(command, "compiling uffd-stress", timeout=300)
            (scratch / "uffd-stress").rename(binary)
        meta = {
            "recipe": BUILD_RECIPE,
            "source": identity,
            "tree": str(tree),
            "sources": ["uffd-stress.c", *sources],
            "command": command,
            "build_s": round(time.monotonic() - started, 1),
        }
        write_atomic(meta_path, json.dumps(meta, indent=2).encode())
        log(f"built uffd-stress in {meta['build_s']} s: {binary}")
    return binary


def _require_compiler() -> None:
    from uffdharness.matrix import hosttools

    needed = [tool for tool in hosttools.BUILD_TOOLS if tool.command in ("gcc", "make", "ld")]
    try:
        hosttools.require(needed)
    except hosttools.MissingHostTools as exc:
        raise Skipped(f"cannot build uffd-stress: {exc}") from exc


def obtain_source(spec_text: str, log: Log) -> tuple[Path, str, str]:
    """(tree, identity, label) of the kernel source the spec names, downloading it if it
    must; Skipped when it cannot be had."""
    try:
        import debian.debian_support  # noqa: F401  (python-debian: Debian's version order)
    except ImportError as exc:
        raise Skipped(f"cannot fetch kernel sources: {exc}") from exc
    from uffdharness.matrix import hosttools
    from uffdharness.matrix.cachedir import cache_root
    from uffdharness.matrix.kbuild import debsource, specs
    from uffdharness.matrix.kbuild.resolve import KernelBuildError, local_source
    from uffdharness.matrix.kernelspec import SpecError, SpecKind
    from uffdharness.matrix.privateapt import DEFAULT_MAX_AGE_S

    try:
        spec = specs.parse(spec_text)
    except SpecError as exc:
        raise BenchError(str(exc)) from exc
    try:
        if spec.kind is SpecKind.DEBIAN_SOURCE:
            source = debsource.fetch(spec, cache_root(), DEFAULT_MAX_AGE_S, log)
        else:
            assert spec.tree is not None
            source = local_source(spec.tree)
    except (
        debsource.SourceFetchError,
        hosttools.MissingHostTools,
        KernelBuildError,
        OSError,
        subprocess.SubprocessError,
    ) as exc:
        reason = str(exc).removeprefix(f"{spec.text}: ")
        raise Skipped(f"{spec_text}: the kernel source cannot be had: {reason}") from exc
    return source.path, source.identity.text, source.label


# ---- running both sides -------------------------------------------------------------------


@contextlib.contextmanager
def _child(argv: Sequence[str], **popen: object) -> Iterator[subprocess.Popen]:
    """A child in its own process group, killed with its group and reaped however the
    block ends (a timeout, Ctrl-C, an exception)."""
    proc = subprocess.Popen(list(argv), start_new_session=True, **popen)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with interrupts.blocked():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def children_cpu_s() -> float:
    """User + system CPU seconds of every reaped child (and theirs): the difference
    around one run is that run's, its threads included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class StressRun:
    output: StressOutput
    pages: int
    wall_s: float  # exec to exit
    loop_s: float | None  # first "bounces:" line to exit
    cpu_s: float = 0.0  # user + system, all its threads

    @property
    def pages_per_s(self) -> float:
        return pages_per_s(self.pages, self.wall_s)

    @property
    def loop_pages_per_s(self) -> float | None:
        return pages_per_s(self.pages, self.loop_s) if self.loop_s else None


def run_uffd_stress(
    binary: Path, stress_type: str, mib: int, bounces: int, timeout: float
) -> StressRun | str:
    """One uffd-stress run: a StressRun, or the skip reason it gave (exit 4)."""
    argv = [str(binary), stress_type, str(mib), str(bounces)]
    chunks: list[bytes] = []
    first_bounce: float | None = None
    cpu_before = children_cpu_s()
    started = time.monotonic()
    with _child(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                left = started + timeout - time.monotonic()
                if left <= 0:
                    raise BenchError(f"{' '.join(argv)} did not finish in {timeout} s")
                if not selector.select(left):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if first_bounce is None and b"bounces:" in b"".join(chunks):
                    first_bounce = time.monotonic()
        try:
            status = proc.wait(max(started + timeout - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired as exc:  # closed its stdout but lives on
            raise BenchError(f"{' '.join(argv)} did not exit in {timeout} s") from exc
    ended = time.monotonic()
    text = b"".join(chunks).decode(errors="replace")
    output = parse_stress_output(text)
    if status == KSFT_SKIP:
        return output.skip_reason or "uffd-stress skipped (exit 4)"
    if status != 0 or not output.passed or output.nr_pages is None:
        tail = "\n".join(text.strip().splitlines()[-10:])
        raise BenchError(f"{' '.join(argv)} failed (exit {status}):\n{tail}")
    loop_s = ended - first_bounce if first_bounce is not None else None
    cpu_s = children_cpu_s() - cpu_before
    return StressRun(output, output.nr_pages * bounces, ended - started, loop_s, cpu_s)


def _harness_argv(
    memory: str, mib: int, bounces: int, engine: str, json_path: str, churn: bool = False
) -> list:
    # uffd-stress churns no VMAs: without --churn the harness runs the same design
    return [
        sys.executable,
        "-m",
        "uffdharness",
        "stress",
        "--memory",
        memory,
        "--mib",
        str(mib),
        "--bounces",
        str(bounces),
        "--engine",
        engine,
        "--json",
        json_path,
        *([] if churn else ["--no-churn"]),
    ]


def _harness_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{path}" if path else str(REPO))


def harness_available() -> bool:
    """Whether this uffdharness has the stress command."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "uffdharness", "stress", "--help"],
            capture_output=True,
            env=_harness_env(),
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


@dataclass(frozen=True)
class HarnessTimed:
    run: HarnessRun
    wall_s: float  # the whole `uffdharness stress` process
    cpu_s: float = 0.0  # user + system of that process and its children

    @property
    def wall_pages_per_s(self) -> float:
        return pages_per_s(self.run.pages, self.wall_s)


def run_harness(
    memory: str, mib: int, bounces: int, engine: str, timeout: float, churn: bool = False
) -> HarnessTimed:
    with tempfile.TemporaryDirectory(prefix="bench-stress-") as scratch:
        json_path = os.path.join(scratch, "stress.json")
        argv = _harness_argv(memory, mib, bounces, engine, json_path, churn)
        cpu_before = children_cpu_s()
        started = time.monotonic()
        with _child(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_harness_env()
        ) as proc:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"uffdharness stress did not finish in {timeout} s") from exc
        wall_s = time.monotonic() - started
        cpu_s = children_cpu_s() - cpu_before
        text = out.decode(errors="replace")
        try:
            report = json.loads(Path(json_path).read_text())
            run = harness_run(report, memory, engine)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            tail = "\n".join(text.strip().splitlines()[-10:])
            raise BenchError(
                f"uffdharness stress (exit {proc.returncode}) gave no usable report: {exc}\n{tail}"
            ) from exc
    return HarnessTimed(run, wall_s, cpu_s)


# ---- the comparison ---------------------------------------------------------------------


@dataclass
class KindResult:
    memory: str
    stress_type: str
    stress: list[StressRun]
    harness: list[HarnessTimed]
    skip_reason: str | None = None

    @property
    def pages(self) -> int | None:
        return self.stress[0].pages if self.stress else None

    def row(self) -> dict[str, float | None]:
        us = median([r.pages_per_s for r in self.stress])
        us_loop = median([r.loop_pages_per_s for r in self.stress])
        loop = median([r.run.pages_per_s for r in self.harness])
        wall = median([r.wall_pages_per_s for r in self.harness])
        return {
            "uffd_stress": us,
            "uffd_stress_loop": us_loop,
            "harness_loop": loop,
            "harness_wall": wall,
            "ratio_loop": ratio(loop, us),
            "ratio_wall": ratio(wall, us),
        }


def _fmt(value: float | None, ratio_value: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if ratio_value else f"{value:,.0f}"


HEADER = (
    f"{'memory':<16}{'type':<16}{'pages':>8}  {'uffd-stress':>12}{'~loop':>12}"
    f"  {'uh loop':>12}{'uh wall':>12}  {'loop/us':>8}{'wall/us':>8}  faults"
)


def format_row(result: KindResult) -> str:
    if result.skip_reason:
        return f"{result.memory:<16}{result.stress_type:<16}skipped: {result.skip_reason}"
    row = result.row()
    served = [
        faults / r.output.nr_pages
        for r in result.stress
        if r.output.nr_pages
        for faults in r.output.missing_faults
    ]
    faults = f"{statistics.mean(served):.0%} by uffd threads" if served else ""
    verdicts = {r.run.verdict for r in result.harness} - {"pass"}
    if verdicts:
        faults += f" uffdharness verdict {','.join(sorted(verdicts))}"
    return (
        f"{result.memory:<16}{result.stress_type:<16}{result.pages or 0:>8}  "
        f"{_fmt(row['uffd_stress']):>12}{_fmt(row['uffd_stress_loop']):>12}  "
        f"{_fmt(row['harness_loop']):>12}{_fmt(row['harness_wall']):>12}  "
        f"{_fmt(row['ratio_loop'], True):>8}{_fmt(row['ratio_wall'], True):>8}  {faults}"
    )


def describe_model(cpus: int, bounces: int) -> str:
    parallel = parallel_threads(cpus)
    if bounces <= 16:
        modes = ", ".join(bounce_mode(left).strip() for left in reversed(range(bounces)))
    else:  # the cycle repeats every 16 bounces
        modes = "from the bits of the bounces left: 1 rnd, 2 racing, 4 ver, 8 poll (else read)"
    return (
        f"uffd-stress threads: {cpus} CPUs online -> every bounce starts {parallel} locking + "
        f"{parallel} uffd + {parallel} background threads (one uffd); uffd threads read(2) "
        f"in {bounces - poll_bounces(bounces)} and poll(2) in {poll_bounces(bounces)} of "
        f"{bounces} bounces; modes by bounce: {modes}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--memory",
        action="append",
        choices=sorted(STRESS_TYPES),
        help="uffdharness memory kind (repeatable; default anon)",
    )
    parser.add_argument("--mib", type=int, default=32, help="area size in MiB (default 32)")
    parser.add_argument("--bounces", type=int, default=8, help="bounces (default 8)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved reps (default 3)")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="kernel source spec")
    parser.add_argument("--engine", default="native", help="uffdharness engine (default native)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per run, seconds")
    parser.add_argument(
        "--churn",
        action="store_true",
        help="run the harness with its VMA churn thread (uffd-stress has none: by default "
        "the harness runs --no-churn, the same design)",
    )
    args = parser.parse_args(argv)
    args.memory = list(dict.fromkeys(args.memory or ["anon"]))
    for name in ("mib", "bounces", "reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def _reserve_hugepages(
    stack: contextlib.ExitStack, stress_type: str, mib: int, cpus: int, log: Log
) -> str | None:
    """Reserve what uffd-stress needs for a hugetlb type; a skip reason if it cannot."""
    size_kb = hugepages.default_size_kb()
    if size_kb is None:
        return "the kernel has no hugetlb"
    needed = hugepages_needed(mib, size_kb * 1024, cpus)
    shortfall = max(needed - hugepages.available(size_kb), 0)
    if not shortfall:
        return None
    if os.geteuid() != 0:
        return f"needs {needed} free {size_kb} kB hugepages and only root may reserve them"
    try:
        stack.enter_context(hugepages.HugepagePool(shortfall, size_kb))
        log(f"reserved {shortfall} more {size_kb} kB hugepages (given back when the run ends)")
    except OSError as exc:
        return f"cannot reserve {shortfall} hugepages of {size_kb} kB: {exc}"
    return None


def _warm_hugepages(log: Log) -> None:
    """Fault every free hugepage in once, so that neither side pays for a first touch: on a
    VM the host backs guest memory lazily, and a hugepage freshly added to the pool cost
    up to 66 ms on its first fault here (a bounce's worth of copies is 2 ms)."""
    size_kb = hugepages.default_size_kb()
    free = hugepages.free_pages(size_kb) if size_kb else 0
    if not free:
        return
    flags = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_HUGETLB | sc.MAP_POPULATE
    length = free * size_kb * 1024
    started = time.monotonic()
    try:
        sc.munmap(sc.mmap(0, length, sc.PROT_RW, flags), length)
    except OSError as exc:  # another process took some meanwhile: the run goes on cold
        log(f"could not fault in the {free} free hugepages first: {exc}")
        return
    log(f"faulted in the {free} free hugepages once in {time.monotonic() - started:.2f} s")


def compare(args: argparse.Namespace, binary: Path, harness: bool, log: Log) -> list[KindResult]:
    cpus = os.sysconf("SC_NPROCESSORS_ONLN")
    results = [KindResult(kind, STRESS_TYPES[kind], [], []) for kind in args.memory]
    with contextlib.ExitStack() as stack:
        for result in results:
            if result.stress_type in HUGETLB_TYPES:
                result.skip_reason = _reserve_hugepages(
                    stack, result.stress_type, args.mib, cpus, log
                )
        if any(r.stress_type in HUGETLB_TYPES and not r.skip_reason for r in results):
            _warm_hugepages(log)
        for rep in range(args.reps):
            for result in results:
                if result.skip_reason:
                    continue
                sides = ["uffd-stress", "uffdharness"] if harness else ["uffd-stress"]
                for side in sides if rep % 2 == 0 else reversed(sides):
                    where = f"rep {rep + 1}/{args.reps}: {side} {result.memory}"
                    if side == "uffdharness":
                        timed = run_harness(
                            result.memory,
                            args.mib,
                            args.bounces,
                            args.engine,
                            args.timeout,
                            args.churn,
                        )
                        result.harness.append(timed)
                        log(
                            f"{where}: loop {timed.run.seconds:.3f} s "
                            f"({timed.run.pages_per_s:,.0f} pages/s), wall {timed.wall_s:.3f} s, "
                            f"CPU {timed.cpu_s:.3f} s"
                        )
                        continue
                    run = run_uffd_stress(
                        binary, result.stress_type, args.mib, args.bounces, args.timeout
                    )
                    if isinstance(run, str):
                        result.skip_reason = f"uffd-stress: {run}"
                        log(f"{where}: skipped: {run}")
                        break
                    result.stress.append(run)
                    log(
                        f"{where}: {run.wall_s:.3f} s ({run.pages_per_s:,.0f} pages/s), "
                        f"CPU {run.cpu_s:.3f} s"
                    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    try:
        with interrupts.raising():
            try:
                tree, identity, label = obtain_source(args.source, log)
                binary = build_uffd_stress(tree, identity, selftest_cache(), log)
            except Skipped as exc:
                print(f"skipped: {exc}")
                return 0
            harness = harness_available()
            cpus = os.sysconf("SC_NPROCESSORS_ONLN")
            print(f"uffd-stress: {label} ({binary})")
            print(describe_model(cpus, args.bounces))
            if not harness:
                print("uffdharness stress not available: timing uffd-stress alone")
            print(
                f"{args.mib} MiB x {args.bounces} bounces, {args.reps} reps interleaved, "
                f"medians; engine {args.engine}"
                + (", with the harness's VMA churn" if args.churn else ", harness --no-churn")
            )
            results = compare(args, binary, harness, log)
    except interrupts.Interrupted as stop:
        print(f"bench_stress: interrupted by {stop.signal_name}", file=sys.stderr)
        return stop.exit_code
    except BenchError as exc:
        print(f"bench_stress: {exc}", file=sys.stderr)
        return 2
    print()
    print(HEADER)
    for result in results:
        print(format_row(result))
    print()
    print(
        "uffd-stress = pages/s over its whole process; ~loop = from its first bounce to exit; "
        "uh loop = uffdharness's bounce loop (its JSON); uh wall = the whole uffdharness "
        "process; loop/us and wall/us = uffdharness / uffd-stress; pages = pages of the "
        "kind's size moved (area x bounces); faults = share resolved by uffd threads (the "
        "rest by background UFFDIO_COPY)"
    )
    if not harness:
        return 0
    if any(r.run.verdict != "pass" for result in results for r in result.harness):
        print("uffdharness stress gave a verdict other than pass")
        return 2
    if args.engine != "native":
        return 0
    missed = [
        result.memory
        for result in results
        if not result.skip_reason and (result.row()["ratio_loop"] or 0) < TARGET_RATIO
    ]
    if missed:
        print(f"target loop/us >= {TARGET_RATIO:.1f} missed: {', '.join(missed)}")
        return 1
    print(f"target loop/us >= {TARGET_RATIO:.1f} met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
