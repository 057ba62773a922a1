"""Kernel version parsing, the vDSO version note and the collected system facts."""

from __future__ import annotations

import os
import platform

import pytest

from uffdharness import system, vdso
from uffdharness.kernelversion import KernelVersion, parse, upstream_from_proc_version

# release, (major, minor, patch), patch_known, extra
RELEASES = [
    ("6.18.44-fc-v595", (6, 18, 44), True, "-fc-v595"),
    ("6.1.0-27-amd64", (6, 1, 0), False, "-27-amd64"),
    ("5.10.0-33-amd64", (5, 10, 0), False, "-33-amd64"),
    ("5.10.0-0.deb10.16-amd64", (5, 10, 0), False, "-0.deb10.16-amd64"),
    ("6.12.48+deb13-amd64", (6, 12, 48), True, "+deb13-amd64"),
    ("6.12.11", (6, 12, 11), True, ""),
    ("7.2.0-rc3", (7, 2, 0), True, "-rc3"),
    ("5.15.0-91-generic", (5, 15, 0), False, "-91-generic"),
    ("6.8.0-1015-aws", (6, 8, 0), False, "-1015-aws"),
    ("6.11.0-63.fc41.x86_64", (6, 11, 0), True, "-63.fc41.x86_64"),
    ("6.11.4-301.fc41.x86_64", (6, 11, 4), True, "-301.fc41.x86_64"),
    ("4.9.337", (4, 9, 337), True, ""),
    ("3.0", (3, 0, 0), True, ""),
]


@pytest.mark.parametrize("release, triple, patch_known, extra", RELEASES)
def test_parse_release(
    release: str, triple: tuple[int, int, int], patch_known: bool, extra: str
) -> None:
    version = parse(release)
    assert version.triple == triple
    assert version.patch_known is patch_known
    assert version.extra == extra
    assert version.release == release


@pytest.mark.parametrize("bad", ["", "linux", "6", "v6.1"])
def test_parse_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        parse(bad)


def test_rc_number() -> None:
    assert parse("7.2.0-rc3").rc == 3
    assert parse("6.12.11").rc is None


def test_ordering_and_comparisons() -> None:
    assert parse("6.1.0-27-amd64") < parse("6.4") < parse("6.12.11") < parse("7.2.0-rc3")
    assert sorted(map(parse, ["6.12.1", "5.10.0-33-amd64", "6.4.3"])) == [
        (5, 10, 0),
        (6, 4, 3),
        (6, 12, 1),
    ]
    version = parse("6.18.44-fc-v595")
    assert version == (6, 18, 44)
    assert version == "6.18.44"
    assert version > (6, 4)
    assert version >= "6.18"
    assert version < (7,)
    assert version != "6.18.43"
    # The suffix takes no part: an rc of 7.2 already has what 7.2 merged.
    assert parse("7.2.0-rc3") == parse("7.2.0")
    assert hash(parse("6.1.0-27-amd64")) == hash(parse("6.1.0"))
    assert (version == "not a version") is False
    with pytest.raises(TypeError):
        _ = version < "not a version"


@pytest.mark.parametrize(
    "release, spec, expected",
    [
        ("6.18.44-fc-v595", ">=6.4", True),
        ("6.1.0-27-amd64", ">=6.4", False),
        ("6.1.0-27-amd64", "<6.1", False),
        ("5.10.0-33-amd64", "<6.1", True),
        ("6.12.11", "==6.12.*", True),
        ("6.12.11", "==6.1.*", False),
        ("6.13.0", "==6.12.*", False),
        ("6.12.11", "!=6.12.*", False),
        ("6.12.11", "==6.12.11", True),
        ("6.12.11", "6.12.11", True),
        ("6.12.11", "==6.12", False),
        ("6.12.11", ">=6.1, <6.13", True),
        ("6.13.2", ">=6.1, <6.13", False),
        ("6.6.0", ">6.6", False),
        ("6.6.1", ">6.6", True),
        ("6.6.1", "<=6.6.1", True),
        ("7.2.0-rc3", ">=7.2", True),
        ("7.2.0-rc3", "==7.*", True),
    ],
)
def test_matches(release: str, spec: str, expected: bool) -> None:
    assert parse(release).matches(spec) is expected


@pytest.mark.parametrize("spec", ["", ">=", "~6.1", "==6.*.1", ">=6.*", "6.1.2.3"])
def test_matches_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        parse("6.1.0").matches(spec)


DEBIAN_61 = (
    "Linux version 6.1.0-27-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) "
    "12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1 "
    "(2024-11-01)"
)
DEBIAN_510 = (
    "Linux version 5.10.0-33-amd64 (debian-kernel@lists.debian.org) (gcc-10 (Debian 10.2.1-6) "
    "10.2.1 20210110, GNU ld (GNU Binutils for Debian) 2.35.2) #1 SMP Debian 5.10.226-1 "
    "(2024-10-03)"
)


def test_upstream_from_debian_proc_version() -> None:
    upstream = upstream_from_proc_version(DEBIAN_61)
    assert upstream is not None
    assert upstream.triple == (6, 1, 115) and upstream.patch_known
    assert upstream.release == "6.1.0-27-amd64" and upstream.extra == "-27-amd64"
    from_uname_v = upstream_from_proc_version(
        "#1 SMP Debian 5.10.226-1 (2024-10-03)", "5.10.0-33-amd64"
    )
    assert from_uname_v == (5, 10, 226)
    assert upstream_from_proc_version(DEBIAN_510) == (5, 10, 226)
    # Only the compiler says "Debian x.y.z" here: nothing to learn about the kernel.
    assert (
        upstream_from_proc_version("Linux version 6.12.11 (gcc (Debian 12.2.0-14) 12.2.0)") is None
    )
    assert upstream_from_proc_version("Linux version 6.18.44-fc-v595 (builder@x) #1 SMP") is None
    assert upstream_from_proc_version("garbage") is None


def test_vdso_version_matches_uname() -> None:
    from_vdso = vdso.vdso_version()
    from_uname = parse(platform.release())
    assert (from_vdso.major, from_vdso.minor) == (from_uname.major, from_uname.minor)
    if from_uname.patch_known:
        assert from_vdso.patch == min(from_uname.patch, vdso.PATCH_CLAMP)
    assert vdso.agrees(from_vdso, system.kernel_version())


def test_vdso_image_is_the_mapped_elf() -> None:
    mapping = vdso.find_vdso()
    assert mapping.base % os.sysconf("SC_PAGE_SIZE") == 0
    image = vdso.read_vdso_image(mapping)
    assert image[:4] == b"\x7fELF" and len(image) == mapping.length


def test_vdso_readable_when_not_dumpable() -> None:
    """After setuid() the process is not dumpable and /proc/self/{auxv,mem} are root's."""
    if os.geteuid() != 0:
        pytest.skip("needs root to setuid() to nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        text = "?"
        try:
            os.setgid(65534)
            os.setuid(65534)
            text = str(vdso.vdso_version())
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            text = f"{type(error).__name__}: {error}"
        os.write(write_end, text.encode())
        os._exit(0)
    os.close(write_end)
    text = os.read(read_end, 4096).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert text == str(vdso.vdso_version())


def test_version_from_non_elf_raises() -> None:
    with pytest.raises(vdso.VdsoError):
        vdso.version_from_elf(b"\0" * 4096)


def test_agrees_rules() -> None:
    assert vdso.agrees(KernelVersion(6, 1, 115), parse("6.1.0-27-amd64"))
    assert vdso.agrees(KernelVersion(4, 9, 255, patch_known=False), parse("4.9.337"))
    assert not vdso.agrees(KernelVersion(4, 9, 255, patch_known=False), parse("4.9.200"))
    assert not vdso.agrees(KernelVersion(6, 12, 3), parse("6.12.4"))
    assert not vdso.agrees(KernelVersion(6, 12, 3), parse("6.13.3"))


@pytest.fixture(scope="module")
def facts() -> system.SystemFacts:
    return system.collect()


def test_facts_kernel_and_vdso(facts: system.SystemFacts) -> None:
    assert facts.release == platform.release()
    assert facts.machine == platform.machine()
    assert (facts.kernel.major, facts.kernel.minor) == parse(platform.release()).triple[:2]
    assert facts.vdso_error is None
    assert facts.vdso_agrees is True


def test_facts_page_size_and_privileges(facts: system.SystemFacts) -> None:
    if facts.machine == "x86_64":
        assert facts.page_size == 4096
    assert facts.page_size == os.sysconf("SC_PAGE_SIZE")
    assert facts.is_root == (os.geteuid() == 0)
    if facts.is_root:
        # root without a capability-dropping container keeps CAP_SYS_PTRACE
        assert facts.cap_sys_ptrace == bool(system.effective_capabilities() >> 19 & 1)
    assert facts.dev_userfaultfd == os.path.exists("/dev/userfaultfd")
    if os.path.exists("/proc/sys/vm/unprivileged_userfaultfd"):
        assert facts.unprivileged_userfaultfd in (0, 1)


def test_facts_memory(facts: system.SystemFacts) -> None:
    sizes = [pool.size_kb for pool in facts.hugepages]
    assert sizes == sorted(sizes)
    if facts.default_hugepage_kb is not None:
        assert facts.default_hugepage_kb in sizes
    for pool in facts.hugepages:
        assert 0 <= pool.free <= pool.nr and pool.surplus <= pool.nr
    for mode in (facts.thp_enabled, facts.thp_shmem_enabled):
        assert mode is None or ("[" not in mode and " " not in mode)


def test_facts_uffd(facts: system.SystemFacts) -> None:
    uffd = facts.uffd
    assert uffd.status == "available" or uffd.status.startswith("unavailable: ")
    if uffd.available:
        assert uffd.opened_via in ("syscall", "/dev/userfaultfd")
        assert list(uffd.features) == sorted(uffd.features)
        assert "API" in uffd.ioctls
        if facts.kernel >= (5, 7):
            assert "PAGEFAULT_FLAG_WP" in uffd.features
        if facts.kernel >= (6, 8):
            assert "MOVE" in uffd.features
    elif facts.is_root and facts.cap_sys_ptrace:
        # Root with CAP_SYS_PTRACE always gets a uffd; only a missing module explains this.
        assert "uffdharness.uffd" in uffd.status or "No module" in uffd.status


def test_facts_json(facts: system.SystemFacts) -> None:
    data = facts.to_json()
    assert data["kernel"]["release"] == platform.release()
    assert data["page_size"] == facts.page_size
    assert isinstance(data["uffd"]["features"], list)
    assert all(isinstance(name, str) for name in data["uffd"]["features"])


def test_facts_open_modes(facts: system.SystemFacts) -> None:
    names = [mode.name for mode in facts.open_modes]
    assert names == ["syscall", "syscall user-mode-only", "/dev/userfaultfd"]
    assert [mode.kernel_faults for mode in facts.open_modes] == [True, False, True]
    for mode in facts.open_modes:
        assert mode.works == (mode.refusal == "")
    if "CAP_SYS_PTRACE" in facts.capabilities:
        # CAP_SYS_PTRACE opens the syscall whatever the sysctl: kernel-mode faults work.
        assert facts.open_modes[0].works and facts.kernel_faults
        assert not facts.user_mode_only and facts.kernel_faults_refusal == ""
    data = facts.to_json()
    assert [mode["name"] for mode in data["open_modes"]] == names
    assert data["user_mode_only"] is facts.user_mode_only


def test_capabilities_follow_capeff(facts: system.SystemFacts) -> None:
    mask = system.effective_capabilities()
    for name, bit in system.CAPABILITY_BITS.items():
        assert (name in facts.capabilities) == bool(mask >> bit & 1)
    assert facts.cap_sys_ptrace == ("CAP_SYS_PTRACE" in facts.capabilities)


def _as_unprivileged(facts: system.SystemFacts, user_mode_only_works: bool):
    """The facts of a user without CAP_SYS_PTRACE at vm.unprivileged_userfaultfd=0."""
    import dataclasses

    modes = (
        system.OpenMode(
            "syscall", True, False, "EPERM: vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE"
        ),
        system.OpenMode(
            "syscall user-mode-only",
            False,
            user_mode_only_works,
            "" if user_mode_only_works else "EINVAL: UFFD_USER_MODE_ONLY needs kernel >= 5.11",
        ),
        system.OpenMode("/dev/userfaultfd", True, False, "EACCES: no read/write permission"),
    )
    return dataclasses.replace(facts, open_modes=modes, capabilities=frozenset(), is_root=False)


def test_user_mode_only_when_it_is_the_only_mode(facts: system.SystemFacts) -> None:
    unprivileged = _as_unprivileged(facts, user_mode_only_works=True)
    assert unprivileged.user_mode_only and not unprivileged.kernel_faults
    refusal = unprivileged.kernel_faults_refusal
    for named in ("vm.unprivileged_userfaultfd=0", "CAP_SYS_PTRACE", "/dev/userfaultfd", "EACCES"):
        assert named in refusal, refusal
    assert "user-mode-only" not in refusal  # it works: not a reason
    privileges = unprivileged.privileges
    assert privileges.kernel_faults_refusal == refusal and not privileges.capabilities


def test_no_mode_at_all_is_not_user_mode_only(facts: system.SystemFacts) -> None:
    nothing = _as_unprivileged(facts, user_mode_only_works=False)
    assert not nothing.user_mode_only and not nothing.kernel_faults
    assert "5.11" not in nothing.kernel_faults_refusal  # only the kernel-mode ways are named


def test_unprobed_modes_assume_kernel_faults(facts: system.SystemFacts) -> None:
    import dataclasses

    unprobed = dataclasses.replace(facts, open_modes=())
    assert unprobed.kernel_faults and not unprobed.user_mode_only
    assert unprobed.kernel_faults_refusal == ""
