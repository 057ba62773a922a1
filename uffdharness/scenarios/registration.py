"""UFFDIO_REGISTER: which register modes a memory kind takes, and the range ioctls it
reports for each.

userfaultfd_register() (mm/userfaultfd.c in 7.3, fs/userfaultfd.c before) answers a
successful register with uffdio_register.ioctls: UFFD_API_RANGE_IOCTLS, or for a range
holding a hugetlb VMA UFFD_API_RANGE_IOCTLS_BASIC (no ZEROPAGE, no MOVE), less
WRITEPROTECT without MODE_WP, CONTINUE without MODE_MINOR and RWPROTECT without MODE_RWP.
Both macros grew over the releases; a kernel is expected to report only what its version
had, and a bit the rules allow but only a newer release added (a backport) is a fact.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

from ..abi import Feature, Ioctl, RegisterMode, flag_names, unknown_bits
from ..errors import UffdError
from ..kernelversion import KernelVersion
from ..memory import Region
from ..uffd import Userfaultfd
from .checks import Checks
from .context import Context
from .model import ALL_KINDS, THP_KINDS, Observation
from .registry import scenario

Since = tuple[int, int]

# UFFD_API_RANGE_IOCTLS, each bit with the mainline release that added it.
RANGE_IOCTLS: Mapping[Ioctl, Since] = {
    Ioctl.WAKE: (4, 3),
    Ioctl.COPY: (4, 3),
    Ioctl.ZEROPAGE: (4, 3),
    Ioctl.WRITEPROTECT: (5, 7),  # "userfaultfd: wp: add UFFDIO_WRITEPROTECT ioctl"
    Ioctl.CONTINUE: (5, 13),  # "userfaultfd: add UFFDIO_CONTINUE ioctl"
    Ioctl.POISON: (6, 6),  # "mm: userfaultfd: add new UFFDIO_POISON ioctl"
    # "userfaultfd: UFFDIO_MOVE uABI": in the mask of every non-hugetlb range, shmem too,
    # although UFFDIO_MOVE itself only moves anonymous pages.
    Ioctl.MOVE: (6, 8),
    Ioctl.RWPROTECT: (7, 3),
}
# UFFD_API_RANGE_IOCTLS_BASIC: hugetlbfs has no zero page and no UFFDIO_MOVE.
HUGETLB_RANGE_IOCTLS: Mapping[Ioctl, Since] = {
    Ioctl.WAKE: (4, 11),
    Ioctl.COPY: (4, 11),
    Ioctl.CONTINUE: (5, 13),
    # "mm/uffd: Enable write protection for shmem & hugetlbfs" expanded BASIC with it.
    Ioctl.WRITEPROTECT: (5, 19),
    Ioctl.POISON: (6, 6),
    Ioctl.RWPROTECT: (7, 3),
}
# The bits userfaultfd_register() reports only for a range registered with this mode.
ONLY_WITH_MODE: Mapping[Ioctl, RegisterMode] = {
    Ioctl.WRITEPROTECT: RegisterMode.WP,
    Ioctl.CONTINUE: RegisterMode.MINOR,
    Ioctl.RWPROTECT: RegisterMode.RWP,
}

PROBED = (RegisterMode.MISSING, RegisterMode.WP, RegisterMode.MINOR)
# Every combination of MISSING, WP and MINOR, the empty one first.
COMBINATIONS: tuple[RegisterMode, ...] = tuple(
    RegisterMode(sum(chosen))
    for count in range(len(PROBED) + 1)
    for chosen in combinations(PROBED, count)
)


def mode_name(modes: RegisterMode) -> str:
    return "|".join(flag_names(modes)) or "none"


def range_ioctls(hugetlb: bool, modes: RegisterMode, kernel: KernelVersion) -> tuple[Ioctl, Ioctl]:
    """(the range ioctls UFFDIO_REGISTER must report for a range registered with ``modes``
    on ``kernel``, every one the rules allow there on any kernel)."""
    table = HUGETLB_RANGE_IOCTLS if hugetlb else RANGE_IOCTLS
    expected = allowed = Ioctl(0)
    for ioctl, since in table.items():
        needs = ONLY_WITH_MODE.get(ioctl)
        if needs is not None and not modes & needs:
            continue
        allowed |= ioctl
        if kernel >= since:
            expected |= ioctl
    return expected, allowed


def judge_ioctls(check: Checks, observed: Ioctl, expected: Ioctl, allowed: Ioctl) -> None:
    """What UFFDIO_REGISTER reported against the rules: a bit the kernel's version must
    report and lacks, or a known bit the rules never give such a range, is a problem; a
    bit the rules allow only from a newer release, or one this ABI cannot name, a fact."""
    check.fact("ioctls", flag_names(observed))
    check.fact("expected", flag_names(expected))
    check.expect("missing", flag_names(Ioctl(int(expected) & ~int(observed))), [])
    known = int(observed) & ~sum(unknown_bits(observed))
    check.expect("not_for_this_range", flag_names(Ioctl(known & ~int(allowed))), [])
    newer = Ioctl(int(observed) & int(allowed) & ~int(expected))
    check.fact("newer_than_kernel", flag_names(newer))
    check.fact("unknown", [hex(bit) for bit in unknown_bits(observed)])


def _register(uffd: Userfaultfd, region: Region, modes: RegisterMode) -> tuple[str, Ioctl | None]:
    """Register the whole region with ``modes`` and unregister it again: (errno or "ok",
    the ioctls reported). Each combination starts from an unregistered range: a register
    that would drop VM_UFFD_WP from a VMA registered with it is refused (7.3)."""
    try:
        ioctls = uffd.register(region, mode=modes)
    except UffdError as refusal:
        return refusal.errno_name, None
    uffd.unregister(region)
    return "ok", ioctls


@scenario(
    id="register-ioctls",
    title="The ioctls UFFDIO_REGISTER reports for each register mode",
    checks="UFFDIO_REGISTER with each combination of MISSING, WP and MINOR reports in "
    "uffdio_register.ioctls exactly UFFD_API_RANGE_IOCTLS (UFFD_API_RANGE_IOCTLS_BASIC on "
    "hugetlbfs: no ZEROPAGE, no MOVE) as of the kernel's version, WRITEPROTECT only with "
    "WP and CONTINUE only with MINOR (POISON 6.6, MOVE 6.8); mode 0 and a mode the memory "
    "or the kernel lacks (MINOR on anonymous memory) are EINVAL",
    memory=ALL_KINDS + THP_KINDS + ("hugetlb-1g", "hugetlb-1g-private"),
    modes=RegisterMode.MISSING,
    probes=RegisterMode.WP | RegisterMode.MINOR,
    hugepages=1,
)
def register_ioctls(ctx: Context) -> Observation:
    region = ctx.region(1)
    features = Feature(0)
    for mode in PROBED:
        features |= ctx.probe_features(mode) or Feature(0)
    uffd = ctx.uffd(features)
    check = Checks({"hugetlb": ctx.spec.is_hugetlb})
    judged = 0
    for modes in COMBINATIONS:
        part = Checks()
        supported = bool(modes) and ctx.probe_features(modes) is not None
        registered, ioctls = _register(uffd, region, modes)
        if not supported:
            # Mode 0 and a mode the kind or the kernel lacks: userfaultfd_register()
            # refuses with EINVAL before looking at any VMA, or vma_can_userfault() does.
            part.expect("register", registered, "EINVAL")
            if ioctls is not None:
                part.fact("ioctls", flag_names(ioctls))
        elif part.expect("register", registered, "ok") and ioctls is not None:
            expected, allowed = range_ioctls(ctx.spec.is_hugetlb, modes, ctx.kernel)
            judge_ioctls(part, ioctls, expected, allowed)
        judged += part.ok
        check.nest(mode_name(modes), part)
    missing_only = check.facts[mode_name(RegisterMode.MISSING)].get("ioctls", [])
    return check.observation(
        key=f"{judged}/{len(COMBINATIONS)} as the rules say; MISSING: {'|'.join(missing_only)}"
    )
