"""Parse the kernel SPEC strings a user writes on the `uffdharness matrix` command line.

host                         the running kernel, no qemu
debian:5.10 | debian:6.1 | debian:6.12 | debian:X.Y
                             newest Debian kernel package of that upstream series
debian:latest                newest Debian kernel package in any reachable suite
debian:6.1.192-2             that exact Debian package version
debian:linux-image-6.1.0-56-amd64
                             that exact binary package (newest version of it)
/path/to/bzImage[,modules=/path/to/lib/modules/RELEASE]
                             a kernel you built; vmlinux (ELF) works too
src:PATH | debian-src:X.Y [,patch=FILE]... [,config=FRAGMENT]...
                             a kernel built from source (kbuild.specs)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class SpecKind(str, Enum):
    HOST = "host"
    DEBIAN_SERIES = "debian-series"
    DEBIAN_LATEST = "debian-latest"
    DEBIAN_VERSION = "debian-version"
    DEBIAN_PACKAGE = "debian-package"
    PATH = "path"
    SOURCE = "source"  # src:PATH, built (kbuild)
    DEBIAN_SOURCE = "debian-source"  # debian-src:X.Y, downloaded and built (kbuild)


@dataclass(frozen=True)
class KernelSpec:
    text: str
    kind: SpecKind
    series: tuple[int, ...] = ()  # DEBIAN_SERIES: (6, 1)
    value: str = ""  # DEBIAN_VERSION: the version; DEBIAN_PACKAGE: the package name
    kernel_path: Path | None = None
    modules_dir: Path | None = None


class SpecError(ValueError):
    pass


# ASCII: Python's \d also matches other scripts' digits (int() reads "６.１" as 6.1), which
# would let a spec pass here and match no package only after an apt lookup.
_SERIES = re.compile(r"\d+\.\d+", re.ASCII)
_PACKAGE = re.compile(r"linux-image-[0-9][A-Za-z0-9.+~-]*", re.ASCII)
# An exact Debian version: upstream with at least three numeric parts, or any "-revision".
_VERSION = re.compile(r"(\d+:)?\d+\.\d+[A-Za-z0-9.+~]*(-[A-Za-z0-9.+~]+)?", re.ASCII)


def parse(text: str) -> KernelSpec:
    """The spec ``text`` means; SpecError quoting it as given when it means nothing."""
    given, text = text, text.strip()
    if text == "host":
        return KernelSpec(text, SpecKind.HOST)
    if text.startswith(("src:", "debian-src:")):
        from .kbuild import specs

        return specs.parse(text)
    if text.startswith("debian:"):
        return _parse_debian(text, text[len("debian:") :])
    # a path is told by its kernel part alone: "host,modules=/x" is not a path
    kernel_part = text.partition(",")[0]
    if "/" in kernel_part or kernel_part.startswith("."):
        return _parse_path(text)
    raise SpecError(
        f"unknown kernel spec {given!r}: expected host, debian:X.Y, debian:latest, "
        "debian:<package version>, debian:linux-image-<release>, a path to a kernel image, "
        "src:PATH or debian-src:X.Y"
    )


def _parse_debian(text: str, rest: str) -> KernelSpec:
    if rest == "latest":
        return KernelSpec(text, SpecKind.DEBIAN_LATEST)
    if _SERIES.fullmatch(rest):
        series = tuple(int(n) for n in rest.split("."))
        return KernelSpec(text, SpecKind.DEBIAN_SERIES, series=series)
    if _PACKAGE.fullmatch(rest):
        return KernelSpec(text, SpecKind.DEBIAN_PACKAGE, value=rest)
    if _VERSION.fullmatch(rest):
        return KernelSpec(text, SpecKind.DEBIAN_VERSION, value=rest)
    raise SpecError(f"unknown Debian kernel spec {text!r}")


def _parse_path(text: str) -> KernelSpec:
    kernel_text, _, options = text.partition(",")
    modules_dir = None
    if options:
        key, _, value = options.partition("=")
        if key != "modules" or not value:
            raise SpecError(f"{text!r}: the only option after ',' is modules=<dir>")
        modules_dir = Path(value).expanduser()
    return KernelSpec(
        text, SpecKind.PATH, kernel_path=Path(kernel_text).expanduser(), modules_dir=modules_dir
    )
