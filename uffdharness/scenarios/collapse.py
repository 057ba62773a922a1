"""MADV_COLLAPSE (6.1) on shmem registered for minor faults: the page cache is filled in
small pages through a second mapping, the registered range is mapped page by page with
UFFDIO_CONTINUE, and the collapse must replace those pages by one huge folio per PMD.

What userfaultfd changes in mm/khugepaged.c (7.3): a MISSING registration anywhere on the
file refuses to fill page-cache holes (collapse_file(), EBUSY); MINOR alone refuses
nothing, so try_collapse_pte_mapped_thp() installs the PMD in the registered VMA and no
fault is raised afterwards. A WP registration (userfaultfd_protected()) keeps the page
table, as PTE markers may live there: the page cache is still collapsed, but the VMA gets
no PMD (SCAN_PTE_UFFD, which madvise_collapse() reports as EINVAL).
"""

from __future__ import annotations

import time
from typing import Any

from .. import syscalls as sc
from .. import thp
from ..abi import RegisterMode
from ..errors import UffdError
from ..events import PagefaultEvent
from ..memory import PAGE_SIZE, Region, pmd_size
from ..uffd import Userfaultfd
from .checks import Checks, errno_of
from .context import Background, Context, next_event
from .huge import folio_runs, pmd_mapped_bytes
from .model import Observation, Skip
from .registry import scenario
from .wp import EVENT_TIMEOUT, FINISH_TIMEOUT

SEED = 0xC011
# EAGAIN, from MADV_COLLAPSE or a CONTINUE racing it: a page was locked or off the LRU for
# a moment (seen once in a TCG guest of 6.12); retried after a short pause.
COLLAPSE_TRIES = 10
RETRY_PAUSE_S = 0.01


def _serve_minor(uffd: Userfaultfd, region: Region, access: Background) -> list[Any]:
    """Resolve each MINOR fault with a UFFDIO_CONTINUE of the PMD-sized span around it
    until ``access`` finishes; returns what each fault was ("minor", or the errno of a
    CONTINUE that failed)."""
    span = pmd_size()
    faults: list[Any] = []
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not access.finished(0) and time.monotonic() < deadline:
        event = next_event(uffd, timeout=0.02)
        if not isinstance(event, PagefaultEvent):
            continue
        faults.append(event.fault_kind)
        start = max(region.addr, event.address & ~(span - 1))
        for attempt in range(COLLAPSE_TRIES):
            try:
                uffd.continue_(start, min(span, region.end - start))
                break
            except UffdError as exc:
                if exc.errno_name != "EAGAIN" or attempt == COLLAPSE_TRIES - 1:
                    faults[-1] = f"{event.fault_kind}: CONTINUE {exc.errno_name}"
                    break
                time.sleep(RETRY_PAUSE_S)
    return faults


def _madvise_collapse(region: Region) -> str:
    result = "EAGAIN"
    for _ in range(COLLAPSE_TRIES):
        result = errno_of(sc.madvise, region.addr, region.length, sc.MADV_COLLAPSE)
        if result != "EAGAIN":
            break
        time.sleep(RETRY_PAUSE_S)
    if result == "ENOMEM":
        raise Skip("no THP could be allocated: MADV_COLLAPSE gave ENOMEM")
    return result


def _collapse(ctx: Context, modes: RegisterMode, pmds: int) -> dict[str, Any]:
    """Fill ``pmds`` PMDs of page cache through an alias, register ``modes``, map every
    page with CONTINUE, MADV_COLLAPSE, then read everything back through the range."""
    size = pmd_size()
    region = ctx.region(pmds * size // ctx.page_size, align=size)
    cache = region.alias()  # a mapping without MADV_HUGEPAGE: small page-cache folios
    cache.view(PAGE_SIZE).fill_indexed(SEED)
    facts: dict[str, Any] = {"cache_folios": folio_runs(cache.addr, cache.length)}
    uffd = ctx.uffd(ctx.mode_features(modes))
    uffd.register(region, mode=modes)
    reader = Background(region.view(size).touch)
    facts["faults_before_collapse"] = _serve_minor(uffd, region, reader)
    facts["reader_finished"] = reader.finished(FINISH_TIMEOUT)
    facts["pmd_mapped_before"] = pmd_mapped_bytes(region.addr, region.length)
    facts["folios_before"] = folio_runs(region.addr, region.length)
    facts["madvise_collapse"] = _madvise_collapse(region)
    facts["pmd_mapped_after"] = pmd_mapped_bytes(region.addr, region.length)
    facts["folios_after"] = folio_runs(region.addr, region.length)
    verify = Background(region.view(PAGE_SIZE).find_indexed_mismatch, SEED)
    facts["faults_after_collapse"] = _serve_minor(uffd, region, verify)
    facts["data_intact"] = verify.finished(FINISH_TIMEOUT) and verify.value(0) is None
    facts["folios_after_reading"] = folio_runs(region.addr, region.length)
    return facts


def _require_collapse() -> None:
    """MADV_COLLAPSE ignores the THP modes of sysfs but for shmem's "deny"."""
    if not thp.available():
        raise Skip("kernel without transparent hugepages: MADV_COLLAPSE is EINVAL")
    if thp.read_knob(f"{thp.SYSFS_THP}/shmem_enabled") == "deny":
        raise Skip("shmem THP is denied (transparent_hugepage/shmem_enabled = deny)")


@scenario(
    id="minor-collapse",
    title="MADV_COLLAPSE of a range registered for minor faults",
    checks="MADV_COLLAPSE (6.1) of shmem registered MINOR and mapped by UFFDIO_CONTINUE "
    "replaces the small page-cache pages by a THP and maps it with a PMD in the registered "
    "VMA, data intact and no fault raised; registered MINOR|WP the VMA keeps its page table "
    "(userfaultfd_protected() in try_collapse_pte_mapped_thp()) and the collapse is EINVAL",
    memory=("shmem-thp",),
    modes=RegisterMode.MINOR | RegisterMode.WP,
    min_kernel="6.1",
)
def minor_collapse(ctx: Context) -> Observation:
    _require_collapse()
    size = pmd_size()
    minor = _collapse(ctx, RegisterMode.MINOR, 2)
    protected = _collapse(ctx, RegisterMode.MINOR | RegisterMode.WP, 1)
    check = Checks()
    check.expect_fields(
        "minor",
        minor,
        {
            "faults_before_collapse": ["minor"] * 2,
            "reader_finished": True,
            "pmd_mapped_before": 0,
            "madvise_collapse": "ok",
            "pmd_mapped_after": 2 * size,
            "faults_after_collapse": [],
            "data_intact": True,
        }
        | ({} if minor["folios_after"] is None else {"folios_after": [[size, 2]]}),
    )
    # The refused collapse has replaced the page cache all the same (and unmapped the old
    # pages): reading the range back raises MINOR faults again, which _collapse serves.
    check.expect_fields(
        "minor_wp",
        protected,
        {
            "faults_before_collapse": ["minor"],
            "reader_finished": True,
            "pmd_mapped_before": 0,
            "madvise_collapse": "EINVAL",
            "pmd_mapped_after": 0,
            "data_intact": True,
        },
    )
    return check.observation(
        f"MINOR: collapse={minor['madvise_collapse']} "
        f"pmd_mapped={minor['pmd_mapped_after'] >> 20} MiB "
        f"data={'ok' if minor['data_intact'] else 'BAD'}; "
        f"MINOR|WP: collapse={protected['madvise_collapse']}"
    )
