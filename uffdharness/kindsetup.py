"""What the memory kinds of a run need from the system, set up once for the whole run:
a hugepage pool per hugetlb page size and the THP knobs the THP kinds need (switched on
by a root run and restored afterwards, like the pool). Whatever cannot be had becomes a
per-kind skip reason, judged before any scenario forks."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack

from . import thp
from .hugepages import HugepageError, HugepagePool
from .memory import SPECS, KindSpec, pmd_size

THP_ANON = frozenset({"always", "madvise"})
THP_SHMEM = frozenset({"always", "within_size", "advise", "force"})
INHERITS = frozenset({"inherit"})


def thp_knobs(spec: KindSpec) -> list[thp.Knob]:
    """The knobs that must grant THPs to ``spec``'s MADV_HUGEPAGE mappings."""
    top = thp.SYSFS_THP
    pmd_dir = thp.size_dir(pmd_size())
    if spec.thp == "pmd" and spec.family == "anon":
        return [
            thp.Knob(f"{top}/enabled", THP_ANON, "madvise"),
            thp.Knob(f"{pmd_dir}/enabled", THP_ANON | INHERITS, "inherit"),
        ]
    if spec.thp == "pmd":
        return [
            thp.Knob(f"{top}/shmem_enabled", THP_SHMEM, "advise"),
            thp.Knob(f"{pmd_dir}/shmem_enabled", THP_SHMEM | INHERITS, "inherit"),
        ]
    if spec.thp == "mthp" and spec.family == "shmem":
        # anonymous shmem's per-size knobs (6.11); memfd/tmpfs follow the huge= mount option
        sizes = thp.mthp_sizes(pmd_size())
        return [
            thp.Knob(f"{thp.size_dir(size)}/shmem_enabled", THP_SHMEM, "advise") for size in sizes
        ]
    if spec.thp == "mthp":
        sizes = thp.mthp_sizes(pmd_size())
        return [thp.Knob(f"{thp.size_dir(size)}/enabled", THP_ANON, "madvise") for size in sizes]
    return []


def thp_reason(spec: KindSpec, is_root: bool) -> str | None:
    """Why ``spec``'s THPs cannot be had here (before switching any knob)."""
    if not thp.available():
        return "kernel without transparent hugepages (no /sys/kernel/mm/transparent_hugepage)"
    if spec.thp == "mthp" and not thp.mthp_sizes(pmd_size()):
        return "kernel offers no mTHP sizes (transparent_hugepage/hugepages-<size>kB, 6.8)"
    if spec.family == "shmem" and thp.read_knob(f"{thp.SYSFS_THP}/shmem_enabled") == "deny":
        return "shmem THP is denied (transparent_hugepage/shmem_enabled = deny)"
    off = [knob for knob in thp_knobs(spec) if not knob.satisfied()]
    if off and not is_root:
        shown = ", ".join(
            f"{knob.path.removeprefix(thp.SYSFS_THP + '/')} = {thp.read_knob(knob.path)}"
            for knob in off
        )
        return f"THP is off for {spec.name} ({shown}) and only root may switch it on"
    return None


class KindSetup(ExitStack):
    """Enter before the run's first pair; ``skip_reason(kind)`` then says why a kind cannot
    run (None: it can). Leaving gives back every pool and THP knob."""

    def __init__(self, kinds_needs: Iterable[tuple[str, int]], is_root: bool) -> None:
        """``kinds_needs``: (memory kind, hugetlb pages it needs) of every pair to run."""
        super().__init__()
        self._needs = list(kinds_needs)
        self._is_root = is_root
        self._reasons: dict[str, str] = {}

    def __enter__(self) -> KindSetup:
        super().__enter__()
        try:
            self._reserve_pools()
            self._switch_thp()
        except BaseException:
            self.close()
            raise
        return self

    def skip_reason(self, kind: str) -> str | None:
        return self._reasons.get(kind)

    def _reserve_pools(self) -> None:
        by_size: dict[int, tuple[int, list[str]]] = {}
        for kind, pages in self._needs:
            spec = SPECS[kind]
            if spec.is_hugetlb:
                count, kinds = by_size.get(spec.page_size, (0, []))
                by_size[spec.page_size] = (max(count, spec.pages(pages)), [*kinds, kind])
        for size, (count, kinds) in sorted(by_size.items()):
            reason = None
            if not self._is_root:
                reason = "hugetlb needs root to reserve hugepages via /proc/sys/vm/nr_hugepages"
            else:
                try:
                    self.enter_context(HugepagePool(count, size >> 10))
                except (HugepageError, OSError) as exc:
                    reason = f"cannot reserve {count} hugepages of {size >> 20} MiB: {exc}"
            if reason:
                self._reasons.update(dict.fromkeys(kinds, reason))

    def _switch_thp(self) -> None:
        kinds = sorted({kind for kind, _ in self._needs if SPECS[kind].thp})
        for spec in (SPECS[kind] for kind in kinds):
            reason = thp_reason(spec, self._is_root)
            if reason:
                self._reasons[spec.name] = reason
                continue
            try:
                self.enter_context(thp.switched(thp_knobs(spec)))
            except OSError as exc:
                self._reasons[spec.name] = f"cannot switch THP on for {spec.name}: {exc}"
