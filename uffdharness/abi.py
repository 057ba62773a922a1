"""userfaultfd ABI constants as enums whose names print in messages.

Values come from the vendored UAPI in cext/uffd_abi.h through the compiled module, so the
header is the single source of truth.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from ._native import ffi, lib

UFFD_API = lib.UH_UFFD_API
MSG_SIZE = ffi.sizeof("struct uh_uffd_msg")


class Feature(IntFlag):
    """uffdio_api.features bits."""

    PAGEFAULT_FLAG_WP = lib.UH_UFFD_FEATURE_PAGEFAULT_FLAG_WP
    EVENT_FORK = lib.UH_UFFD_FEATURE_EVENT_FORK
    EVENT_REMAP = lib.UH_UFFD_FEATURE_EVENT_REMAP
    EVENT_REMOVE = lib.UH_UFFD_FEATURE_EVENT_REMOVE
    MISSING_HUGETLBFS = lib.UH_UFFD_FEATURE_MISSING_HUGETLBFS
    MISSING_SHMEM = lib.UH_UFFD_FEATURE_MISSING_SHMEM
    EVENT_UNMAP = lib.UH_UFFD_FEATURE_EVENT_UNMAP
    SIGBUS = lib.UH_UFFD_FEATURE_SIGBUS
    THREAD_ID = lib.UH_UFFD_FEATURE_THREAD_ID
    MINOR_HUGETLBFS = lib.UH_UFFD_FEATURE_MINOR_HUGETLBFS
    MINOR_SHMEM = lib.UH_UFFD_FEATURE_MINOR_SHMEM
    EXACT_ADDRESS = lib.UH_UFFD_FEATURE_EXACT_ADDRESS
    WP_HUGETLBFS_SHMEM = lib.UH_UFFD_FEATURE_WP_HUGETLBFS_SHMEM
    WP_UNPOPULATED = lib.UH_UFFD_FEATURE_WP_UNPOPULATED
    POISON = lib.UH_UFFD_FEATURE_POISON
    WP_ASYNC = lib.UH_UFFD_FEATURE_WP_ASYNC
    MOVE = lib.UH_UFFD_FEATURE_MOVE
    RWP = lib.UH_UFFD_FEATURE_RWP
    RWP_ASYNC = lib.UH_UFFD_FEATURE_RWP_ASYNC


# Mainline release that added each feature; used in skip reasons and matrix expectations.
FEATURE_SINCE: dict[Feature, tuple[int, int]] = {
    Feature.PAGEFAULT_FLAG_WP: (5, 10),
    Feature.EVENT_FORK: (4, 11),
    Feature.EVENT_REMAP: (4, 11),
    Feature.EVENT_REMOVE: (4, 11),
    Feature.MISSING_HUGETLBFS: (4, 11),
    Feature.MISSING_SHMEM: (4, 11),
    Feature.EVENT_UNMAP: (4, 11),
    Feature.SIGBUS: (4, 14),
    Feature.THREAD_ID: (4, 14),
    Feature.MINOR_HUGETLBFS: (5, 13),
    Feature.MINOR_SHMEM: (5, 14),
    Feature.EXACT_ADDRESS: (5, 18),
    Feature.WP_HUGETLBFS_SHMEM: (5, 19),
    Feature.WP_UNPOPULATED: (6, 4),
    Feature.POISON: (6, 6),
    Feature.WP_ASYNC: (6, 7),
    Feature.MOVE: (6, 8),
    # 7.3 offers both only when built with CONFIG_USERFAULTFD_RWP (def_bool y on 64-bit
    # with ARCH_HAS_PTE_PROTNONE and HAVE_ARCH_USERFAULTFD_WP: x86-64, arm64, ...).
    Feature.RWP: (7, 3),
    Feature.RWP_ASYNC: (7, 3),
}


# Features UFFDIO_API grants only to a caller holding a capability (in the initial user
# namespace): userfaultfd_api() in fs/userfaultfd.c refuses EVENT_FORK with EPERM unless
# capable(CAP_SYS_PTRACE), since the child's uffd lets the handler reach another mm.
FEATURE_CAPABILITY: dict[Feature, str] = {
    Feature.EVENT_FORK: "CAP_SYS_PTRACE",
}


# Features UFFDIO_API accepts only together with another in the same call (else EINVAL).
FEATURE_NEEDS: dict[Feature, Feature] = {
    Feature.RWP_ASYNC: Feature.RWP,  # userfaultfd_api(): "RWP_ASYNC requires RWP" (7.3)
}


def capabilities_needed(features: Feature) -> dict[str, str]:
    """{feature name: capability} for the bits of ``features`` that need a capability."""
    return {
        feature.name: capability
        for feature, capability in FEATURE_CAPABILITY.items()
        if feature in features and feature.name
    }


def missing_features(wanted: Feature, offered: Feature) -> Feature:
    """The bits of ``wanted`` that ``offered`` lacks (IntFlag's ~ only inverts known bits)."""
    return Feature(int(wanted) & ~int(offered))


def missing_features_reason(missing: Feature) -> str:
    """ "kernel lacks UFFD_FEATURE_X (added in A.B), ..." for a skip."""
    parts = []
    for name in flag_names(missing):
        since = FEATURE_SINCE.get(Feature[name]) if name in Feature.__members__ else None
        added = f" (added in {since[0]}.{since[1]})" if since else ""
        parts.append(f"UFFD_FEATURE_{name}{added}")
    return "kernel lacks " + ", ".join(parts)


ALL_FEATURES = Feature(0)
for _feature in Feature:
    ALL_FEATURES |= _feature


# Features that change no behaviour unless used: no EVENT_* (each blocks the triggering
# syscall until its message is read), no SIGBUS, WP_ASYNC, WP_UNPOPULATED or EXACT_ADDRESS.
PASSIVE_FEATURES = (
    Feature.PAGEFAULT_FLAG_WP
    | Feature.MISSING_HUGETLBFS
    | Feature.MISSING_SHMEM
    | Feature.MINOR_HUGETLBFS
    | Feature.MINOR_SHMEM
    | Feature.WP_HUGETLBFS_SHMEM
    | Feature.THREAD_ID
    | Feature.POISON
    | Feature.MOVE
)


class Ioctl(IntFlag):
    """Masks returned in uffdio_api.ioctls and uffdio_register.ioctls."""

    REGISTER = 1 << lib.UH__UFFDIO_REGISTER
    UNREGISTER = 1 << lib.UH__UFFDIO_UNREGISTER
    WAKE = 1 << lib.UH__UFFDIO_WAKE
    COPY = 1 << lib.UH__UFFDIO_COPY
    ZEROPAGE = 1 << lib.UH__UFFDIO_ZEROPAGE
    MOVE = 1 << lib.UH__UFFDIO_MOVE
    WRITEPROTECT = 1 << lib.UH__UFFDIO_WRITEPROTECT
    CONTINUE = 1 << lib.UH__UFFDIO_CONTINUE
    POISON = 1 << lib.UH__UFFDIO_POISON
    RWPROTECT = 1 << lib.UH__UFFDIO_RWPROTECT
    SET_MODE = 1 << lib.UH__UFFDIO_SET_MODE
    API = 1 << lib.UH__UFFDIO_API


# Mainline release that added each ioctl (uffdio_api.ioctls / uffdio_register.ioctls bits).
IOCTL_SINCE: dict[Ioctl, tuple[int, int]] = {
    Ioctl.REGISTER: (4, 3),
    Ioctl.UNREGISTER: (4, 3),
    Ioctl.WAKE: (4, 3),
    Ioctl.COPY: (4, 3),
    Ioctl.ZEROPAGE: (4, 3),
    Ioctl.API: (4, 3),
    Ioctl.WRITEPROTECT: (5, 7),
    Ioctl.CONTINUE: (5, 13),
    Ioctl.POISON: (6, 6),
    Ioctl.MOVE: (6, 8),
    # UFFD_API_IOCTLS (the fd-level ioctls UFFDIO_API reports) gained SET_MODE in 7.3,
    # unconditionally: without CONFIG_USERFAULTFD_RWP it then refuses every bit (EINVAL).
    Ioctl.RWPROTECT: (7, 3),
    Ioctl.SET_MODE: (7, 3),
}
# The ioctls usable on the uffd itself, before any register (UFFD_API_IOCTLS).
API_IOCTLS = Ioctl.API | Ioctl.REGISTER | Ioctl.UNREGISTER | Ioctl.SET_MODE


class IoctlRequest(IntEnum):
    """Full ioctl(2) request codes (direction, size, type 0xAA, number)."""

    API = lib.UH_UFFDIO_API
    REGISTER = lib.UH_UFFDIO_REGISTER
    UNREGISTER = lib.UH_UFFDIO_UNREGISTER
    WAKE = lib.UH_UFFDIO_WAKE
    COPY = lib.UH_UFFDIO_COPY
    ZEROPAGE = lib.UH_UFFDIO_ZEROPAGE
    MOVE = lib.UH_UFFDIO_MOVE
    WRITEPROTECT = lib.UH_UFFDIO_WRITEPROTECT
    CONTINUE = lib.UH_UFFDIO_CONTINUE
    POISON = lib.UH_UFFDIO_POISON
    RWPROTECT = lib.UH_UFFDIO_RWPROTECT
    SET_MODE = lib.UH_UFFDIO_SET_MODE
    USERFAULTFD_IOC_NEW = lib.UH_USERFAULTFD_IOC_NEW
    PAGEMAP_SCAN = lib.UH_PAGEMAP_SCAN


class RegisterMode(IntFlag):
    MISSING = lib.UH_UFFDIO_REGISTER_MODE_MISSING
    WP = lib.UH_UFFDIO_REGISTER_MODE_WP
    MINOR = lib.UH_UFFDIO_REGISTER_MODE_MINOR
    RWP = lib.UH_UFFDIO_REGISTER_MODE_RWP  # 7.3


class CopyMode(IntFlag):
    DONTWAKE = lib.UH_UFFDIO_COPY_MODE_DONTWAKE
    WP = lib.UH_UFFDIO_COPY_MODE_WP


class ZeropageMode(IntFlag):
    DONTWAKE = lib.UH_UFFDIO_ZEROPAGE_MODE_DONTWAKE


class WriteProtectMode(IntFlag):
    WP = lib.UH_UFFDIO_WRITEPROTECT_MODE_WP
    DONTWAKE = lib.UH_UFFDIO_WRITEPROTECT_MODE_DONTWAKE


class ContinueMode(IntFlag):
    DONTWAKE = lib.UH_UFFDIO_CONTINUE_MODE_DONTWAKE
    WP = lib.UH_UFFDIO_CONTINUE_MODE_WP


class PoisonMode(IntFlag):
    DONTWAKE = lib.UH_UFFDIO_POISON_MODE_DONTWAKE


class MoveMode(IntFlag):
    DONTWAKE = lib.UH_UFFDIO_MOVE_MODE_DONTWAKE
    ALLOW_SRC_HOLES = lib.UH_UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES


class RwprotectMode(IntFlag):
    """uffdio_rwprotect.mode (7.3): RWP protects; without it, unprotect and wake."""

    RWP = lib.UH_UFFDIO_RWPROTECT_MODE_RWP
    DONTWAKE = lib.UH_UFFDIO_RWPROTECT_MODE_DONTWAKE


class FaultFlag(IntFlag):
    """uffd_msg.arg.pagefault.flags."""

    WRITE = lib.UH_UFFD_PAGEFAULT_FLAG_WRITE
    WP = lib.UH_UFFD_PAGEFAULT_FLAG_WP
    MINOR = lib.UH_UFFD_PAGEFAULT_FLAG_MINOR
    RWP = lib.UH_UFFD_PAGEFAULT_FLAG_RWP  # 7.3: an access to a read-write-protected page


class EventType(IntEnum):
    """uffd_msg.event."""

    PAGEFAULT = lib.UH_UFFD_EVENT_PAGEFAULT
    FORK = lib.UH_UFFD_EVENT_FORK
    REMAP = lib.UH_UFFD_EVENT_REMAP
    REMOVE = lib.UH_UFFD_EVENT_REMOVE
    UNMAP = lib.UH_UFFD_EVENT_UNMAP


class OpenFlag(IntFlag):
    """Flags of userfaultfd(2) and USERFAULTFD_IOC_NEW."""

    CLOEXEC = 0o2000000  # O_CLOEXEC
    NONBLOCK = 0o4000  # O_NONBLOCK
    USER_MODE_ONLY = lib.UH_UFFD_USER_MODE_ONLY


class PageCategory(IntFlag):
    """PAGEMAP_SCAN page_region.categories (6.7)."""

    WPALLOWED = lib.UH_PAGE_IS_WPALLOWED
    WRITTEN = lib.UH_PAGE_IS_WRITTEN
    FILE = lib.UH_PAGE_IS_FILE
    PRESENT = lib.UH_PAGE_IS_PRESENT
    SWAPPED = lib.UH_PAGE_IS_SWAPPED
    PFNZERO = lib.UH_PAGE_IS_PFNZERO
    HUGE = lib.UH_PAGE_IS_HUGE
    SOFT_DIRTY = lib.UH_PAGE_IS_SOFT_DIRTY
    GUARD = lib.UH_PAGE_IS_GUARD  # a guard region (MADV_GUARD_INSTALL); 6.18 has it
    ACCESSED = lib.UH_PAGE_IS_ACCESSED  # 7.3: accessed since RWPROTECT on a VM_UFFD_RWP VMA


class ScanFlag(IntFlag):
    WP_MATCHING = lib.UH_PM_SCAN_WP_MATCHING
    CHECK_WPASYNC = lib.UH_PM_SCAN_CHECK_WPASYNC


def flag_names(value: IntFlag) -> list[str]:
    """Names of the set bits, then each bit this ABI does not know as hex (a kernel newer
    than the vendored UAPI offers such bits): stable output for reports."""
    names = [member.name for member in type(value) if member in value and member.name]
    return names + [hex(bit) for bit in unknown_bits(value)]


def unknown_bits(value: IntFlag) -> list[int]:
    """The set bits of ``value`` that no member of its type names, lowest first."""
    known = 0
    for member in type(value):
        known |= member.value
    unknown = int(value) & ~known
    return [1 << position for position in range(unknown.bit_length()) if unknown >> position & 1]
