"""register-ioctls, mapped-eexist and the extended api-probe, mmap-changing,
wp-unpopulated and poison through the runner on this kernel, plus the rules and
judgements behind them."""

from __future__ import annotations

import errno
import json
import pickle
import re

import pytest
from scenario_results import passed_facts, run_scenarios

from uffdharness import system
from uffdharness.abi import Feature, Ioctl, RegisterMode
from uffdharness.errors import HarnessError, UffdError
from uffdharness.kernelversion import parse
from uffdharness.memory import MemoryKind, allocate
from uffdharness.runner import judge
from uffdharness.scenarios import CATALOGUE
from uffdharness.scenarios.checks import Checks
from uffdharness.scenarios.context import Context
from uffdharness.scenarios.model import ALL_KINDS, MINOR_KINDS, THP_KINDS, Every, Observation
from uffdharness.scenarios.noncooperative import EAGAIN_FIELD_FIX
from uffdharness.scenarios.registration import (
    COMBINATIONS,
    judge_ioctls,
    mode_name,
    range_ioctls,
)
from uffdharness.uffd import Userfaultfd

pytestmark = pytest.mark.timeout(120)

SCENARIOS = (
    "register-ioctls",
    "api-probe",
    "mapped-eexist",
    "mmap-changing",
    "wp-unpopulated",
    "poison",
)
# Reasons a pair may legitimately skip on some machine (old kernel, no hugepages, no root).
SKIP_REASONS = re.compile(r"kernel lacks|needs kernel >=|hugepages|needs root|not supported on")
BASE = Ioctl.WAKE | Ioctl.COPY | Ioctl.ZEROPAGE


@pytest.fixture(scope="module")
def results():
    return run_scenarios(SCENARIOS, timeout=15)


def facts(results, scenario: str, memory: str) -> dict:
    return passed_facts(results, scenario, memory, SKIP_REASONS)


def test_every_pair_passes_or_skips_for_a_stated_reason(results):
    expected = {
        "register-ioctls": {*ALL_KINDS, *THP_KINDS, "hugetlb-1g", "hugetlb-1g-private"},
        "api-probe": {"anon"},
        "mapped-eexist": set(MINOR_KINDS),
        "mmap-changing": {"anon", "shmem", "memfd", "memfd-private"},
        "wp-unpopulated": {"anon"},
        "poison": set(ALL_KINDS),
    }
    for scenario, kinds in expected.items():
        assert {m for s, m in results if s == scenario} == kinds
    assert "memfd-private" in ALL_KINDS and "memfd-private" in MINOR_KINDS
    for result in results.values():
        if result.verdict == "skip":
            assert SKIP_REASONS.search(result.reason), (result.name, result.reason)
        else:
            assert result.verdict == "pass", (result.name, result.reason, result.facts)
        assert result.key
        json.dumps(result.facts)  # reports are JSON: no sets, enums or bytes in facts
        assert result.duration_s < 2, (result.name, result.duration_s)


# --- register-ioctls ---------------------------------------------------------------------------


@pytest.mark.parametrize("memory", ALL_KINDS)
def test_register_ioctls_facts(results, memory):
    f = facts(results, "register-ioctls", memory)
    assert set(f) >= {mode_name(modes) for modes in COMBINATIONS}
    assert f["none"]["register"] == "EINVAL"
    missing = f["MISSING"]
    assert missing["register"] == "ok" and missing["missing"] == []
    assert "WRITEPROTECT" not in missing["ioctls"] and "CONTINUE" not in missing["ioctls"]
    hugetlb = memory.startswith("hugetlb")
    assert ("ZEROPAGE" in missing["ioctls"]) is not hugetlb
    kernel = system.facts().kernel
    if kernel >= "6.8":
        # UFFD_API_RANGE_IOCTLS carries MOVE for shmem ranges too.
        assert ("MOVE" in missing["ioctls"]) is not hugetlb
    if kernel >= "6.6":
        assert "POISON" in missing["ioctls"]
    if memory == "anon":
        for modes in ("MINOR", "MISSING|MINOR", "WP|MINOR", "MISSING|WP|MINOR"):
            assert f[modes] == {"register": "EINVAL"}
        assert "WRITEPROTECT" in f["WP"]["ioctls"]
    if memory in MINOR_KINDS and f["MINOR"]["register"] == "ok":
        assert "CONTINUE" in f["MINOR"]["ioctls"]
        assert "WRITEPROTECT" not in f["MINOR"]["ioctls"]


def test_combinations_are_every_subset_once():
    assert len(COMBINATIONS) == len(set(COMBINATIONS)) == 8
    assert COMBINATIONS[0] == RegisterMode(0)
    assert set(COMBINATIONS) == {RegisterMode(bits) for bits in range(8)}
    assert mode_name(RegisterMode(0)) == "none"
    assert mode_name(RegisterMode.MISSING | RegisterMode.MINOR) == "MISSING|MINOR"


@pytest.mark.parametrize(
    ("hugetlb", "modes", "kernel", "expected"),
    [
        (False, RegisterMode.MISSING, "5.10", BASE),
        (False, RegisterMode.WP, "5.10", BASE | Ioctl.WRITEPROTECT),
        (False, RegisterMode.MINOR, "5.14", BASE | Ioctl.CONTINUE),
        (False, RegisterMode.MISSING, "6.6", BASE | Ioctl.POISON),
        (False, RegisterMode.MISSING, "6.8", BASE | Ioctl.POISON | Ioctl.MOVE),
        (
            False,
            RegisterMode.MISSING | RegisterMode.WP | RegisterMode.MINOR,
            "7.3",
            BASE | Ioctl.POISON | Ioctl.MOVE | Ioctl.WRITEPROTECT | Ioctl.CONTINUE,
        ),
        (True, RegisterMode.MISSING, "5.10", Ioctl.WAKE | Ioctl.COPY),
        (True, RegisterMode.MINOR, "5.13", Ioctl.WAKE | Ioctl.COPY | Ioctl.CONTINUE),
        (True, RegisterMode.WP, "5.18", Ioctl.WAKE | Ioctl.COPY),
        (True, RegisterMode.WP, "5.19", Ioctl.WAKE | Ioctl.COPY | Ioctl.WRITEPROTECT),
        (True, RegisterMode.MISSING, "7.3", Ioctl.WAKE | Ioctl.COPY | Ioctl.POISON),
    ],
)
def test_range_ioctls_follow_the_kernel_version(hugetlb, modes, kernel, expected):
    wanted, allowed = range_ioctls(hugetlb, modes, parse(kernel))
    assert wanted == expected
    assert wanted & ~allowed == 0
    assert not allowed & Ioctl.RWPROTECT  # never without MODE_RWP
    if hugetlb:
        assert not allowed & (Ioctl.ZEROPAGE | Ioctl.MOVE)


def test_judge_ioctls():
    expected, allowed = range_ioctls(False, RegisterMode.MISSING, parse("6.1"))
    exact = Checks()
    judge_ioctls(exact, expected, expected, allowed)
    assert exact.ok and exact.facts["newer_than_kernel"] == []
    backport = Checks()  # POISON on a 6.1 that carries it: a fact
    judge_ioctls(backport, expected | Ioctl.POISON | Ioctl(1 << 40), expected, allowed)
    assert backport.ok
    assert backport.facts["newer_than_kernel"] == ["POISON"]
    assert backport.facts["unknown"] == [hex(1 << 40)]
    lacking = Checks()
    judge_ioctls(lacking, expected & ~Ioctl.ZEROPAGE, expected, allowed)
    assert lacking.problems == ["missing: ['ZEROPAGE'], expected []"]
    wrong = Checks()  # CONTINUE without MODE_MINOR is never right
    judge_ioctls(wrong, expected | Ioctl.CONTINUE, expected, allowed)
    assert wrong.problems == ["not_for_this_range: ['CONTINUE'], expected []"]


def test_register_ioctls_declares_modes_it_needs_and_probes_the_others():
    item = CATALOGUE["register-ioctls"]
    assert item.memory == (*ALL_KINDS, *THP_KINDS, "hugetlb-1g", "hugetlb-1g-private")
    assert item.modes == RegisterMode.MISSING
    assert item.probes == RegisterMode.WP | RegisterMode.MINOR
    five_ten = (
        Feature(sum(f for f in Feature if f <= Feature.THREAD_ID)) | Feature.PAGEFAULT_FLAG_WP
    )
    for kind in item.memory:  # probes gate nothing: every kind runs on 5.10
        assert item.skip_reason(parse("5.10.0"), five_ten, True, kind) is None


def test_probe_features():
    ctx = Context(MemoryKind.ANON, system.facts(), RegisterMode.MISSING, probes=RegisterMode.MINOR)
    assert ctx.probe_features(RegisterMode.MINOR) is None  # anonymous memory has no MINOR
    assert ctx.probe_features(RegisterMode.MISSING) == Feature(0)
    with pytest.raises(HarnessError, match="without declaring"):
        ctx.probe_features(RegisterMode.WP)
    shmem = Context(
        MemoryKind.MEMFD, system.facts(), RegisterMode.MISSING, probes=RegisterMode.MINOR
    )
    wanted = Feature.MINOR_SHMEM
    assert shmem.probe_features(RegisterMode.MINOR) == (
        wanted if wanted in system.facts().offered else None
    )


# --- api-probe ---------------------------------------------------------------------------------


def test_api_calls_facts(results):
    f = facts(results, "api-probe", "anon")
    assert f["api_calls"] == {
        "wrong_api": "EINVAL",
        "good_api_after_refusal": "ok",
        "second_api": "EINVAL",
        "second_api_other_features": "EINVAL",
    }


def test_read_rwf_nowait_fact_is_what_the_kernel_answered(results):
    """An empty uffd read with RWF_NOWAIT: EAGAIN where the uffd takes the flag, EOPNOTSUPP
    where it refuses it (the fact says which read path the native core takes here)."""
    import os

    with Userfaultfd.open(Feature(0)) as uffd:
        try:
            os.preadv(uffd.fileno(), [bytearray(32)], -1, os.RWF_NOWAIT)
            answer = "ok"
        except OSError as exc:
            answer = "EOPNOTSUPP" if exc.errno == errno.EOPNOTSUPP else errno.errorcode[exc.errno]
    assert answer in ("EAGAIN", "EOPNOTSUPP")
    assert facts(results, "api-probe", "anon")["read_rwf_nowait"] == answer


# --- mapped-eexist -----------------------------------------------------------------------------


@pytest.mark.parametrize("memory", MINOR_KINDS)
def test_mapped_eexist_facts(results, memory):
    f = facts(results, "mapped-eexist", memory)
    page = f["page_size"]
    assert f["continue_first"] == ["ok", page]
    assert f["continue_again"] == ["EEXIST", -errno.EEXIST]
    shared = memory in ("shmem", "memfd", "hugetlb")
    assert f["shared"] is shared
    assert f["copy"] == (["EEXIST", -errno.EEXIST] if shared else ["ok", page])
    if memory.startswith("hugetlb"):
        assert f["zeropage"] == ["EINVAL", -errno.EINVAL]
    else:
        assert f["zeropage"] == (["EEXIST", -errno.EEXIST] if shared else ["ok", page])
    assert f["page_cache_unchanged"] is True


# --- mmap-changing -----------------------------------------------------------------------------


@pytest.mark.parametrize("memory", ["anon", "shmem", "memfd", "memfd-private"])
def test_mmap_changing_facts(results, memory):
    f = facts(results, "mmap-changing", memory)
    offered = system.facts().offered
    ran = set(f["while_pending"])
    assert {"copy", "zeropage", "writeprotect"} <= ran
    assert ("poison" in ran) is (Feature.POISON in offered)
    assert ("move" in ran) is (memory == "anon" and Feature.MOVE in offered)
    assert ("continue" in ran) is (memory != "anon" and Feature.MINOR_SHMEM in offered)
    assert ran | set(f["not_run"]) == {
        "copy",
        "zeropage",
        "writeprotect",
        "poison",
        "move",
        "continue",
    }
    assert set(f["while_pending"].values()) == {"EAGAIN"}
    assert set(f["result_field_while_pending"].values()) == {-errno.EAGAIN}
    assert "writeprotect" not in f["result_field_while_pending"]  # it has no result field
    assert set(f["after_read"].values()) == {"ok"}


BUGGY_FIELDS = {
    "while_pending": {"copy": "EAGAIN", "zeropage": "EAGAIN", "writeprotect": "EAGAIN"},
    "result_field_while_pending": {"copy": 0, "zeropage": 0},
    "after_read": {"copy": "ok", "zeropage": "ok", "writeprotect": "ok"},
}


def test_untouched_result_field_is_the_known_bug_only_before_its_fix():
    item = CATALOGUE["mmap-changing"]
    assert item.known_bug is not None and item.known_bug.fix == EAGAIN_FIELD_FIX.fix
    seen = Observation(BUGGY_FIELDS, ok=False, key="k", reason="fields")
    assert judge(item, parse("6.1.0"), seen, "anon")[0] == "known-bug"
    assert judge(item, parse("6.14.3"), seen, "shmem")[0] == "known-bug"
    verdict, reason = judge(item, parse("6.18.44"), seen, "anon")
    assert verdict == "fail" and EAGAIN_FIELD_FIX.fix in reason
    # ignoring mmap_changing is no known bug on any kernel
    ignored = {**BUGGY_FIELDS, "while_pending": {**BUGGY_FIELDS["while_pending"], "copy": "ok"}}
    assert judge(item, parse("6.1.0"), Observation(ignored, False, "k", "other"))[0] == "fail"


def test_every_matcher():
    assert Every(0)({"a": 0, "b": 0})
    assert not Every(0)({"a": 0, "b": -11})
    assert not Every(0)({}) and not Every(0)([0])
    assert str(Every("ok")) == "every value 'ok'"


def test_result_field_reaches_the_error_and_crosses_processes():
    refusal = UffdError(errno.EAGAIN, "UFFDIO_COPY", 0x1000, 4096, done=0, result_field=-11)
    copy = pickle.loads(pickle.dumps(refusal))
    assert (copy.result_field, copy.done, copy.errno_name) == (-11, 0, "EAGAIN")
    with allocate("anon", 1) as region, Userfaultfd.open() as uffd:
        uffd.register(region)
        uffd.zeropage(region)
        with pytest.raises(UffdError) as raised:
            uffd.zeropage(region)  # the page is there: EEXIST, written to the field too
    assert raised.value.errno_name == "EEXIST"
    assert raised.value.result_field == -errno.EEXIST and raised.value.done == 0


# --- wp-unpopulated and poison -----------------------------------------------------------------


def test_wp_unpopulated_markers_cleared(results):
    f = facts(results, "wp-unpopulated", "anon")
    for clear in ("marker_after_dontneed", "marker_after_unprotect"):
        part = f[clear]
        assert part["wp_pages_after_protect"] == [0, 1], part
        assert part["wp_pages_after_clear"] == [], part
        assert part["write_fault"] is None and part["data_ok"] is True, part


@pytest.mark.parametrize("memory", ALL_KINDS)
def test_poison_facts(results, memory):
    f = facts(results, "poison", memory)
    for part in ("poisoned_then_touched", "poisoned_from_handler"):
        assert f[part]["child"] == "crashed" and f[part]["signal"] == "SIGBUS"
    assert f["poisoned_from_handler"]["fault_page"] == 1
    assert "POISON" in f["register_ioctls"]


# --- Region.alias of anonymous shared memory ---------------------------------------------------


def test_alias_of_anonymous_shmem_maps_the_same_pages():
    with allocate("shmem", 2) as region:
        alias = region.alias()
        region.write(b"through-region", 4096)
        assert alias.read(4096, 14) == b"through-region"
        alias.write(b"through-alias", 0)
        assert region.read(0, 13) == b"through-alias"
    assert alias.closed
    with allocate("anon", 1) as private, pytest.raises(HarnessError, match="no backing file"):
        private.alias()
