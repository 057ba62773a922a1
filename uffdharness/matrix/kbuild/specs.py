"""Kernel specs that name a source to build rather than a kernel to boot.

    src:PATH[,patch=FILE]...[,config=FRAGMENT]...
        a kernel tree: a git checkout or an unpacked tarball (never modified)
    debian-src:X.Y[,...] | debian-src:<package version>[,...]
        Debian's linux-source-X.Y package (newest, or that version), downloaded through
        the matrix's private apt setup

``patch=`` applies a unified diff (``patch -p1``), repeatable, in the order given;
``config=`` adds a config fragment on top of the catalogue's (``uffdharness kconfig``).
Everything a spec names is read and checked here, before any download or build, so a bad
spec is one line and exit status 2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..kernelspec import KernelSpec, SpecError, SpecKind
from . import kconfig, patches

SOURCE_PREFIX = "src:"
DEBIAN_SOURCE_PREFIX = "debian-src:"
PREFIXES = (SOURCE_PREFIX, DEBIAN_SOURCE_PREFIX)

_SERIES = re.compile(r"\d+\.\d+")
_VERSION = re.compile(r"\d+\.\d+\.\d+[A-Za-z0-9.+~]*(-[A-Za-z0-9.+~]+)?")
# What a kernel tree has at its top (an unpacked tarball or a checkout alike).
TREE_MARKERS = ("Makefile", "Kconfig", "arch/x86/Kconfig", "scripts/kconfig")


@dataclass(frozen=True)
class Fragment:
    path: Path
    text: str
    values: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SourceSpec(KernelSpec):
    tree: Path | None = None  # src: the tree; debian-src: None (found after download)
    patches: tuple[patches.Patch, ...] = ()
    fragments: tuple[Fragment, ...] = ()

    @property
    def carries_fixes(self) -> tuple[str, ...]:
        """The upstream fixes the patches declare, each once, in patch order."""
        return tuple(dict.fromkeys(fix for p in self.patches for fix in p.carries_fixes))

    @property
    def extra_config(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for fragment in self.fragments:
            values.update(fragment.values)
        return values

    @property
    def package(self) -> str:
        """debian-src: the linux-source package name."""
        return f"linux-source-{'.'.join(map(str, self.series))}"


def is_source_spec(text: str) -> bool:
    return text.strip().startswith(PREFIXES)


def parse(text: str) -> SourceSpec:
    text = text.strip()
    head, *options = text.split(",")
    patch_list: list[patches.Patch] = []
    fragments: list[Fragment] = []
    for option in options:
        key, _, value = option.partition("=")
        if not value:
            raise SpecError(f"{text!r}: option {option!r} needs a value (patch=FILE, config=FILE)")
        path = Path(value).expanduser().resolve()
        if key == "patch":
            try:
                patch_list.append(patches.parse(path))
            except patches.PatchError as exc:
                raise SpecError(f"{text!r}: {exc}") from exc
        elif key == "config":
            fragments.append(_fragment(text, path))
        else:
            raise SpecError(f"{text!r}: unknown option {key!r}; the options are patch= and config=")
    common = {"patches": tuple(patch_list), "fragments": tuple(fragments)}
    if head.startswith(SOURCE_PREFIX):
        return SourceSpec(
            text, SpecKind.SOURCE, tree=_tree(text, head[len(SOURCE_PREFIX) :]), **common
        )
    rest = head[len(DEBIAN_SOURCE_PREFIX) :]
    if _SERIES.fullmatch(rest):
        series = tuple(int(n) for n in rest.split("."))
        return SourceSpec(text, SpecKind.DEBIAN_SOURCE, series=series, **common)
    if _VERSION.fullmatch(rest):
        series = tuple(int(n) for n in rest.split(".")[:2])
        return SourceSpec(text, SpecKind.DEBIAN_SOURCE, series=series, value=rest, **common)
    raise SpecError(
        f"{text!r}: expected debian-src:X.Y (e.g. debian-src:6.1) or debian-src:<package "
        "version> (e.g. debian-src:6.1.192-3)"
    )


def _tree(text: str, given: str) -> Path:
    if not given:
        raise SpecError(f"{text!r}: src: needs the path of a kernel tree")
    tree = Path(given).expanduser().resolve()
    if not tree.is_dir():
        raise SpecError(f"{text!r}: {tree} is not a directory")
    missing = [marker for marker in TREE_MARKERS if not (tree / marker).exists()]
    if missing:
        raise SpecError(f"{text!r}: {tree} is not a kernel tree (no {', '.join(missing)})")
    return tree


def _fragment(text: str, path: Path) -> Fragment:
    try:
        content = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{text!r}: cannot read config fragment {path}: {exc}") from exc
    try:
        values = kconfig.parse_assignments(content, str(path))
    except kconfig.FragmentError as exc:
        raise SpecError(f"{text!r}: {exc}") from exc
    return Fragment(path.resolve(), content, tuple(values.items()))
