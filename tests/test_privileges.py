"""Running without root, for real: a forked child drops to uid and gid 65534 (supplementary
groups and every capability go with it) while vm.unprivileged_userfaultfd is set to 0 or 1
and restored afterwards, and runs the harness's own code there: the facts, the runner over
the whole catalogue, the CLI, Userfaultfd itself."""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from uffdharness._native import ffi

import uffdharness.maps  # noqa: F401 - imported as root: nobody may not read the checkout
from uffdharness import runner, system
from uffdharness import uffd as uffd_module
from uffdharness.abi import Feature, RegisterMode
from uffdharness.cli import main
from uffdharness.errors import UffdError
from uffdharness.isolation import run_in_child
from uffdharness.kindsetup import thp_reason
from uffdharness.memory import SPECS, allocate
from uffdharness.scenarios import CATALOGUE
from uffdharness.scenarios.checks import Checks
from uffdharness.scenarios.context import Background, Context, next_event
from uffdharness.scenarios.model import Observation, Scenario
from uffdharness.uffd import Userfaultfd

NOBODY = 65534
SYSCTL = system.SYSCTL_UNPRIVILEGED_USERFAULTFD

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root to setuid() to 65534 and set the sysctl"
    ),
    pytest.mark.skipif(not os.path.exists(SYSCTL), reason=f"{SYSCTL} absent (kernel < 5.2)"),
]


@pytest.fixture
def unprivileged_userfaultfd() -> Iterator[Callable[[int], None]]:
    """Set vm.unprivileged_userfaultfd for the test; the old value comes back after it."""
    with open(SYSCTL) as sysctl:
        old = sysctl.read().strip()

    def set_to(value: int) -> None:
        with open(SYSCTL, "w") as sysctl:
            sysctl.write(str(value))

    try:
        yield set_to
    finally:
        set_to(int(old))


PR_SET_DUMPABLE = 4


def drop_privileges() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)  # from uid 0 to non-zero: permitted and effective capabilities go


def become_nobody() -> None:
    """Drop to 65534 in this forked process and make it what a process nobody started
    is: setuid() leaves it undumpable, and /proc/self (pagemap, smaps) then belongs to
    root; PR_SET_DUMPABLE gives it back to the process's own uid."""
    drop_privileges()
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")
    # What root's probes cached in this process must not answer for nobody.
    uffd_module._probe_cache.clear()
    system.facts.cache_clear()


def as_nobody(fn: Callable[..., Any], *args: Any, timeout: float = 120) -> Any:
    """``fn(*args)`` in a forked child that first drops to uid/gid 65534."""

    def unprivileged() -> Any:
        become_nobody()
        return fn(*args)

    return run_in_child(unprivileged, timeout=timeout).unwrap()


# --- a check whose fault the kernel raises ----------------------------------------------------

PIPE_DATA = b"from a pipe"


def _pipe_read_into_registered(ctx: Context) -> Observation:
    """read(2) from a pipe into a registered page: copy_to_user() faults in kernel mode."""
    region = ctx.region(1)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, PIPE_DATA)
        target = ffi.buffer(ffi.cast("char *", region.addr), len(PIPE_DATA))
        reader = Background(os.readv, read_end, [target])  # the GIL is released in readv
        fault = next_event(uffd, timeout=5)
        if fault is not None:
            uffd.zeropage(region)
        read = reader.value(5)
    finally:
        os.close(read_end)
        os.close(write_end)
    check = Checks()
    check.expect("fault", fault.fault_kind if fault else None, "missing")
    check.expect("bytes_read", read, len(PIPE_DATA))
    check.expect("data", region.read(0, len(PIPE_DATA)), PIPE_DATA)
    return check.observation(key=f"read={read}")


KERNEL_FAULT_CHECK = Scenario(
    id="kernel-fault-pipe-read",
    title="a kernel-mode fault",
    checks="read(2) into registered memory raises a fault the handler resolves",
    run=_pipe_read_into_registered,
    modes=RegisterMode.MISSING,
    kernel_faults="read(2) from a pipe into registered memory",
)


def test_the_kernel_fault_check_passes_where_kernel_faults_are_allowed() -> None:
    """So its skip below is a decision, not a check that could never pass."""
    result = runner.run_pair(KERNEL_FAULT_CHECK, "anon", system.facts(), 10, None)
    assert (result.verdict, result.key) == ("pass", f"read={len(PIPE_DATA)}"), result


# --- the whole catalogue as nobody ------------------------------------------------------------


FORK_SCENARIOS = ("event-fork", "wp-fork", "wp-fork-hugetlb-private", "wp-fork-pin")


def _run_catalogue() -> tuple[dict[str, Any], list[runner.Result]]:
    info = system.collect()
    pairs = runner.select(CATALOGUE.values()) + [(KERNEL_FAULT_CHECK, "anon")]
    return info.to_json(), runner.run(pairs, info=info, timeout=30)


def _expected_skip(item: Scenario, kind: str, kernel_faults: bool) -> str | None:
    """What a user without any capability must see for a pair: the words of its skip
    reason, or None for a pass."""
    as_root = system.facts()  # what this kernel lacks whoever asks (RWP before 7.3, ...)
    reason = item.skip_reason(as_root.kernel, as_root.offered, True, kind)
    if reason is not None:
        return reason
    if Feature.EVENT_FORK in item.features_on(kind):
        return "UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE"
    if item.kernel_faults and not kernel_faults:
        return "needs kernel-mode faults"
    if kind.startswith("hugetlb"):
        return "hugetlb needs root to reserve hugepages"
    thp_off = thp_reason(SPECS[kind], is_root=False) if SPECS[kind].thp else None
    if thp_off:
        return thp_off
    if SPECS[kind].thp and item.id == "wp-cleared-on-mremap":
        return "needs /proc/kpageflags (root)"
    return None


def _judge_unprivileged_run(facts: dict[str, Any], results: list[runner.Result]) -> dict:
    kernel_faults = not facts["user_mode_only"]
    items = {**CATALOGUE, KERNEL_FAULT_CHECK.id: KERNEL_FAULT_CHECK}
    counts: dict[str, int] = {}
    for result in results:
        counts[result.verdict] = counts.get(result.verdict, 0) + 1
        expected = _expected_skip(items[result.id], result.memory, kernel_faults)
        if expected is None:
            assert result.verdict == "pass", result
        else:
            assert result.verdict == "skip" and expected in result.reason, result
    assert not {"fail", "error", "hang", "known-bug"} & set(counts), counts
    return counts


def test_catalogue_as_nobody_with_unprivileged_userfaultfd_1(unprivileged_userfaultfd) -> None:
    unprivileged_userfaultfd(1)
    facts, results = as_nobody(_run_catalogue)
    assert not facts["is_root"] and facts["capabilities"] == []
    assert facts["open_modes"][0] == {
        "name": "syscall",
        "kernel_faults": True,
        "works": True,
        "refusal": "",
    }
    assert not facts["user_mode_only"]
    counts = _judge_unprivileged_run(facts, results)
    print(f"nobody, vm.unprivileged_userfaultfd=1: {counts}")
    fork = [r for r in results if r.id in FORK_SCENARIOS]
    assert fork and all(r.verdict == "skip" for r in fork)
    assert all("CAP_SYS_PTRACE (UFFDIO_API refuses it with EPERM)" in r.reason for r in fork)
    kernel_fault = next(r for r in results if r.id == KERNEL_FAULT_CHECK.id)
    assert kernel_fault.verdict == "pass", kernel_fault  # the sysctl allows kernel faults


def test_catalogue_as_nobody_with_unprivileged_userfaultfd_0(unprivileged_userfaultfd) -> None:
    unprivileged_userfaultfd(0)
    facts, results = as_nobody(_run_catalogue)
    dev = "/dev/userfaultfd"
    dev_open_to_all = os.path.exists(dev) and os.stat(dev).st_mode & 0o006 == 0o006
    if facts["kernel"]["major"] * 100 + facts["kernel"]["minor"] < 511 or dev_open_to_all:
        pytest.skip("needs UFFD_USER_MODE_ONLY (5.11) and a root-only /dev/userfaultfd")
    assert facts["user_mode_only"] and facts["uffd"]["user_mode_only"]
    assert facts["uffd"]["status"] == "available"
    counts = _judge_unprivileged_run(facts, results)
    print(f"nobody, vm.unprivileged_userfaultfd=0: {counts}")
    assert counts["pass"] > 0
    kernel_fault = next(r for r in results if r.id == KERNEL_FAULT_CHECK.id)
    assert kernel_fault.verdict == "skip" and kernel_fault.duration_s == 0  # before any fork
    for named in (
        "read(2) from a pipe into registered memory",
        "vm.unprivileged_userfaultfd=0",
        "CAP_SYS_PTRACE",
        "/dev/userfaultfd: EACCES",
    ):
        assert named in kernel_fault.reason, kernel_fault.reason


# --- Userfaultfd itself as nobody --------------------------------------------------------------


def _open_features_user_mode_only_and_serve() -> dict[str, Any]:
    with (
        Userfaultfd.open(Feature.THREAD_ID, user_mode_only=True) as uffd,
        allocate("anon", 1) as region,
    ):
        uffd.register(region)
        toucher = Background(region.touch, 0)  # a user-mode access: queued
        fault = next_event(uffd, timeout=5)
        uffd.zeropage(region)
        toucher.value(5)
        return {
            "user_mode_only": uffd.user_mode_only,
            "fault": fault.fault_kind if fault else None,
            "thread_id": bool(fault and fault.thread_id),
        }


def test_open_with_features_and_user_mode_only_as_nobody(unprivileged_userfaultfd) -> None:
    unprivileged_userfaultfd(0)
    served = as_nobody(_open_features_user_mode_only_and_serve)
    assert served == {"user_mode_only": True, "fault": "missing", "thread_id": True}


def _open_refused() -> str:
    try:
        Userfaultfd.open(Feature.THREAD_ID).close()
    except UffdError as refusal:
        return str(refusal)
    return "opened"


def test_full_mode_refusal_as_nobody_names_the_rules(unprivileged_userfaultfd) -> None:
    unprivileged_userfaultfd(0)
    refusal = as_nobody(_open_refused)
    for named in ("EACCES", "/dev/userfaultfd", "CAP_SYS_PTRACE", "vm.unprivileged_userfaultfd=1"):
        assert named in refusal, refusal
    assert "userfaultfd(2) gave EPERM" in refusal


def _event_fork_refused() -> tuple[str, str]:
    try:
        Userfaultfd.open(Feature.EVENT_FORK).close()
    except UffdError as refusal:
        return refusal.errno_name, str(refusal)
    return "opened", ""


def test_event_fork_refusal_names_the_capability(unprivileged_userfaultfd) -> None:
    unprivileged_userfaultfd(1)
    name, text = as_nobody(_event_fork_refused)
    assert name == "EPERM"
    assert "UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE" in text, text


def test_info_as_nobody_shows_the_open_modes(unprivileged_userfaultfd) -> None:
    def info_text() -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["info"]) == 0
        return out.getvalue()

    unprivileged_userfaultfd(0)
    # "label  value" rows; a wrapped value's continuation lines have no such gap.
    rows = dict(
        match.groups()
        for line in as_nobody(info_text).splitlines()
        if (match := re.match(r"\s*(\S.*?)\s{2,}(\S.*)$", line))
    )
    assert rows["syscall"] == "refused: EPERM: vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE"
    assert rows["syscall user-mode-only"] == "works (user-mode only faults)"
    assert rows["/dev/userfaultfd"].startswith("refused: EACCES: no read/write permission")
    assert rows["uffd open modes"].startswith("user-mode faults only")
    assert rows["opened via"] == "syscall with UFFD_USER_MODE_ONLY"


# --- the CLI as nobody ------------------------------------------------------------------------


def _cli_run(report: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", "-k", "event-fork,wp-fork*", "--json", report, "--quiet"])
    return code, out.getvalue()


def test_cli_run_as_nobody(unprivileged_userfaultfd) -> None:
    """``uffdharness run`` as nobody, in a forked process: the interpreter need not be one
    nobody could start (a venv under /root, mode 0700, is not)."""
    unprivileged_userfaultfd(1)
    report_dir = tempfile.mkdtemp(prefix="uffdharness-nobody-")
    try:
        os.chown(report_dir, NOBODY, NOBODY)
        report = os.path.join(report_dir, "report.json")
        code, table = as_nobody(_cli_run, report)
        with open(report) as handle:
            results = json.load(handle)["results"]
    finally:
        shutil.rmtree(report_dir)
    assert code == runner.EXIT_SKIP, table  # every pair skipped: kselftest's KSFT_SKIP
    assert {r["id"] for r in results} == set(FORK_SCENARIOS)
    for result in results:
        assert result["verdict"] == "skip", result
        assert "UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE" in result["reason"], result
