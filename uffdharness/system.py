"""Facts about the running system that decide which checks can run and what to expect.

``facts()`` is the one source: computed once per process (a forked scenario inherits the
parent's), used by the runner, scenarios, reports, the pytest plugin and ``info``. The
costlier probes (the vDSO's ELF note, pagemap's uffd-wp bit) run on first use.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING

from uffdharness import hugepages, vdso
from uffdharness.hugepages import HugepageCounts
from uffdharness.kernelversion import KernelVersion, parse, upstream_from_proc_version

if TYPE_CHECKING:
    from uffdharness.abi import Feature

__all__ = [
    "CAP_SYS_PTRACE",
    "SystemFacts",
    "UffdApiFacts",
    "collect",
    "facts",
    "effective_capabilities",
    "kernel_version",
    "probe_uffd_api",
]

CAP_SYS_PTRACE = 19

DEV_USERFAULTFD = "/dev/userfaultfd"
SYSCTL_UNPRIVILEGED_USERFAULTFD = "/proc/sys/vm/unprivileged_userfaultfd"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
THP_SHMEM_ENABLED = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"


@dataclass(frozen=True)
class UffdApiFacts:
    """What UFFDIO_API on a fresh userfaultfd reports, or why none could be opened."""

    status: str  # "available" or "unavailable: <reason>"
    opened_via: str | None = None  # "syscall" or "/dev/userfaultfd"
    features: tuple[str, ...] = ()
    ioctls: tuple[str, ...] = ()
    features_mask: int | None = None
    ioctls_mask: int | None = None

    @property
    def available(self) -> bool:
        return self.opened_via is not None

    def to_json(self) -> dict[str, object]:
        return {
            "status": self.status,
            "opened_via": self.opened_via,
            "features": list(self.features),
            "ioctls": list(self.ioctls),
            "features_mask": self.features_mask,
            "ioctls_mask": self.ioctls_mask,
        }


@dataclass(frozen=True)
class SystemFacts:
    """One snapshot of kernel, privileges, memory configuration and userfaultfd support."""

    release: str
    version: str
    machine: str
    kernel: KernelVersion
    page_size: int
    dev_userfaultfd: bool
    dev_userfaultfd_accessible: bool
    unprivileged_userfaultfd: int | None  # None: sysctl absent (kernel < 5.2)
    is_root: bool
    cap_sys_ptrace: bool
    hugepages: tuple[HugepageCounts, ...]
    default_hugepage_kb: int | None
    thp_enabled: str | None
    thp_shmem_enabled: str | None
    uffd: UffdApiFacts

    @property
    def offered(self) -> Feature:
        """The features UFFDIO_API offers (none when no uffd could be opened)."""
        # abi needs the compiled extension; info must still work without it.
        from uffdharness.abi import Feature

        return Feature(self.uffd.features_mask or 0)

    @property
    def uffd_error(self) -> str:
        """Why no userfaultfd could be opened, or ""."""
        return "" if self.uffd.available else self.uffd.status.removeprefix("unavailable: ")

    @property
    def vdso_version(self) -> KernelVersion | None:
        return self._vdso[0]

    @property
    def vdso_agrees(self) -> bool | None:
        """None when the vDSO could not be read."""
        return self._vdso[1]

    @property
    def vdso_error(self) -> str | None:
        return self._vdso[2]

    @functools.cached_property
    def _vdso(self) -> tuple[KernelVersion | None, bool | None, str | None]:
        try:
            version = vdso.vdso_version()
        except (vdso.VdsoError, OSError) as error:
            return None, None, str(error)
        return version, vdso.agrees(version, self.kernel), None

    @functools.cached_property
    def pagemap_uffd_wp(self) -> bool:
        """Whether pagemap reports the uffd-wp bit (57, 5.14). Older kernels leave it 0
        without error, so it is probed once on a write-protected anonymous page."""
        from uffdharness.abi import Feature
        from uffdharness.pagemap import probe_uffd_wp_bit

        wp = Feature.PAGEFAULT_FLAG_WP
        return self.uffd.available and wp in self.offered and probe_uffd_wp_bit()

    def probe_lazy(self) -> None:
        """Run the probes scenarios ask for (pagemap's uffd-wp bit) now."""
        _ = self.pagemap_uffd_wp

    @property
    def may_use_uffd_syscall(self) -> bool:
        """Whether userfaultfd(2) should give a fd that can handle kernel-mode faults.

        With vm.unprivileged_userfaultfd=0 (default since 5.11) the syscall needs
        CAP_SYS_PTRACE unless UFFD_USER_MODE_ONLY is passed; /dev/userfaultfd (6.1) is
        governed by its file mode instead.
        """
        return self.cap_sys_ptrace or self.unprivileged_userfaultfd == 1

    def to_json(self) -> dict[str, object]:
        return {
            "release": self.release,
            "version": self.version,
            "machine": self.machine,
            "kernel": self.kernel.to_json(),
            "vdso": {
                "version": self.vdso_version.to_json() if self.vdso_version else None,
                "agrees_with_uname": self.vdso_agrees,
                "error": self.vdso_error,
            },
            "page_size": self.page_size,
            "dev_userfaultfd": {
                "present": self.dev_userfaultfd,
                "accessible": self.dev_userfaultfd_accessible,
            },
            "unprivileged_userfaultfd": self.unprivileged_userfaultfd,
            "is_root": self.is_root,
            "cap_sys_ptrace": self.cap_sys_ptrace,
            "hugepages": [pool.to_json() for pool in self.hugepages],
            "default_hugepage_kb": self.default_hugepage_kb,
            "thp": {"enabled": self.thp_enabled, "shmem_enabled": self.thp_shmem_enabled},
            "uffd": self.uffd.to_json(),
        }


def kernel_version() -> KernelVersion:
    """The running kernel's version from ``uname -r``, with Debian's upstream patch level
    (from /proc/version) filled in when the release string carries none."""
    release = platform.release()
    parsed = parse(release)
    if parsed.patch_known:
        return parsed
    try:
        with open("/proc/version") as proc_version:
            text = proc_version.read()
    except OSError:
        text = platform.version()
    return upstream_from_proc_version(text, release) or parsed


def effective_capabilities() -> int:
    """CapEff of this process as a bit mask (0 if /proc/self/status lacks it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _read_text(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _bracketed(setting: str | None) -> str | None:
    """The selected value of a sysfs multiple-choice file ("always [madvise] never")."""
    if setting is None:
        return None
    for word in setting.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return setting


def kernel_warned() -> bool:
    """TAINT_WARN (bit 9 of /proc/sys/kernel/tainted): the kernel has printed a WARN."""
    with open("/proc/sys/kernel/tainted") as tainted:
        return bool(int(tainted.read()) & (1 << 9))


def probe_uffd_api() -> UffdApiFacts:
    """Features and ioctls the running kernel grants, or the reason none could be probed."""
    try:
        from uffdharness.abi import flag_names
        from uffdharness.uffd import probe_api
    except ImportError as error:
        return UffdApiFacts(status=f"unavailable: {error}")
    try:
        probe = probe_api()
    except OSError as error:  # UffdError: no syscall, EPERM, no /dev/userfaultfd access
        return UffdApiFacts(status=f"unavailable: {error}")
    return UffdApiFacts(
        status="available",
        opened_via=probe.opened_via,
        features=tuple(sorted(flag_names(probe.features))),
        ioctls=tuple(sorted(flag_names(probe.ioctls))),
        features_mask=int(probe.features),
        ioctls_mask=int(probe.ioctls),
    )


def _hugepage_pools() -> tuple[HugepageCounts, ...]:
    pools = []
    for size_kb in hugepages.sizes():
        try:
            pools.append(hugepages.counts(size_kb))
        except (OSError, ValueError):  # HugepageError is an OSError
            continue
    return tuple(pools)


@functools.cache
def facts() -> SystemFacts:
    """The system facts of this process, gathered on first use."""
    return collect()


def collect() -> SystemFacts:
    """Gather every fact afresh; never raises for a missing feature, records it instead."""
    uname = platform.uname()
    kernel = kernel_version()
    unprivileged = _read_text(SYSCTL_UNPRIVILEGED_USERFAULTFD)
    capabilities = effective_capabilities()
    return SystemFacts(
        release=uname.release,
        version=uname.version,
        machine=uname.machine,
        kernel=kernel,
        page_size=os.sysconf("SC_PAGE_SIZE"),
        dev_userfaultfd=os.path.exists(DEV_USERFAULTFD),
        dev_userfaultfd_accessible=os.access(DEV_USERFAULTFD, os.R_OK | os.W_OK),
        unprivileged_userfaultfd=int(unprivileged) if unprivileged is not None else None,
        is_root=os.geteuid() == 0,
        cap_sys_ptrace=bool(capabilities >> CAP_SYS_PTRACE & 1),
        hugepages=_hugepage_pools(),
        default_hugepage_kb=hugepages.default_size_kb(),
        thp_enabled=_bracketed(_read_text(THP_ENABLED)),
        thp_shmem_enabled=_bracketed(_read_text(THP_SHMEM_ENABLED)),
        uffd=probe_uffd_api(),
    )
