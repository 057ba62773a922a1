"""The scenarios of issue 12 through the runner on this kernel: wp-fork-pin, wp-swap and
what VMM fault handlers rely on (scenarios/vmm.py); the io_uring pin they use; and that
each can fail: with the pin, the swap or the user-mode-only open taken away, the verdict
turns to fail with the fact that differs."""

from __future__ import annotations

import errno
import json
import os

import pytest
from conftest import open_fds

from uffdharness import hugepages, pin, system
from uffdharness.errors import UffdError
from uffdharness.memory import Reservation, allocate
from uffdharness.runner import run, select
from uffdharness.scenarios import CATALOGUE, context, wp_fork, wp_swap
from uffdharness.scenarios.wp_cleared import WP_MREMAP_FIX

PIN_KINDS = {"anon", "shmem", "memfd", "memfd-private", "hugetlb", "hugetlb-private"}
EXPECTED_KINDS = {
    "wp-fork-pin": PIN_KINDS,
    "wp-swap": {"anon", "shmem", "memfd", "memfd-private", "anon-thp"},
    "user-mode-only-efault": PIN_KINDS,
    "close-wakes-faults": PIN_KINDS,
    "remove-during-fault": PIN_KINDS,
    "map-fixed-replaced": PIN_KINDS,
    "mremap-dontunmap": {"anon"},
}
# Skips this host may legitimately give: no swap (wp-swap), no hugepages, an old kernel.
SKIP_REASONS = ("no swap:", "hugepages", "needs kernel >=", "kernel lacks", "io_uring")


def _run(scenario_id: str, memory: str | None = None):
    pairs = [
        (item, kind)
        for item, kind in select(CATALOGUE.values(), scenario_id)
        if item.id == scenario_id and memory in (None, kind)
    ]
    return run(pairs, timeout=15)


@pytest.fixture(scope="module")
def results():
    return {(r.id, r.memory): r for name in EXPECTED_KINDS for r in _run(name)}


@pytest.mark.timeout(120)
def test_every_pair_passes_or_skips_for_a_stated_reason(results):
    for scenario_id, kinds in EXPECTED_KINDS.items():
        assert {memory for sid, memory in results if sid == scenario_id} == kinds
    for result in results.values():
        if result.verdict == "skip":
            assert result.reason.startswith(SKIP_REASONS) or any(
                reason in result.reason for reason in SKIP_REASONS
            ), (result.name, result.reason)
        else:
            assert result.verdict == "pass", (result.name, result.reason)
        assert result.key
        json.dumps(result.facts)  # reports are JSON: no bytes, sets or enums
        assert result.duration_s < 0.5, (result.name, result.duration_s)


@pytest.mark.timeout(60)
def test_wp_swap_skips_without_swap_and_says_so(results):
    if system.swap_total_kb():
        pytest.skip("this machine has swap")
    for kind in EXPECTED_KINDS["wp-swap"]:
        result = results[("wp-swap", kind)]
        assert result.verdict == "skip" and result.reason.startswith("no swap: "), result.reason


def _facts(results, scenario_id: str, memory: str) -> dict:
    result = results[(scenario_id, memory)]
    if result.verdict == "skip":
        pytest.skip(result.reason)
    assert result.verdict == "pass", result.reason
    return result.facts


@pytest.mark.timeout(60)
@pytest.mark.parametrize("memory", ["anon", "memfd-private", "hugetlb-private"])
def test_pinned_private_pages_are_copied_at_fork_with_their_bit(results, memory):
    facts = _facts(results, "wp-fork-pin", memory)["pinned_before_fork"]
    with_event, without = facts["with_event_fork"], facts["without_event_fork"]
    if "copied_at_fork" not in with_event:
        pytest.skip("PFNs unreadable: needs CAP_SYS_ADMIN")
    assert with_event["copied_at_fork"] == without["copied_at_fork"] == [0, 1]
    assert with_event["child_wp_pages"] == with_event["parent_wp_pages"]
    assert with_event["child_faults"] == [["WRITE", "WP"]] * len(with_event["parent_wp_pages"])
    assert without["child_wp_pages"] == [] and "child_faults" not in without


@pytest.mark.timeout(60)
@pytest.mark.parametrize("memory", ["anon", "memfd", "hugetlb-private"])
def test_a_write_pin_in_the_child_faults_on_its_protected_pages(results, memory):
    facts = _facts(results, "wp-fork-pin", memory)["pinned_in_child"]
    with_event, without = facts["with_event_fork"], facts["without_event_fork"]
    assert with_event["child_pin"] == without["child_pin"] == "ok"
    assert with_event["child_wp_pages_at_fork"] == with_event["parent_wp_pages"]
    assert without["child_wp_pages_at_fork"] == []
    # the pin's own WP faults (pages 0-1), then the child's write to the rest
    assert with_event["child_faults"] == [["WRITE", "WP"]] * len(with_event["parent_wp_pages"])
    assert 0 not in with_event["child_wp_pages_after_pin"]
    assert without["child_wp_pages_after_pin"] == [] and "child_faults" not in without
    if "copied_by_pin" in with_event:
        shared = memory == "memfd"
        assert with_event["copied_by_pin"] == ([] if shared else [0, 1])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("memory", ["shmem", "hugetlb"])
def test_pinned_shared_pages_are_never_copied(results, memory):
    facts = _facts(results, "wp-fork-pin", memory)["pinned_before_fork"]
    assert facts["with_event_fork"].get("copied_at_fork", []) == []


@pytest.mark.timeout(60)
def test_user_mode_only_kernel_accesses_get_efault(results):
    facts = _facts(results, "user-mode-only-efault", "anon")
    assert facts["read_into_registered"] == facts["write_from_registered"] == "EFAULT"
    assert facts["user_mode_fault"] == {"event": "PagefaultEvent", "flags": [], "page": 0}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("memory", ["anon", "memfd", "hugetlb"])
def test_remove_during_fault_gives_eagain_then_resolves(results, memory):
    facts = _facts(results, "remove-during-fault", memory)
    assert facts["copy_while_remove_pending"] == "EAGAIN"
    assert facts["copy_after_event_read"] == "ok"
    assert facts["removed_page_fault"]["page"] == 1


@pytest.mark.timeout(60)
def test_map_fixed_replacement_reports_the_unmap_only_with_event_unmap(results):
    facts = _facts(results, "map-fixed-replaced", "memfd")
    assert "event" not in facts["without_event_unmap"]
    start, end = facts["with_event_unmap"]["old_range"]
    assert facts["with_event_unmap"]["event"] == {"event": "UnmapEvent", "start": start, "end": end}


# --- each can fail -------------------------------------------------------------------------------


class _NoPin:
    """A LongTermPin that pins nothing."""

    def __init__(self, addr: int, length: int) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.mark.timeout(60)
def test_wp_fork_pin_fails_when_nothing_is_pinned(monkeypatch):
    monkeypatch.setattr(wp_fork, "LongTermPin", _NoPin)
    (result,) = _run("wp-fork-pin", "anon")
    if result.verdict == "skip":
        pytest.skip(result.reason)
    assert result.verdict == "fail"
    if "copied_at_fork" in result.facts["pinned_before_fork"]["with_event_fork"]:
        wanted = "pinned_before_fork.with_event_fork.copied_at_fork: [], expected [0, 1]"
        assert wanted in result.reason


@pytest.mark.timeout(60)
def test_user_mode_only_efault_fails_on_a_uffd_that_takes_kernel_faults(monkeypatch):
    opened = context.Context.uffd

    def uffd_taking_kernel_faults(self, *args, **kwargs):
        kwargs["user_mode_only"] = False
        return opened(self, *args, **kwargs)

    if system.facts().user_mode_only:
        pytest.skip("this process cannot open a uffd that takes kernel-mode faults")
    monkeypatch.setattr(context.Context, "uffd", uffd_taking_kernel_faults)
    (result,) = _run("user-mode-only-efault", "anon")
    assert result.verdict == "fail"
    assert "read_into_registered_returned: False, expected True" in result.reason


@pytest.mark.timeout(60)
def test_wp_swap_logic_on_present_pages(monkeypatch):
    """Without swap, run wp-swap's variants on pages MADV_PAGEOUT left present (anon) or
    unmapped behind a marker (shmem), swap taken as given: the mremap and fork rules are
    those of swap entries, so the scenario's own logic passes; only the swap part is
    unproven here."""
    monkeypatch.setattr(context.Context, "require_swap", lambda self: None)
    monkeypatch.setattr(wp_swap, "swapped_bytes", lambda region: region.length)
    for result in _run("wp-swap"):
        assert result.verdict == "pass", (result.name, result.reason)
        mremap = result.facts["mremap"]
        assert mremap["without_event_remap"]["wp_pages_after_move"] == []
        assert mremap["with_event_remap"]["wp_pages_after_move"] == [0, 1]
        assert result.facts["fork"]["with_event_fork"]["child_wp_pages"] == [0, 1]


@pytest.mark.timeout(60)
def test_wp_swap_names_a_partial_swap_out(monkeypatch):
    monkeypatch.setattr(context.Context, "require_swap", lambda self: None)
    monkeypatch.setattr(wp_swap, "swapped_bytes", lambda region: region.page_size)
    (result,) = _run("wp-swap", "anon")
    assert result.verdict == "skip"
    assert result.reason.startswith("MADV_PAGEOUT swapped out 4096 of 8192 bytes")


def test_known_bugs_match_their_signatures_only():
    pin_bug = CATALOGUE["wp-fork-pin"].known_bug
    lost = {"pinned_before_fork": {"with_event_fork": {"lost_wp_pages": [0, 1]}}}
    assert pin_bug.shown_by(lost, "hugetlb-private")
    assert not pin_bug.shown_by(lost, "anon")  # the anon fix (5.13) predates pagemap's bit
    kept = {"pinned_in_child": {"without_event_fork": {"child_wp_pages_at_fork": [0]}}}
    assert pin_bug.shown_by(kept, "hugetlb-private")
    fixed = {"pinned_before_fork": {"with_event_fork": {"lost_wp_pages": []}}}
    assert not pin_bug.shown_by(fixed, "hugetlb-private")
    swap_bug = CATALOGUE["wp-swap"].known_bug
    assert swap_bug.fix == WP_MREMAP_FIX.fix
    moved = {"mremap": {"without_event_remap": {"wp_pages_after_move": [0, 1]}}}
    assert swap_bug.shown_by(moved, "anon")
    assert not swap_bug.shown_by({"mremap": {"with_event_remap": {}}}, "anon")


# --- the io_uring pin ----------------------------------------------------------------------------


def test_refusal_reasons_name_the_cause():
    assert "CONFIG_IO_URING" in pin.refusal_reason(errno.ENOSYS, None)
    assert "kernel.io_uring_disabled=2" in pin.refusal_reason(errno.EPERM, 2)
    assert "kernel.io_uring_disabled=1" in pin.refusal_reason(errno.EPERM, 1)
    assert pin.refusal_reason(errno.ENOMEM, 0) == "io_uring_setup refused: ENOMEM " + (
        f"({os.strerror(errno.ENOMEM)})"
    )


@pytest.mark.timeout(30)
def test_long_term_pin_owns_its_ring_and_refuses_an_unmapped_buffer():
    if pin.unavailable_reason():
        pytest.skip(pin.unavailable_reason())
    before = open_fds()
    with allocate("anon", 2) as region:
        region.fill(b"x")
        with pin.LongTermPin(region.addr, region.length) as held:
            assert not held.closed and len(open_fds() - before) == 1
        assert held.closed
        with Reservation(region.length) as inaccessible, pytest.raises(UffdError) as refused:
            pin.LongTermPin(inaccessible.start, region.length)  # PROT_NONE: nothing to pin
        assert refused.value.op == "IORING_REGISTER_BUFFERS"
        assert refused.value.errno_name == "EFAULT"
    assert open_fds() == before


@pytest.mark.timeout(30)
@pytest.mark.requires_hugepages(1)
def test_closing_a_pin_gives_its_hugepage_back_at_once():
    """The ring's own teardown unpins later (io_ring_exit_work): close() unregisters the
    buffer first, so the page is free the moment the mapping goes."""
    if pin.unavailable_reason():
        pytest.skip(pin.unavailable_reason())
    free_before = hugepages.free_pages()
    with allocate("hugetlb-private", 1) as region:
        region.fill(b"p")
        with pin.LongTermPin(region.addr, region.length):
            assert hugepages.free_pages() == free_before - 1
    assert hugepages.free_pages() == free_before


def _pinned_in_child_facts(child_pin: str, after_pin: list[int], copied: list[int]) -> dict:
    return {
        "parent_wp_pages_after_fork": [0, 1],
        "parent_wp_pages": [0, 1],
        "parent_pfns_kept": True,
        "child": "ok",
        "child_wp_pages_at_fork": [0, 1],
        "child_pin_finished": True,
        "child_pin": child_pin,
        "pinned_pages": [0, 1],
        "child_wp_pages_after_pin": after_pin,
        "child_vm_flags": ["uw"],
        "child_write_finished": True,
        "child_data_intact": True,
        "child_wp_pages_after_write": [],
        "copied_by_pin": copied,
        "fork_events": 1,
        "child_faults": [["WRITE", "WP"], ["WRITE", "WP"]],
    }


@pytest.mark.parametrize(
    ("release", "refused_ok", "served_ok"), [("6.1.0", True, False), ("6.12.0", False, True)]
)
def test_child_pin_is_efault_before_gup_can_wait_for_a_handler(release, refused_ok, served_ok):
    """Before 6.5 io_uring's pin cannot wait for the child's uffd handler: EFAULT, no page
    changed (measured on Debian's 6.1); from it the pin's faults are served."""
    from types import SimpleNamespace

    from uffdharness.abi import FaultFlag, flag_names
    from uffdharness.kernelversion import parse
    from uffdharness.memory import SPECS
    from uffdharness.scenarios.wp_fork import _judge_pinned_in_child

    ctx = SimpleNamespace(kernel=parse(release), spec=SPECS["anon"])
    faults = [flag_names(FaultFlag.WP | FaultFlag.WRITE)] * 2
    refused = _pinned_in_child_facts("EFAULT", [0, 1], []) | {"child_faults": faults}
    served = _pinned_in_child_facts("ok", [], [0, 1]) | {"child_faults": faults}
    assert _judge_pinned_in_child(ctx, "with_event_fork", refused).ok is refused_ok
    assert _judge_pinned_in_child(ctx, "with_event_fork", served).ok is served_ok
