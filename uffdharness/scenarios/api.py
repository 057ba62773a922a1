"""The API surface: what the kernel offers, and how it refuses bad input."""

from __future__ import annotations

import errno
import os

from .. import syscalls as sc
from ..abi import (
    ALL_FEATURES,
    API_IOCTLS,
    FEATURE_CAPABILITY,
    FEATURE_NEEDS,
    FEATURE_SINCE,
    IOCTL_SINCE,
    CopyMode,
    Feature,
    Ioctl,
    RegisterMode,
    flag_names,
    unknown_bits,
)
from ..errors import UffdError
from ..kernelversion import KernelVersion
from ..uffd import Userfaultfd
from .checks import Checks, errno_of, expect_errnos
from .context import Context
from .model import Observation, missing_features
from .registry import scenario


def expected_features(kernel: KernelVersion) -> Feature:
    return Feature(sum(f for f, since in FEATURE_SINCE.items() if kernel >= since))


def expected_api_ioctls(kernel: KernelVersion) -> Ioctl:
    return Ioctl(sum(i for i in API_IOCTLS if kernel >= IOCTL_SINCE[i]))


def judge_api(check: Checks, kernel: KernelVersion, offered: Feature, ioctls: Ioctl) -> None:
    """What UFFDIO_API reported, against what ``kernel``'s version must offer.

    A kernel newer than the vendored UAPI offers bits this harness has no name for: they
    are facts (by hex), never a failure. Only a bit the version must have and lacks fails.
    """
    expected = expected_features(kernel)
    check.fact("offered", flag_names(offered))
    # A distribution may build without CONFIG_PTE_MARKER_UFFD_WP etc.: a failure only
    # because this catalogue then cannot check those paths.
    check.expect("missing_for_version", flag_names(missing_features(expected, offered)), [])
    known_extra = Feature(int(offered) & int(ALL_FEATURES) & ~int(expected))
    check.fact("offered_before_mainline_version", flag_names(known_extra))
    check.fact("unknown_features", [hex(bit) for bit in unknown_bits(offered)])
    # UFFDIO_API's ioctls field: the ioctls usable on the uffd itself, before any register.
    api_expected = expected_api_ioctls(kernel)
    check.fact("api_ioctls", flag_names(ioctls))
    check.expect(
        "api_ioctls_missing_for_version", flag_names(Ioctl(int(api_expected) & ~int(ioctls))), []
    )
    check.fact("unknown_api_ioctls", [hex(bit) for bit in unknown_bits(ioctls)])


def _negotiation_refusals(
    offered: Feature, user_mode_only: bool, capabilities: frozenset[str]
) -> dict[str, str]:
    """Each offered feature this ABI knows, alone on a fresh uffd (RWP_ASYNC with the RWP
    it needs): the ones UFFDIO_API then refuses, with the errno. A feature that needs a
    capability the caller lacks (EVENT_FORK: CAP_SYS_PTRACE) is not tried."""
    refused = {}
    for feature in Feature:
        needs = FEATURE_CAPABILITY.get(feature)
        if feature not in offered or (needs and needs not in capabilities):
            continue
        bits = feature | FEATURE_NEEDS.get(feature, Feature(0))
        try:
            with Userfaultfd.open(api=False, user_mode_only=user_mode_only) as uffd:
                uffd.api_raw(int(bits))
        except UffdError as exc:
            refused[str(feature.name)] = exc.errno_name
    return refused


WRONG_API = 0xAB  # anything but UFFD_API (0xAA)


def _api_refusals(user_mode_only: bool) -> Checks:
    """UFFDIO_API on one fresh uffd: a wrong ``api``, then a good call, then two more.

    userfaultfd_api() refuses an api other than UFFD_API with EINVAL before it looks at the
    features, and a refused call leaves the uffd uninitialised, so the next good call
    succeeds. Once initialised, every further UFFDIO_API is EINVAL, whatever it asks for:
    the features are set once (cmpxchg from 0 since 6.1, the UFFD_STATE_WAIT_API check
    before)."""
    part = Checks()
    with Userfaultfd.open(api=False, user_mode_only=user_mode_only) as uffd:
        part.expect("wrong_api", errno_of(uffd.api_raw, 0, api=WRONG_API), "EINVAL")
        part.expect("good_api_after_refusal", errno_of(uffd.api_raw, 0), "ok")
        part.expect("second_api", errno_of(uffd.api_raw, 0), "EINVAL")
        second_features = int(Feature.THREAD_ID)
        part.expect("second_api_other_features", errno_of(uffd.api_raw, second_features), "EINVAL")
    return part


def _open_result(**kwargs) -> str:
    try:
        with Userfaultfd.open(**kwargs) as uffd:
            return f"ok ({uffd.opened_via})"
    except UffdError as exc:
        return exc.errno_name


def _read_nowait_result(user_mode_only: bool) -> str:
    """What preadv2(RWF_NOWAIT) of an empty uffd gives: EAGAIN where the uffd takes the flag
    (FMODE_NOWAIT), EOPNOTSUPP where it refuses it; there the native core's own reads poll
    and read under a timer instead (cext/handler_core.c read_nowait)."""
    with Userfaultfd.open(Feature(0), user_mode_only=user_mode_only) as uffd:
        try:
            os.preadv(uffd.fileno(), [bytearray(32)], -1, os.RWF_NOWAIT)
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                return "EOPNOTSUPP"  # the kernel's name; Python's table says ENOTSUP (95)
            return errno.errorcode.get(exc.errno, str(exc.errno))
    return "ok"  # a message on a new uffd: impossible


@scenario(
    id="api-probe",
    title="UFFDIO_API feature and ioctl negotiation",
    checks="userfaultfd opens through the syscall and /dev/userfaultfd (6.1), UFFDIO_API "
    "reports the features and API ioctls this kernel version must have, and accepts each "
    "offered feature; bits newer than the vendored UAPI are facts, never failures; a wrong "
    "api (not UFFD_API) is EINVAL and leaves the uffd uninitialised, and a second "
    "UFFDIO_API on an initialised uffd is EINVAL",
    memory=("anon",),
)
def api_probe(ctx: Context) -> Observation:
    user_mode_only = ctx.system.user_mode_only
    with Userfaultfd.open(api=False, user_mode_only=user_mode_only) as uffd:
        result = uffd.api_raw(0)
    check = Checks()
    judge_api(check, ctx.kernel, result.offered, result.ioctls)
    # A known bit that misbehaves: offered, yet UFFDIO_API refuses it.
    capabilities = frozenset({"CAP_SYS_PTRACE"} if ctx.system.cap_sys_ptrace else ())
    refused = _negotiation_refusals(result.offered, user_mode_only, capabilities)
    check.expect("offered_but_refused", refused, {})
    check.nest("api_calls", _api_refusals(user_mode_only))
    via_syscall = check.fact("open_syscall", _open_result(via="syscall"))
    via_dev = _open_result(via="dev") if os.path.exists("/dev/userfaultfd") else "absent"
    # /dev/userfaultfd arrived in 6.1 ("userfaultfd: add /dev/userfaultfd for fine grained
    # access control").
    dev_expected = (ctx.kernel.major, ctx.kernel.minor) >= (6, 1)
    check.expect_that(
        "open_dev_userfaultfd",
        via_dev,
        not (dev_expected and via_dev == "absent"),
        f"present on >= 6.1 (running {ctx.kernel})",
    )
    via_user_mode_only = check.fact("open_user_mode_only", _open_result(user_mode_only=True))
    check.fact("read_rwf_nowait", _read_nowait_result(user_mode_only))
    if not any(way.startswith("ok") for way in (via_syscall, via_dev, via_user_mode_only)):
        check.problem(
            f"no way to open a userfaultfd: open_syscall {via_syscall}, "
            f"open_dev_userfaultfd {via_dev}, open_user_mode_only {via_user_mode_only}"
        )
    return check.observation(key=f"{len(flag_names(result.offered))} features")


@scenario(
    id="bad-inputs",
    title="Every error path of the ioctls",
    checks="the uffd ioctls refuse bad input with the documented errno (EINVAL for "
    "unaligned, zero-length, unknown mode, unmapped; ENOENT unregistered; EEXIST "
    "populated; EAGAIN with a partial count) and never crash or hang",
    memory=("anon",),
    modes=RegisterMode.MISSING,
)
def bad_inputs(ctx: Context) -> Observation:
    page = ctx.page_size
    region = ctx.region(4)
    move = Feature.MOVE if Feature.MOVE in ctx.offered else Feature(0)
    uffd = ctx.uffd(move | ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region.addr, 3 * page)  # page 2 stays empty for MOVE
    hole = sc.mmap(0, 2 * page, sc.PROT_RW, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS)
    sc.munmap(hole, 2 * page)
    src = bytes(2 * page)
    uffd.copy(region.addr + page, b"x" * page)
    partial: dict = {}

    def partial_copy():
        try:
            uffd.copy(region.addr, src, 2 * page)
        except UffdError as exc:
            partial.update(errno=exc.errno_name, done=exc.done)
            raise

    cases = {
        "register_unaligned_address": (lambda: uffd.register(region.addr + 1, page), "EINVAL"),
        "register_unaligned_length": (lambda: uffd.register(region.addr, 100), "EINVAL"),
        "register_zero_length": (lambda: uffd.register(region.addr, 0), "EINVAL"),
        "register_unknown_mode": (
            lambda: uffd.register(region.addr, page, RegisterMode(1 << 5)),
            "EINVAL",
        ),
        "register_unmapped": (lambda: uffd.register(hole, 2 * page), "EINVAL"),
        "copy_unaligned": (lambda: uffd.copy(region.addr + 8, src, page), "EINVAL"),
        "copy_unknown_mode": (
            lambda: uffd.copy(region.addr, src, page, mode=CopyMode(1 << 5)),
            "EINVAL",
        ),
        "copy_unregistered": (lambda: uffd.copy(region.addr + 3 * page, src, page), "ENOENT"),
        "copy_unmapped": (lambda: uffd.copy(hole, src, page), "ENOENT"),
        "copy_populated": (lambda: uffd.copy(region.addr + page, src, page), "EEXIST"),
        "copy_partial": (partial_copy, "EAGAIN"),
        "zeropage_unaligned_length": (lambda: uffd.zeropage(region.addr, 100), "EINVAL"),
        "api_twice": (lambda: uffd.api_raw(0), "EINVAL"),
        "api_unknown_features": (
            lambda: Userfaultfd.open(api=False, user_mode_only=ctx.system.user_mode_only).api_raw(
                1 << 40
            ),
            "EINVAL",
        ),
        "writeprotect_not_wp_registered": (
            lambda: uffd.writeprotect(region.addr + page, page),
            "ENOENT",
        ),
    }
    if move:
        cases["move_src_hole"] = (
            lambda: uffd.move(region.addr + 2 * page, hole, page),
            "ENOENT",
        )
    errnos = expect_errnos(cases)
    check = Checks()
    check.nest("errno", errnos)
    check.fact(
        "mismatches",
        {
            name: {"observed": errnos.facts[name], "expected": wanted}
            for name, (_, wanted) in cases.items()
            if errnos.facts[name] != wanted
        },
    )
    # EAGAIN from UFFDIO_COPY reports the bytes copied before it stopped (uffdio_copy.copy).
    check.expect_that(
        "partial_copy", partial, partial.get("done") == page, f"EAGAIN with done={page}"
    )
    wrong = len(errnos.problems)
    return check.observation(key=f"{len(cases) - wrong}/{len(cases)} errno as documented")


__all__ = ["expected_features"]
