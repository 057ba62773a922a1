"""The kernel options the catalogue and the guest need: the one list, for ``uffdharness
kconfig`` and for every kernel the matrix builds.

A build starts from ``make tinyconfig`` (which turns off nearly everything, EXPERT on, so
even printk, futexes and madvise must be asked for) and adds exactly these, built in:
booting needs no modules. An option a kernel version does not define (PTE_MARKER_UFFD_WP
before 5.19, USERFAULTFD_RWP before 7.3) is harmless; one it defines but drops after
``olddefconfig`` (an unmet dependency) makes the build an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    name: str  # without the CONFIG_ prefix
    why: str
    # False for symbols without a prompt (selected or def_bool): the fragment cannot set
    # them, but a kernel that defines them must end up with them =y.
    settable: bool = True


@dataclass(frozen=True)
class Group:
    title: str
    options: tuple[Option, ...]


GROUPS: tuple[Group, ...] = (
    Group(
        "userfaultfd",
        (
            Option("USERFAULTFD", "userfaultfd(2) and /dev/userfaultfd (6.1)"),
            Option(
                "HAVE_ARCH_USERFAULTFD_WP",
                "UFFDIO_REGISTER_MODE_WP on anonymous memory (5.7; x86-64 selects it)",
                settable=False,
            ),
            Option(
                "HAVE_ARCH_USERFAULTFD_MINOR",
                "minor faults and UFFDIO_CONTINUE (5.13; x86-64 selects it)",
                settable=False,
            ),
            Option(
                "PTE_MARKER_UFFD_WP",
                "uffd-wp on shmem and hugetlb via PTE markers, kept across a zap (5.19)",
            ),
            Option(
                "USERFAULTFD_RWP",
                "read-write protection, UFFDIO_RWPROTECT (7.3; def_bool on x86-64)",
                settable=False,
            ),
        ),
    ),
    Group(
        "memory kinds and operations",
        (
            Option("SHMEM", "shmem and memfd memory (tinyconfig maps them to ramfs)"),
            Option("TMPFS", "tmpfs: the guest's /tmp, /run and /dev/shm"),
            Option("MEMFD_CREATE", "memfd_create(2): the memfd kind"),
            Option("HUGETLBFS", "MAP_HUGETLB and MFD_HUGETLB: the hugetlb kinds"),
            Option("HUGETLB_PAGE", "the hugepage pool (selected by HUGETLBFS)", settable=False),
            Option("TRANSPARENT_HUGEPAGE", "THP of anonymous and shmem memory (MOVE of a THP)"),
            Option(
                "TRANSPARENT_HUGEPAGE_MADVISE",
                "THP only where asked (MADV_HUGEPAGE), as Debian's kernels",
            ),
            Option("CMA", "CONTIG_ALLOC: 1 GiB hugepages reserved at run time (hugetlb-1g)"),
            Option("CONTIG_ALLOC", "alloc_contig_pages() (selected by CMA)", settable=False),
            Option("ADVISE_SYSCALLS", "madvise(2): MADV_DONTNEED, MADV_PAGEOUT, MADV_REMOVE"),
            Option("BLOCK", "the block layer, which SWAP needs"),
            Option("SWAP", "MADV_PAGEOUT of anonymous memory, rwp-swap"),
            Option("ZRAM", "/dev/zram0, the guest's swap device (wp-swap, rwp-swap)"),
            Option(
                "ZSMALLOC",
                "zsmalloc, zram's allocator: older kernels make ZRAM depend on it, newer select it",
            ),
            Option("CRYPTO", "the crypto API, zram's compressors before 6.12"),
            Option("CRYPTO_LZO", "lzo-rle, zram's default compressor before 6.12"),
            Option("PROC_PAGE_MONITOR", "/proc/PID/smaps, pagemap and PAGEMAP_SCAN"),
            Option("PROC_FS", "/proc"),
            Option("SYSFS", "/sys: THP modes, hugepage pools"),
            Option("SYSCTL", "/proc/sys from 7.3 (before it, PROC_SYSCTL selects SYSCTL)"),
            Option("PROC_SYSCTL", "/proc/sys up to 7.2: vm.nr_hugepages, kernel.tainted"),
            Option("IO_URING", "io_uring fixed buffers pin pages long-term (wp-fork pin case)"),
        ),
    ),
    Group(
        "what the harness's processes use",
        (
            Option("64BIT", "an x86-64 kernel for the host's x86-64 user space"),
            Option("SMP", "more than one vCPU; per-VMA locks (6.4) need SMP"),
            Option("MULTIUSER", "uids and capabilities (the privilege checks)"),
            Option("FUTEX", "threads: the handler engines"),
            Option("EPOLL", "epoll, used by Python's selectors"),
            Option("EVENTFD", "eventfd(2), the handlers' stop signal"),
            Option("SIGNALFD", "signalfd(2)"),
            Option("TIMERFD", "timerfd(2)"),
            Option("POSIX_TIMERS", "clock_nanosleep and timers beyond the basic clocks"),
            Option("FILE_LOCKING", "flock(2) on the results share"),
            Option("BINFMT_ELF", "run the host's ELF programs"),
            Option("BINFMT_SCRIPT", "run #! scripts (/init, job.sh)"),
            Option("BUG", "a WARN taints the kernel (TAINT_WARN, read by register-cuts-vma)"),
            Option("PRINTK", "kernel messages on the console: panics and WARNs"),
        ),
    ),
    Group(
        "booting in qemu without modules",
        (
            Option("HYPERVISOR_GUEST", "guest support, which PVH needs"),
            Option("PVH", "qemu boots the uncompressed vmlinux through its PVH note"),
            Option("ACPI", "busybox poweroff -f powers the guest off instead of halting it"),
            Option("KERNEL_GZIP", "gzip instead of tinyconfig's xz: cheaper on every rebuild"),
            Option("BLK_DEV_INITRD", "the initramfs that mounts the host's root"),
            Option("DEVTMPFS", "/dev in the guest"),
            Option("TTY", "the serial console"),
            Option("SERIAL_8250", "the serial console (ttyS0)"),
            Option("SERIAL_8250_CONSOLE", "console=ttyS0"),
            Option("PCI", "qemu's virtio devices sit on PCI"),
            Option("VIRTIO_MENU", "the virtio drivers menu, which holds VIRTIO_PCI"),
            Option("VIRTIO_PCI", "virtio over PCI"),
            Option("NET", "9P's transport layer lives in net/"),
            Option("INET", "9P_FS depends on INET up to 6.1"),
            Option("NET_9P", "the 9P protocol"),
            Option("NET_9P_VIRTIO", "9P over virtio"),
            Option("9P_FS", "the host's root and the results share, over virtio-9p"),
        ),
    ),
)

REQUIRED: tuple[Option, ...] = tuple(option for group in GROUPS for option in group.options)
REQUIRED_NAMES: tuple[str, ...] = tuple(option.name for option in REQUIRED)


def fragment() -> str:
    """The config fragment: ``CONFIG_X=y`` per settable option, grouped, each after a
    comment saying why. Options without a prompt are named in comments only: a kernel
    that defines them must still end up with them =y, which the build checks."""
    lines = [
        "# uffdharness: what the scenario catalogue and a qemu guest without modules need.",
        "# Start from `make tinyconfig`, add this, run `make olddefconfig`; every option a",
        "# kernel defines must then be =y (options a version lacks are harmless).",
    ]
    for group in GROUPS:
        lines += ["", f"# --- {group.title}"]
        for option in group.options:
            if option.settable:
                lines += [f"# {option.why}", f"CONFIG_{option.name}=y"]
            else:
                lines += [f"# {option.why}", f"# CONFIG_{option.name}: no prompt; checked =y"]
    return "\n".join(lines) + "\n"
