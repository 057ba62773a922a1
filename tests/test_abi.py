"""The vendored ABI matches the kernel's numbers (checked against the running kernel too)."""

from uffdharness._native import ffi

from uffdharness import abi


def test_struct_sizes_match_uapi():
    sizes = {
        "struct uh_uffd_msg": 32,
        "struct uh_uffdio_api": 24,
        "struct uh_uffdio_range": 16,
        "struct uh_uffdio_register": 32,
        "struct uh_uffdio_copy": 40,
        "struct uh_uffdio_zeropage": 32,
        "struct uh_uffdio_writeprotect": 24,
        "struct uh_uffdio_continue": 32,
        "struct uh_uffdio_poison": 32,
        "struct uh_uffdio_move": 40,
        "struct uh_uffdio_rwprotect": 24,
        "struct uh_uffdio_set_mode": 16,
        "struct uh_pm_scan_arg": 96,
        "struct uh_page_region": 24,
    }
    assert {name: ffi.sizeof(name) for name in sizes} == sizes


def test_ioctl_request_codes():
    # _IOWR(0xAA, nr, size) = 0xC0000000 | size << 16 | 0xAA << 8 | nr; _IOR uses 0x80000000.
    assert abi.IoctlRequest.API == 0xC018AA3F
    assert abi.IoctlRequest.REGISTER == 0xC020AA00
    assert abi.IoctlRequest.UNREGISTER == 0x8010AA01
    assert abi.IoctlRequest.WAKE == 0x8010AA02
    assert abi.IoctlRequest.COPY == 0xC028AA03
    assert abi.IoctlRequest.ZEROPAGE == 0xC020AA04
    assert abi.IoctlRequest.MOVE == 0xC028AA05
    assert abi.IoctlRequest.WRITEPROTECT == 0xC018AA06
    assert abi.IoctlRequest.CONTINUE == 0xC020AA07
    assert abi.IoctlRequest.POISON == 0xC020AA08
    assert abi.IoctlRequest.RWPROTECT == 0xC018AA09  # 7.3
    assert abi.IoctlRequest.SET_MODE == 0x4010AA0A  # 7.3, _IOW: 0x40000000 | 16 << 16
    assert abi.IoctlRequest.USERFAULTFD_IOC_NEW == 0xAA00
    assert abi.IoctlRequest.PAGEMAP_SCAN == 0xC0606610


def test_feature_bits_and_versions():
    assert abi.Feature.MOVE == 1 << 16
    assert abi.Feature.WP_ASYNC == 1 << 15
    assert (abi.Feature.RWP, abi.Feature.RWP_ASYNC) == (1 << 17, 1 << 18)  # 7.3
    assert abi.ALL_FEATURES == (1 << 19) - 1
    assert set(abi.FEATURE_SINCE) == set(abi.Feature)
    assert set(abi.IOCTL_SINCE) == set(abi.Ioctl)
    assert abi.RegisterMode.RWP == 1 << 3
    assert (abi.RwprotectMode.RWP, abi.RwprotectMode.DONTWAKE) == (1, 2)
    assert (abi.PageCategory.GUARD, abi.PageCategory.ACCESSED) == (1 << 8, 1 << 9)


def test_event_and_flag_values():
    assert [e.value for e in abi.EventType] == [0x12, 0x13, 0x14, 0x15, 0x16]
    assert (abi.FaultFlag.WRITE, abi.FaultFlag.WP, abi.FaultFlag.MINOR) == (1, 2, 4)
    assert abi.FaultFlag.RWP == 8
    assert abi.Ioctl.API == 1 << 0x3F


def test_flag_names_print_names_and_unknown_bits():
    value = abi.Feature.MOVE | abi.Feature.PAGEFAULT_FLAG_WP | abi.Feature(1 << 40)
    assert abi.flag_names(value) == ["PAGEFAULT_FLAG_WP", "MOVE", hex(1 << 40)]
