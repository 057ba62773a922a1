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

from . import debversion
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
    records = []
    for stanza in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line[:1].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" not in fields or "Version" not in fields:
            continue
        depends = tuple(
            alternative.split("(")[0].strip()
            for clause in fields.get("Depends", "").split(",")
            for alternative in clause.split("|")
            if alternative.strip()
        )
        records.append(
            PackageRecord(
                fields["Package"], fields["Version"], depends, int(fields.get("Size", "0") or 0)
            )
        )
    return records


def is_generic_image(name: str) -> bool:
    return re.fullmatch(IMAGE_NAME_REGEX, name) is not None and not name.endswith(
        _EXCLUDED_FLAVOURS
    )


def select(spec: KernelSpec, records: list[PackageRecord]) -> PackageRecord:
    """The newest generic linux-image record matching `spec`; LookupError names what exists."""
    images = [r for r in records if is_generic_image(r.name)]
    if spec.kind is SpecKind.DEBIAN_SERIES:
        n = len(spec.series)
        matching = [r for r in images if debversion.upstream_numbers(r.version)[:n] == spec.series]
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
            {".".join(map(str, debversion.upstream_numbers(r.version)[:2])) for r in images},
            key=lambda s: tuple(map(int, s.split("."))),
        )
        raise LookupError(
            f"no Debian kernel package matches {spec.text!r}; series available: "
            + (", ".join(series) or "none (apt lists empty?)")
        )
    return max(matching, key=lambda r: debversion.sort_key(r.version))


def packages_for(image: PackageRecord) -> KernelPackages:
    release = image.release
    binary = f"linux-binary-{release}"
    if binary in image.depends:
        parts = (binary, f"linux-modules-{release}", f"linux-base-{release}")
        downloads = [(name, image.version) for name in parts if name in image.depends]
        return KernelPackages(image, tuple(downloads), split_layout=True)
    return KernelPackages(image, ((image.name, image.version),), split_layout=False)
