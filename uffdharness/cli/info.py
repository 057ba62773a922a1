"""``uffdharness info``: the facts about this system that decide which checks can run."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from uffdharness.system import SystemFacts

__all__ = ["add_parser", "render_info", "run"]

_LABEL_WIDTH = 26
_LINE_WIDTH = 100


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show kernel, privileges, hugepages and userfaultfd support",
        description="Show the facts about this system that decide which checks can run.",
    )
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from uffdharness.system import collect

    out = out if out is not None else sys.stdout
    facts = collect()
    if args.json:
        json.dump(facts.to_json(), out, indent=2, sort_keys=False)
        out.write("\n")
    else:
        out.write(render_info(facts))
    return 0


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _modes_summary(facts: SystemFacts) -> str:
    if facts.kernel_faults:
        return "kernel-mode faults available"
    if facts.user_mode_only:
        return "user-mode faults only: checks that need kernel-mode faults skip"
    return "none: every check skips"


def render_info(facts: SystemFacts) -> str:
    """The facts as aligned ``label  value`` lines."""
    rows: list[tuple[str, str]] = []
    kernel = facts.kernel
    patch_note = "" if kernel.patch_known else " (patch level unknown)"
    rows.append(("kernel", f"{kernel}{patch_note}"))
    rows.append(("release", facts.release))
    rows.append(("build", facts.version))
    rows.append(("machine", facts.machine))
    if facts.vdso_version is not None:
        agreement = "agrees with uname" if facts.vdso_agrees else "DISAGREES with uname"
        rows.append(("vDSO version", f"{facts.vdso_version} ({agreement})"))
    else:
        rows.append(("vDSO version", f"unreadable: {facts.vdso_error}"))
    rows.append(("page size", str(facts.page_size)))
    rows.append(("root", _yes_no(facts.is_root)))
    rows.append(("CAP_SYS_PTRACE", _yes_no(facts.cap_sys_ptrace)))
    unprivileged = facts.unprivileged_userfaultfd
    rows.append(
        ("vm.unprivileged_userfaultfd", "absent" if unprivileged is None else str(unprivileged))
    )
    if facts.dev_userfaultfd:
        access = "accessible" if facts.dev_userfaultfd_accessible else "not accessible"
        rows.append(("/dev/userfaultfd", f"present, {access}"))
    else:
        rows.append(("/dev/userfaultfd", "absent"))
    if facts.open_modes:
        rows.append(("uffd open modes", _modes_summary(facts)))
    for mode in facts.open_modes:
        if mode.works:
            scope = "kernel- and user-mode" if mode.kernel_faults else "user-mode only"
            rows.append((f"  {mode.name}", f"works ({scope} faults)"))
        else:
            rows.append((f"  {mode.name}", f"refused: {mode.refusal}"))
    rows.append(("userfaultfd", facts.uffd.status))
    if facts.uffd.available:
        user_mode_only = " with UFFD_USER_MODE_ONLY" if facts.uffd.user_mode_only else ""
        rows.append(("  opened via", f"{facts.uffd.opened_via}{user_mode_only}"))
        rows.append(("  features", ", ".join(facts.uffd.features) or "(none)"))
        rows.append(("  fd ioctls", ", ".join(facts.uffd.ioctls) or "(none)"))
    rows.append(("THP enabled", facts.thp_enabled or "absent"))
    rows.append(("THP shmem_enabled", facts.thp_shmem_enabled or "absent"))
    if not facts.hugepages:
        rows.append(("hugepages", "none (no hugetlb support)"))
    for pool in facts.hugepages:
        default = " (default)" if pool.size_kb == facts.default_hugepage_kb else ""
        rows.append(
            (
                f"hugepages {pool.size_kb}kB",
                f"nr={pool.nr} free={pool.free} resv={pool.resv} surplus={pool.surplus}{default}",
            )
        )
    width = max(_LABEL_WIDTH, max(len(label) for label, _ in rows) + 2)
    lines = []
    for label, value in rows:
        wrapped = textwrap.wrap(
            value,
            width=_LINE_WIDTH,
            initial_indent=label.ljust(width),
            subsequent_indent=" " * width,
            break_on_hyphens=False,
        )
        lines.extend(wrapped or [label])
    return "\n".join(lines) + "\n"
