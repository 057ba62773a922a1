"""Userfaultfd against the real kernel: every ioctl on every memory kind it applies to,
every error path, typed events. Anything that can fault runs in a killable child."""

from __future__ import annotations

import errno
import os
import threading

import pytest
from conftest import ALL_KINDS, PASSIVE_FEATURES, open_fds
from uffdharness._native import lib

from uffdharness import syscalls as sc
from uffdharness.abi import (
    ContinueMode,
    CopyMode,
    FaultFlag,
    Feature,
    Ioctl,
    MoveMode,
    OpenFlag,
    RegisterMode,
    WriteProtectMode,
)
from uffdharness.errors import FeatureUnavailable, RegisteredSourceError, UffdError
from uffdharness.events import (
    ForkEvent,
    PagefaultEvent,
    RemapEvent,
    RemoveEvent,
    UnmapEvent,
)
from uffdharness.isolation import run_in_child
from uffdharness.memory import MemoryKind, allocate
from uffdharness.uffd import Userfaultfd, probe_api


def in_child(fn, timeout: float = 10.0):
    return run_in_child(fn, timeout=timeout).unwrap()


def fd_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as info:
        for line in info:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError("no flags line")


# --- opening and API ------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["syscall", "dev"])
def test_open_via_each_path_reports_which(via):
    if via == "dev" and not os.access("/dev/userfaultfd", os.R_OK | os.W_OK):
        pytest.skip("/dev/userfaultfd absent or not accessible (needs 6.1 and permission)")
    with Userfaultfd.open(via=via) as uffd:
        assert uffd.opened_via == ("syscall" if via == "syscall" else "/dev/userfaultfd")
        assert uffd.fileno() >= 0


def test_open_flags_reach_the_fd():
    with Userfaultfd.open(cloexec=True, nonblock=True) as uffd:
        flags = fd_flags(uffd.fileno())
        assert flags & OpenFlag.CLOEXEC and flags & OpenFlag.NONBLOCK
    with Userfaultfd.open(cloexec=False, nonblock=False) as uffd:
        flags = fd_flags(uffd.fileno())
        assert not flags & OpenFlag.CLOEXEC and not flags & OpenFlag.NONBLOCK


def test_user_mode_only_opens():
    with Userfaultfd.open(user_mode_only=True) as uffd:
        assert uffd.fileno() >= 0


def test_close_is_idempotent_and_frees_the_fd():
    before = open_fds()
    uffd = Userfaultfd.open()
    uffd.close()
    uffd.close()
    assert uffd.closed
    assert open_fds() == before
    with pytest.raises(ValueError):
        uffd.fileno()


def test_api_grants_requested_features_and_reports_offered():
    offered = probe_api().features
    with Userfaultfd.open(api=False) as uffd:
        result = uffd.api(Feature.THREAD_ID)
    assert result.features == Feature.THREAD_ID
    assert result.offered == offered
    assert result.ioctls == Ioctl.API | Ioctl.REGISTER | Ioctl.UNREGISTER


def test_api_twice_is_einval():
    with Userfaultfd.open() as uffd:
        with pytest.raises(UffdError) as info:
            uffd.api_raw(0)
    assert info.value.errno_name == "EINVAL" and info.value.op == "UFFDIO_API"


def test_unknown_feature_bits_refused_by_kernel_and_by_us():
    with Userfaultfd.open(api=False) as uffd:
        with pytest.raises(UffdError) as kernel:
            uffd.api_raw(1 << 40)
        assert kernel.value.errno == errno.EINVAL
        with pytest.raises(UffdError) as ours:
            uffd.api(Feature(1 << 40))
        assert "unknown feature bits" in str(ours.value)


def test_missing_feature_is_named(monkeypatch):
    import uffdharness.uffd as uffd_module

    probe = probe_api()
    fake = uffd_module.ApiProbe(probe.features & ~Feature.MOVE, probe.ioctls, probe.opened_via)
    monkeypatch.setattr(uffd_module, "probe_api", lambda **flags: fake)
    with pytest.raises(FeatureUnavailable) as info:
        Userfaultfd.open(Feature.MOVE | Feature.THREAD_ID)
    assert info.value.missing == ["MOVE"]
    assert "kernel lacks feature(s) MOVE" in str(info.value)


def test_probe_is_cached_per_open_flag_set():
    full = probe_api()
    user_mode_only = probe_api(user_mode_only=True)
    assert probe_api(user_mode_only=True) is user_mode_only  # cached, not reopened
    assert user_mode_only is not full
    # UFFD_USER_MODE_ONLY restricts which faults are queued, not what UFFDIO_API offers.
    assert user_mode_only.features == full.features


def test_open_user_mode_only_with_features_is_recorded():
    with Userfaultfd.open(Feature.THREAD_ID, user_mode_only=True) as uffd:
        assert uffd.user_mode_only and uffd.features == Feature.THREAD_ID
    with Userfaultfd.open() as uffd:
        assert not uffd.user_mode_only


def test_bad_api_version_is_einval():
    with Userfaultfd.open(api=False) as uffd:
        with pytest.raises(UffdError) as info:
            uffd.api_raw(0, api=0x55)
    assert info.value.errno == errno.EINVAL


def test_read_before_api_fails_instead_of_blocking():
    with Userfaultfd.open(api=False, nonblock=False) as uffd:
        with pytest.raises(UffdError) as info:
            uffd.read_events()
    assert info.value.errno == errno.EINVAL


# --- register / unregister ----------------------------------------------------------------------

REGISTER_IOCTLS = {
    ("anon", "MISSING"): Ioctl.WAKE | Ioctl.COPY | Ioctl.ZEROPAGE | Ioctl.MOVE | Ioctl.POISON,
    ("shmem", "MINOR"): Ioctl.WAKE
    | Ioctl.COPY
    | Ioctl.ZEROPAGE
    | Ioctl.MOVE
    | Ioctl.CONTINUE
    | Ioctl.POISON,
    ("hugetlb", "MISSING"): Ioctl.WAKE | Ioctl.COPY | Ioctl.POISON,
    ("hugetlb", "WP"): Ioctl.WAKE | Ioctl.COPY | Ioctl.WRITEPROTECT | Ioctl.POISON,
    ("hugetlb", "MINOR"): Ioctl.WAKE | Ioctl.COPY | Ioctl.CONTINUE | Ioctl.POISON,
}


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("mode", ["MISSING", "WP", "MINOR"])
def test_register_each_kind_and_mode(kind, mode, uffd, region_factory):
    region = region_factory(kind, 2)
    if mode == "MINOR" and kind == "anon":
        with pytest.raises(UffdError) as info:
            uffd.register(region, mode=RegisterMode.MINOR)
        assert info.value.errno_name == "EINVAL"  # minor faults need a page cache
        return
    ioctls = uffd.register(region, mode=RegisterMode[mode])
    assert Ioctl.WAKE in ioctls and Ioctl.COPY in ioctls
    assert (Ioctl.WRITEPROTECT in ioctls) == (mode == "WP")
    assert (Ioctl.CONTINUE in ioctls) == (mode == "MINOR")
    assert (Ioctl.ZEROPAGE in ioctls) == (not MemoryKind(kind).is_hugetlb)
    expected = REGISTER_IOCTLS.get((kind, mode))
    if expected is not None:
        assert ioctls == expected
    uffd.unregister(region)


def test_register_regular_file_is_einval(uffd, tmp_path):
    with allocate("file", 2, path=str(tmp_path / "backing file")) as region:
        with pytest.raises(UffdError) as info:
            uffd.register(region)
    assert info.value.errno_name == "EINVAL"


@pytest.mark.parametrize(
    "case",
    ["unaligned-address", "unaligned-length", "zero-length", "unknown-mode", "no-mode", "unmapped"],
)
def test_register_error_paths(case, uffd, region_factory):
    region = region_factory("anon", 4)
    start, length, mode = region.addr, region.length, RegisterMode.MISSING
    if case == "unaligned-address":
        start += 1
    elif case == "unaligned-length":
        length = 100
    elif case == "zero-length":
        length = 0
    elif case == "unknown-mode":
        mode = RegisterMode(1 << 3)
    elif case == "no-mode":
        mode = RegisterMode(0)
    elif case == "unmapped":
        start = sc.mmap(0, 8192, sc.PROT_RW, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS)
        sc.munmap(start, 8192)
        length = 8192
    with pytest.raises(UffdError) as info:
        uffd.register(start, length, mode)
    error = info.value
    assert error.errno_name == "EINVAL"
    assert (error.op, error.start, error.length) == ("UFFDIO_REGISTER", start, length)
    assert f"{start:#x}" in str(error)


NOT_U64 = [-1, -4096, 1 << 64, (1 << 64) + 4096]
RANGE_CALLS = {
    "UFFDIO_REGISTER": lambda uffd, addr, length: uffd.register(addr, length),
    "UFFDIO_UNREGISTER": lambda uffd, addr, length: uffd.unregister(addr, length),
    "UFFDIO_WAKE": lambda uffd, addr, length: uffd.wake(addr, length),
    "UFFDIO_ZEROPAGE": lambda uffd, addr, length: uffd.zeropage(addr, length),
    "UFFDIO_WRITEPROTECT": lambda uffd, addr, length: uffd.writeprotect(addr, length),
    "UFFDIO_CONTINUE": lambda uffd, addr, length: uffd.continue_(addr, length),
    "UFFDIO_POISON": lambda uffd, addr, length: uffd.poison(addr, length),
    "UFFDIO_COPY": lambda uffd, addr, length: uffd.copy(addr, 0x10000, length),
    "UFFDIO_MOVE": lambda uffd, addr, length: uffd.move(addr, 0x10000, length),
}


@pytest.mark.parametrize("op", sorted(RANGE_CALLS))
@pytest.mark.parametrize("bad", NOT_U64, ids=hex)
@pytest.mark.parametrize("field", ["address", "length"])
def test_range_outside_u64_is_einval_before_the_kernel(op, bad, field, uffd):
    addr, length = (bad, 4096) if field == "address" else (0x10000, bad)
    with pytest.raises(UffdError) as info:  # not cffi's OverflowError
        RANGE_CALLS[op](uffd, addr, length)
    error = info.value
    assert (error.errno_name, error.op, error.start, error.length) == ("EINVAL", op, addr, length)
    assert f"{field} {bad:#x} is not a __u64" in str(error)


@pytest.mark.parametrize("bad", NOT_U64, ids=hex)
def test_copy_and_move_source_outside_u64_is_einval(bad, uffd):
    for op, call in (("UFFDIO_COPY", uffd.copy), ("UFFDIO_MOVE", uffd.move)):
        with pytest.raises(UffdError) as info:
            call(0x10000, bad, 4096)
        assert (info.value.errno_name, info.value.op) == ("EINVAL", op)
        assert f"source {bad:#x} is not a __u64" in str(info.value)


def test_unregister_of_unregistered_range_is_allowed(uffd, region_factory):
    region = region_factory("anon", 2)
    uffd.unregister(region)


# --- resolving ioctls, per memory kind ------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_copy_then_eexist(kind, uffd, region_factory):
    region = region_factory(kind, 2)
    uffd.register(region)
    payload = bytes(range(256)) * (region.page_size // 256)
    assert uffd.copy(region.addr, payload) == region.page_size
    assert region.read(0, region.page_size) == payload
    with pytest.raises(UffdError) as info:
        uffd.copy(region.addr, payload)
    assert (info.value.errno_name, info.value.done) == ("EEXIST", 0)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_partial_copy_reports_bytes_done(kind, uffd, region_factory):
    region = region_factory(kind, 2)
    uffd.register(region)
    page = region.page_size
    uffd.copy(region.page_addr(1), b"\x01" * page)
    with pytest.raises(UffdError) as info:
        uffd.copy(region.addr, b"\x02" * (2 * page))
    error = info.value
    # The kernel stopped at the populated second page: -EAGAIN with the first page done.
    assert (error.errno_name, error.done, error.length) == ("EAGAIN", page, 2 * page)
    assert f"{page} of {2 * page} bytes done" in str(error)
    assert region.read(0, 1) == b"\x02" and region.read(page, 1) == b"\x01"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_copy_from_region_address(kind, uffd, region_factory):
    region = region_factory(kind, 2)
    source = region_factory(kind, 2)
    source.fill_indexed(seed=7)
    uffd.register(region)
    assert uffd.copy(region.addr, source.addr, region.length) == region.length
    assert region.find_indexed_mismatch(seed=7) is None


def _copy_from_registered_source(kind: str, mode: RegisterMode) -> str:
    """COPY from an unpopulated source registered on the same uffd: the refusal, or
    "copied" (run in a child: without the refusal the ioctl never returns)."""
    with (
        Userfaultfd.open(PASSIVE_FEATURES) as uffd,
        allocate(kind, 2) as dst,
        allocate(kind, 2) as src,
    ):
        uffd.register(dst)
        uffd.register(src, mode=mode)
        try:
            uffd.copy(dst.addr, src.addr + src.page_size, src.page_size)
        except RegisteredSourceError as refusal:
            return f"{type(refusal).__name__}: {refusal}"
        return "copied"


@pytest.mark.parametrize("kind", ["anon", "shmem"])
def test_copy_from_registered_source_is_refused_not_blocked(kind):
    outcome = run_in_child(_copy_from_registered_source, kind, RegisterMode.MISSING, timeout=10)
    assert outcome.status == "ok", outcome  # "timeout" is the bug: COPY slept in the fault
    assert outcome.value.startswith("RegisteredSourceError: UFFDIO_COPY ["), outcome.value
    assert "Resource deadlock avoided" in outcome.value  # EDEADLK, Python names it EDEADLOCK
    assert "registered (MISSING) on this uffd" in outcome.value
    assert "allow_registered_source=True" in outcome.value
    assert outcome.duration_s < 5


def test_copy_from_minor_registered_source_is_refused():
    outcome = run_in_child(_copy_from_registered_source, "shmem", RegisterMode.MINOR, timeout=10)
    assert outcome.status == "ok" and "registered (MINOR)" in outcome.value, outcome


def test_copy_from_wp_only_registered_source_is_allowed(uffd, region_factory):
    # A read never raises a WP fault: the kernel's read of the source cannot block.
    dst, src = region_factory("anon", 1), region_factory("anon", 1)
    src.fill(b"wp-source")
    uffd.register(dst)
    uffd.register(src, mode=RegisterMode.WP)
    uffd.writeprotect(src)
    assert uffd.copy(dst.addr, src.addr, src.length) == src.length
    assert dst.verify(b"wp-source")


def test_registered_source_override_copies_a_populated_source(uffd, region_factory):
    dst, src = region_factory("anon", 2), region_factory("anon", 2)
    src.fill(b"populated!")
    uffd.register(dst)
    uffd.register(src)
    with pytest.raises(RegisteredSourceError) as info:  # the rule is registration
        uffd.copy(dst.addr, src.addr, src.length)
    refusal = info.value
    assert (refusal.src, refusal.registered_start) == (src.addr, src.addr)
    assert refusal.modes == ["MISSING"]
    assert isinstance(refusal, UffdError) and refusal.errno == errno.EDEADLK
    assert uffd.copy(dst.addr, src.addr, src.length, allow_registered_source=True) == src.length
    assert dst.verify(b"populated!")


def test_registered_source_refusal_crosses_a_process_boundary(uffd, region_factory):
    import pickle

    dst, src = region_factory("anon", 1), region_factory("anon", 1)
    uffd.register(dst)
    uffd.register(src)
    with pytest.raises(RegisteredSourceError) as info:
        uffd.copy(dst.addr, src.addr, src.length)
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is RegisteredSourceError and str(copy) == str(info.value)


def test_copy_after_source_unregistered_or_replaced_is_allowed(uffd, region_factory):
    dst, src = region_factory("anon", 3), region_factory("anon", 2)
    src.fill(b"source")
    uffd.register(dst)
    uffd.register(src)
    uffd.unregister(src.addr, src.page_size)  # page 0 no longer registered
    assert uffd.copy(dst.addr, src.addr, src.page_size) == src.page_size
    # Page 1 still registered in this object's table, but a MAP_FIXED mapping replaced the
    # VMA (and its registration): smaps says it is plain memory now, so no refusal.
    fixed = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_FIXED
    sc.mmap(src.addr + src.page_size, src.page_size, sc.PROT_RW, fixed)
    assert uffd.copy(dst.page_addr(1), src.addr + src.page_size, src.page_size) == src.page_size
    with pytest.raises(RegisteredSourceError):  # dst itself is registered
        uffd.copy(dst.page_addr(2), dst.addr, dst.page_size)


def _move_from_registered_hole() -> str:
    with (
        Userfaultfd.open(Feature.MOVE) as uffd,
        allocate("anon", 1) as dst,
        allocate("anon", 1) as src,
    ):
        uffd.register(dst)
        uffd.register(src)
        try:
            uffd.move(dst.addr, src.addr, src.length)
        except UffdError as error:
            return error.errno_name
        return "moved"


@pytest.mark.requires_feature("MOVE")
def test_move_from_registered_hole_is_enoent_not_a_hang():
    """Why move() refuses no registered source: move_pages() walks the source's page
    tables and never faults on them."""
    outcome = run_in_child(_move_from_registered_hole, timeout=10)
    assert (outcome.status, outcome.value) == ("ok", "ENOENT"), outcome


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_zeropage(kind, uffd, region_factory):
    region = region_factory(kind, 2)
    uffd.register(region)
    if MemoryKind(kind).is_hugetlb:
        with pytest.raises(UffdError) as info:
            uffd.zeropage(region)
        assert info.value.errno_name == "EINVAL"  # hugetlb has no zeropage
        return
    assert uffd.zeropage(region) == region.length
    assert region.verify(b"\0")


def test_copy_into_unregistered_range_is_enoent(uffd, region_factory):
    region = region_factory("anon", 1)
    with pytest.raises(UffdError) as info:
        uffd.copy(region.addr, b"x" * 4096)
    assert info.value.errno_name == "ENOENT"


def test_copy_unaligned_is_einval(uffd, region_factory):
    region = region_factory("anon", 2)
    uffd.register(region)
    with pytest.raises(UffdError) as info:
        uffd.copy(region.addr + 8, b"x" * 4096)
    assert info.value.errno_name == "EINVAL"


def test_copy_unknown_mode_bits_is_einval(uffd, region_factory):
    region = region_factory("anon", 1)
    uffd.register(region)
    with pytest.raises(UffdError) as info:
        uffd.copy(region.addr, b"x" * 4096, mode=CopyMode(1 << 5))
    assert info.value.errno_name == "EINVAL"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_writeprotect_and_copy_mode_wp(kind, uffd, region_factory):
    region = region_factory(kind, 2)
    uffd.register(region, mode=RegisterMode.MISSING | RegisterMode.WP)
    uffd.copy(region.addr, b"\x05" * region.length, mode=CopyMode.WP)
    uffd.writeprotect(region, mode=WriteProtectMode(0))
    uffd.writeprotect(region, mode=WriteProtectMode.WP)
    uffd.writeprotect(region, mode=WriteProtectMode(0))
    region.write(b"ok")  # unprotected: a write does not fault
    assert region.read(0, 2) == b"ok"


def test_writeprotect_without_wp_registration_is_enoent(uffd, region_factory):
    region = region_factory("anon", 1)
    uffd.register(region)
    region_page = b"\x01" * 4096
    uffd.copy(region.addr, region_page)
    with pytest.raises(UffdError) as info:
        uffd.writeprotect(region)
    assert info.value.errno_name == "ENOENT"


@pytest.mark.parametrize("kind", ["shmem", "memfd", "hugetlb", "hugetlb-private"])
def test_minor_fault_continue(kind, uffd, region_factory):
    region = region_factory(kind, 2)
    if kind == "shmem":
        # Shared anonymous memory has no fd to fill the page cache through: fill it
        # through the mapping before registering.
        region.fill(b"cache")
    elif MemoryKind(kind).is_hugetlb:
        # hugetlbfs has no write(2) (EINVAL): fill the page cache through a shared alias.
        region.alias().fill(b"cache")
    else:
        region.pwrite(b"cache" * (region.length // 5))
    uffd.register(region, mode=RegisterMode.MINOR)
    region.madvise(sc.MADV_DONTNEED)  # drop the PTEs, keep the page cache
    assert uffd.continue_(region) == region.length
    assert region.read(0, 5) == b"cache"
    with pytest.raises(UffdError) as info:
        uffd.continue_(region)
    assert info.value.errno_name == "EEXIST"


def test_continue_mode_wp(uffd, region_factory):
    region = region_factory("memfd", 1)
    region.pwrite(b"x" * 4096)
    uffd.register(region, mode=RegisterMode.MINOR | RegisterMode.WP)
    assert uffd.continue_(region, mode=ContinueMode.WP) == 4096
    uffd.writeprotect(region, mode=WriteProtectMode(0))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_poison_makes_access_sigbus(kind, region_factory):
    region = region_factory(kind, 2)

    def child():
        uffd = Userfaultfd.open(PASSIVE_FEATURES)
        uffd.register(region)
        assert uffd.poison(region.addr, region.page_size) == region.page_size
        region.touch(0)  # SIGBUS: kills the child

    outcome = run_in_child(child, timeout=10)
    assert outcome.status == "crashed" and outcome.signal == 7  # SIGBUS


def test_move_anon_bulk_and_errors(uffd, region_factory):
    region = region_factory("anon", 4)
    source = region_factory("anon", 4)
    source.fill_indexed(seed=3)
    uffd.register(region)
    assert uffd.move(region.addr, source.addr, 2 * 4096) == 2 * 4096
    assert region.find_indexed_mismatch(seed=3, count=2) is None
    # The source pages moved away: a plain read of them now sees fresh zero pages.
    assert source.read(0, 8) == b"\0" * 8
    # Moving onto a populated page is EEXIST.
    with pytest.raises(UffdError) as exists:
        uffd.move(region.addr, source.page_addr(2), 4096)
    assert exists.value.errno_name == "EEXIST"


def test_move_src_holes(uffd, region_factory):
    region = region_factory("anon", 2)
    source = region_factory("anon", 2)
    uffd.register(region)
    with pytest.raises(UffdError) as hole:
        uffd.move(region.addr, source.addr, 4096)
    assert hole.value.errno_name == "ENOENT"  # unpopulated source page
    moved = uffd.move(region.addr, source.addr, 4096, mode=MoveMode.ALLOW_SRC_HOLES)
    assert moved == 4096


@pytest.mark.parametrize("kind", ["shmem", "memfd", "hugetlb"])
def test_move_into_shared_memory_is_einval(kind, uffd, region_factory):
    region = region_factory(kind, 1)
    source = region_factory("anon", 1)
    source.fill(b"m")
    uffd.register(region)
    with pytest.raises(UffdError) as info:
        uffd.move(region.addr, source.addr, 4096)
    assert info.value.errno_name == "EINVAL"


def test_wake_on_range(uffd, region_factory):
    region = region_factory("anon", 1)
    uffd.register(region)
    uffd.wake(region)


# --- faults and events ---------------------------------------------------------------------------


def _fault_then_resolve(kind: str, write: bool):
    region = allocate(kind, 4)
    uffd = Userfaultfd.open(PASSIVE_FEATURES)
    uffd.register(region)
    toucher = threading.Thread(target=region.touch, args=(2,), kwargs={"write": write})
    toucher.start()
    events = uffd.read_events(timeout=5)
    fault = events[0]
    uffd.copy(region.page_addr(2), b"\x42" * region.page_size)
    toucher.join(5)
    return fault, region.page_addr(2), toucher.is_alive(), threading.get_native_id()


@pytest.mark.parametrize("write", [False, True])
def test_pagefault_event_fields(write, region_factory):
    fault, page_addr, stuck, _ = in_child(lambda: _fault_then_resolve("anon", write))
    assert isinstance(fault, PagefaultEvent)
    assert fault.address == page_addr
    assert fault.fault_kind == "missing" and fault.is_write == write
    assert fault.thread_id > 0  # THREAD_ID requested
    assert not stuck


def _wp_fault():
    region = allocate("anon", 1)
    uffd = Userfaultfd.open(PASSIVE_FEATURES)
    uffd.register(region, mode=RegisterMode.MISSING | RegisterMode.WP)
    uffd.copy(region.addr, b"\0" * 4096, mode=CopyMode.WP)
    writer = threading.Thread(target=region.write, args=(b"w",))
    writer.start()
    fault = uffd.read_events(timeout=5)[0]
    uffd.writeprotect(region, mode=WriteProtectMode(0))
    writer.join(5)
    return fault, region.addr, region.read(0, 1)


def test_wp_fault_event():
    fault, addr, data = in_child(_wp_fault)
    assert fault.address == addr
    assert fault.flags & FaultFlag.WP and fault.flags & FaultFlag.WRITE
    assert data == b"w"


def _event_remap():
    region = allocate("anon", 4)
    uffd = Userfaultfd.open(Feature.EVENT_REMAP)
    uffd.register(region)
    old, length = region.addr, region.length
    target = sc.mmap(0, length * 2, sc.PROT_NONE, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS)
    mover = threading.Thread(
        target=region.mremap, args=(length, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, target)
    )
    mover.start()
    event = uffd.read_events(timeout=5)[0]
    mover.join(5)
    return event, old, target, length


def test_remap_event():
    event, old, new, length = in_child(_event_remap)
    assert event == RemapEvent(old, new, length)


def _event_remove():
    region = allocate("anon", 4)
    uffd = Userfaultfd.open(Feature.EVENT_REMOVE)
    uffd.register(region)
    uffd.zeropage(region)
    advisor = threading.Thread(target=region.madvise, args=(sc.MADV_DONTNEED, 4096, 8192))
    advisor.start()
    event = uffd.read_events(timeout=5)[0]
    advisor.join(5)
    return event, region.addr


def test_remove_event():
    event, base = in_child(_event_remove)
    assert event == RemoveEvent(base + 4096, base + 3 * 4096)


def _event_unmap():
    region = allocate("anon", 4, guard=False)
    uffd = Userfaultfd.open(Feature.EVENT_UNMAP)
    uffd.register(region)
    unmapper = threading.Thread(target=sc.munmap, args=(region.addr + 4096, 4096))
    unmapper.start()
    event = uffd.read_events(timeout=5)[0]
    unmapper.join(5)
    return event, region.addr


def test_unmap_event():
    event, base = in_child(_event_unmap)
    assert event == UnmapEvent(base + 4096, base + 2 * 4096)


def _event_fork():
    region = allocate("anon", 2)
    uffd = Userfaultfd.open(Feature.EVENT_FORK)
    uffd.register(region)
    result = {}
    forker = threading.Thread(target=lambda: result.setdefault("pid", lib.uh_fork_and_exit(0)))
    forker.start()
    event = uffd.read_events(timeout=5)[0]
    forker.join(5)
    os.waitpid(result["pid"], 0)
    child_fd = event.uffd.fileno()
    own_fd = uffd.fileno()
    event.uffd.close()
    return type(event), child_fd, own_fd, os.path.exists(f"/proc/self/fd/{child_fd}")


def _fork_event_flags(user_mode_only: bool) -> bool:
    region = allocate("anon", 1)
    uffd = Userfaultfd.open(Feature.EVENT_FORK, user_mode_only=user_mode_only)
    uffd.register(region)
    result = {}
    forker = threading.Thread(target=lambda: result.setdefault("pid", lib.uh_fork_and_exit(0)))
    forker.start()
    event = uffd.read_events(timeout=5)[0]
    forker.join(5)
    os.waitpid(result["pid"], 0)
    with event.uffd:
        return event.uffd.user_mode_only


@pytest.mark.parametrize("user_mode_only", [False, True])
def test_fork_event_uffd_keeps_the_parents_open_flags(user_mode_only):
    # dup_userfaultfd() copies the parent ctx's flags, UFFD_USER_MODE_ONLY among them.
    assert run_in_child(_fork_event_flags, user_mode_only, timeout=10).unwrap() is user_mode_only


def test_fork_event_adopts_child_uffd():
    kind, child_fd, own_fd, still_open = in_child(_event_fork)
    assert kind is ForkEvent
    assert child_fd >= 0 and child_fd != own_fd
    assert not still_open  # the event's Userfaultfd owned it and closed it


def test_read_events_times_out_empty(uffd):
    assert uffd.read_events(timeout=0.01) == []
    assert uffd.read_events() == []


def test_no_fd_leaks_across_operations(region_factory):
    before = open_fds()
    for _ in range(3):
        with Userfaultfd.open(PASSIVE_FEATURES) as uffd, allocate("memfd", 2) as region:
            uffd.register(region)
            uffd.copy(region.addr, b"a" * 4096)
    assert open_fds() == before
