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
    "OpenMode",
    "Privileges",
    "SystemFacts",
    "UffdApiFacts",
    "collect",
    "facts",
    "effective_capabilities",
    "kernel_version",
    "probe_open_modes",
    "probe_uffd_api",
]

CAP_SYS_PTRACE = 19
# The capabilities a check may need, by name (include/uapi/linux/capability.h).
CAPABILITY_BITS = {"CAP_SYS_PTRACE": CAP_SYS_PTRACE}

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
    user_mode_only: bool = False  # the probe needed UFFD_USER_MODE_ONLY to open

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
            "user_mode_only": self.user_mode_only,
        }


@dataclass(frozen=True)
class OpenMode:
    """One way to open a userfaultfd, and whether this process may use it."""

    name: str  # "syscall", "syscall user-mode-only", "/dev/userfaultfd"
    kernel_faults: bool  # whether its uffd also gets faults the kernel's own accesses raise
    works: bool
    refusal: str = ""  # why not: errno and the rule behind it

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kernel_faults": self.kernel_faults,
            "works": self.works,
            "refusal": self.refusal,
        }


@dataclass(frozen=True)
class Privileges:
    """What a scenario's declared needs are judged against, besides kernel and features."""

    is_root: bool
    capabilities: frozenset[str]  # names from CAPABILITY_BITS held in CapEff
    kernel_faults_refusal: str = ""  # why no uffd here handles kernel-mode faults, or ""


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
    open_modes: tuple[OpenMode, ...] = ()
    capabilities: frozenset[str] = frozenset()
    # Upstream fixes the kernel carries beyond its version, as the user declares them
    # (`uffdharness run --carries-fix`; the matrix passes a patched build's): not a fact
    # the kernel can tell.
    carried_fixes: frozenset[str] = frozenset()

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
        available = self.uffd.available and wp in self.offered
        return available and probe_uffd_wp_bit(user_mode_only=self.user_mode_only)

    def probe_lazy(self) -> None:
        """Run the probes scenarios ask for (pagemap's uffd-wp bit) now."""
        _ = self.pagemap_uffd_wp

    @property
    def kernel_faults(self) -> bool:
        """Whether some way of opening gives this process a uffd that handles kernel-mode
        faults (True when the modes were not probed: nothing says otherwise)."""
        return not self.open_modes or any(m.works and m.kernel_faults for m in self.open_modes)

    @property
    def user_mode_only(self) -> bool:
        """Whether uffds must be opened with UFFD_USER_MODE_ONLY: it is the only way this
        process gets one (vm.unprivileged_userfaultfd=0, no CAP_SYS_PTRACE, no access to
        /dev/userfaultfd)."""
        return not self.kernel_faults and any(m.works for m in self.open_modes)

    @property
    def kernel_faults_refusal(self) -> str:
        """Why no uffd of this process handles kernel-mode faults, naming each way's rule;
        "" when one does."""
        if self.kernel_faults:
            return ""
        refused = [f"{m.name}: {m.refusal}" for m in self.open_modes if m.kernel_faults]
        return "kernel-mode faults are refused to this process (" + "; ".join(refused) + ")"

    @property
    def privileges(self) -> Privileges:
        return Privileges(self.is_root, self.capabilities, self.kernel_faults_refusal)

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
            "capabilities": sorted(self.capabilities),
            "open_modes": [mode.to_json() for mode in self.open_modes],
            "user_mode_only": self.user_mode_only,
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


def swap_total_kb() -> int:
    """SwapTotal from /proc/meminfo: 0 when no swap device is on (MADV_PAGEOUT then
    cannot swap anything out). Read at each call: swap can be switched on at run time."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("SwapTotal:"):
                return int(line.split()[1])
    return 0


def _dev_node() -> str:
    """/dev/userfaultfd's mode and owner, for a refusal."""
    try:
        node = os.stat(DEV_USERFAULTFD)
    except OSError:
        return ""
    return f"node mode {node.st_mode & 0o777:04o} uid {node.st_uid} gid {node.st_gid}"


def _refusal_text(error: OSError, unprivileged: int | None, capabilities: frozenset[str]) -> str:
    """The refusal's errno, and the rule behind it in this process's terms."""
    from uffdharness.errors import errno_name

    name = errno_name(error.errno or 0)
    if name == "EPERM" and "CAP_SYS_PTRACE" not in capabilities:
        return f"EPERM: vm.unprivileged_userfaultfd={unprivileged} and no CAP_SYS_PTRACE"
    if name == "EACCES":
        return f"EACCES: no read/write permission ({_dev_node()}, euid {os.geteuid()})"
    if name == "ENOENT":
        return "absent (added in 6.1)"
    if name == "EINVAL":
        return "EINVAL: UFFD_USER_MODE_ONLY needs kernel >= 5.11"
    return str(error)


def probe_open_modes(
    unprivileged: int | None, capabilities: frozenset[str]
) -> tuple[OpenMode, ...]:
    """Try each way to open a uffd: the syscall (kernel-mode faults too), the syscall with
    UFFD_USER_MODE_ONLY (5.11), /dev/userfaultfd (6.1, kernel-mode faults too)."""
    try:
        from uffdharness.uffd import open_refusal
    except ImportError:
        return ()
    modes = []
    for name, via, user_mode_only in (
        ("syscall", "syscall", False),
        ("syscall user-mode-only", "syscall", True),
        (DEV_USERFAULTFD, "dev", False),
    ):
        refusal = open_refusal(via, user_mode_only)  # type: ignore[arg-type]
        text = "" if refusal is None else _refusal_text(refusal, unprivileged, capabilities)
        modes.append(OpenMode(name, not user_mode_only, refusal is None, text))
    return tuple(modes)


def probe_uffd_api(modes: tuple[OpenMode, ...] = ()) -> UffdApiFacts:
    """Features and ioctls the running kernel grants, or the reason none could be probed.
    Opened with UFFD_USER_MODE_ONLY when ``modes`` say that is the only way."""
    try:
        from uffdharness.abi import flag_names
        from uffdharness.uffd import probe_api
    except ImportError as error:
        return UffdApiFacts(status=f"unavailable: {error}")
    if modes and not any(mode.works for mode in modes):
        refusals = "; ".join(f"{mode.name}: {mode.refusal}" for mode in modes)
        return UffdApiFacts(status=f"unavailable: {refusals}")
    user_mode_only = bool(modes) and not any(m.works and m.kernel_faults for m in modes)
    try:
        probe = probe_api(user_mode_only=user_mode_only)
    except OSError as error:  # UffdError: no syscall, EPERM, no /dev/userfaultfd access
        return UffdApiFacts(status=f"unavailable: {error}")
    return UffdApiFacts(
        status="available",
        opened_via=probe.opened_via,
        features=tuple(sorted(flag_names(probe.features))),
        ioctls=tuple(sorted(flag_names(probe.ioctls))),
        features_mask=int(probe.features),
        ioctls_mask=int(probe.ioctls),
        user_mode_only=user_mode_only,
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
    unprivileged_text = _read_text(SYSCTL_UNPRIVILEGED_USERFAULTFD)
    unprivileged = int(unprivileged_text) if unprivileged_text is not None else None
    capability_mask = effective_capabilities()
    capabilities = frozenset(
        name for name, bit in CAPABILITY_BITS.items() if capability_mask >> bit & 1
    )
    modes = probe_open_modes(unprivileged, capabilities)
    return SystemFacts(
        release=uname.release,
        version=uname.version,
        machine=uname.machine,
        kernel=kernel,
        page_size=os.sysconf("SC_PAGE_SIZE"),
        dev_userfaultfd=os.path.exists(DEV_USERFAULTFD),
        dev_userfaultfd_accessible=os.access(DEV_USERFAULTFD, os.R_OK | os.W_OK),
        unprivileged_userfaultfd=unprivileged,
        is_root=os.geteuid() == 0,
        cap_sys_ptrace="CAP_SYS_PTRACE" in capabilities,
        hugepages=_hugepage_pools(),
        default_hugepage_kb=hugepages.default_size_kb(),
        thp_enabled=_bracketed(_read_text(THP_ENABLED)),
        thp_shmem_enabled=_bracketed(_read_text(THP_SHMEM_ENABLED)),
        uffd=probe_uffd_api(modes),
        open_modes=modes,
        capabilities=capabilities,
    )
