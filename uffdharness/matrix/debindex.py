"""Pick the Debian kernel package a spec names, from apt's package records.

Two layouts exist. Up to 6.18 `linux-image-<release>` is the whole kernel: /boot/vmlinuz-*
and /lib/modules/<release>. From 6.19 (trixie-backports, sid) it is a metapackage depending
on `linux-binary-<release>` (usr/lib/modules/<release>/vmlinuz), `linux-modules-<release>`
and `linux-base-<release>` (config, modules.builtin: without it every built-in module looks
missing); those three are what we download.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from debian.deb822 import Packages
from debian.debian_support import Version

from .kernelspec import KernelSpec, SpecKind

# The generic amd64 flavour only: not cloud-amd64, rt-amd64, -unsigned or -dbg packages.
IMAGE_NAME_REGEX = r"^linux-image-[0-9][^ ]*-amd64$"
_EXCLUDED_FLAVOURS = ("-cloud-amd64", "-rt-amd64")


@dataclass(frozen=True)
class PackageRecord:
    name: str
    version: str
    depends: tuple[str, ...] = ()  # package names only, alternatives flattened
    size: int = 0

    @property
    def release(self) -> str:
        """The `uname -r` of the kernel: linux-image-6.1.0-56-amd64 -> 6.1.0-56-amd64."""
        return self.name.removeprefix("linux-image-")


@dataclass(frozen=True)
class KernelPackages:
    """What to download for one kernel: (name, version) pairs, and which layout it has."""

    image: PackageRecord
    downloads: tuple[tuple[str, str], ...]
    split_layout: bool

    @property
    def release(self) -> str:
        return self.image.release


def parse_records(text: str) -> list[PackageRecord]:
    """The records of `apt-cache show` output; stanzas without Package or Version are skipped.

    Depends keeps package names only: version constraints and architecture qualifiers are
    dropped and the alternatives of `a | b` are both listed.
    """
    records = []
    # python3-apt's TagFile parses only files, and this is apt-cache's stdout; Packages then
    # splits stanzas as apt does (a whitespace-only line does not end one).
    for stanza in Packages.iter_paragraphs(text, use_apt_pkg=False):
        if "Package" not in stanza or "Version" not in stanza:
            continue
        depends = tuple(
            alternative["name"]
            for clause in stanza.relations["depends"]
            for alternative in clause
            if alternative["name"]
        )
        records.append(
            PackageRecord(
                stanza["Package"], stanza["Version"], depends, int(stanza.get("Size") or 0)
            )
        )
    return records


def upstream_numbers(version: str) -> tuple[int, ...]:
    """Leading numeric components of the upstream version: '6.12.107-1' -> (6, 12, 107)."""
    match = re.match(r"\d+(?:\.\d+)*", Version(version).upstream_version)
    return tuple(int(n) for n in match.group().split(".")) if match else ()


def is_generic_image(name: str) -> bool:
    return re.fullmatch(IMAGE_NAME_REGEX, name) is not None and not name.endswith(
        _EXCLUDED_FLAVOURS
    )


def select(spec: KernelSpec, records: list[PackageRecord]) -> PackageRecord:
    """The newest generic linux-image record matching `spec`; LookupError names what exists."""
    images = [r for r in records if is_generic_image(r.name)]
    if spec.kind is SpecKind.DEBIAN_SERIES:
        n = len(spec.series)
        matching = [r for r in images if upstream_numbers(r.version)[:n] == spec.series]
    elif spec.kind is SpecKind.DEBIAN_LATEST:
        matching = images
    elif spec.kind is SpecKind.DEBIAN_VERSION:
        matching = [r for r in images if r.version == spec.value]
    elif spec.kind is SpecKind.DEBIAN_PACKAGE:
        matching = [r for r in images if r.name == spec.value]
    else:
        raise ValueError(f"{spec.text!r} is not a Debian kernel spec")
    if not matching:
        series = sorted(
            {".".join(map(str, upstream_numbers(r.version)[:2])) for r in images},
            key=lambda s: tuple(map(int, s.split("."))),
        )
        raise LookupError(
            f"no Debian kernel package matches {spec.text!r}; series available: "
            + (", ".join(series) or "none (apt lists empty?)")
        )
    return max(matching, key=lambda r: Version(r.version))


def packages_for(image: PackageRecord) -> KernelPackages:
    release = image.release
    binary = f"linux-binary-{release}"
    if binary in image.depends:
        parts = (binary, f"linux-modules-{release}", f"linux-base-{release}")
        downloads = [(name, image.version) for name in parts if name in image.depends]
        return KernelPackages(image, tuple(downloads), split_layout=True)
    return KernelPackages(image, ((image.name, image.version),), split_layout=False)
