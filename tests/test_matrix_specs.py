"""Kernel SPEC parsing, Debian version order, and choosing the package a spec names."""

from pathlib import Path

import pytest
from debian.debian_support import Version

from uffdharness.matrix import debindex
from uffdharness.matrix.kernelspec import SpecError, SpecKind, parse


@pytest.mark.parametrize(
    ("text", "kind", "series", "value"),
    [
        ("host", SpecKind.HOST, (), ""),
        ("debian:5.10", SpecKind.DEBIAN_SERIES, (5, 10), ""),
        ("debian:6.1", SpecKind.DEBIAN_SERIES, (6, 1), ""),
        ("debian:6.12", SpecKind.DEBIAN_SERIES, (6, 12), ""),
        ("debian:latest", SpecKind.DEBIAN_LATEST, (), ""),
        ("debian:6.1.192-2", SpecKind.DEBIAN_VERSION, (), "6.1.192-2"),
        ("debian:7.3~rc7-1~exp1", SpecKind.DEBIAN_VERSION, (), "7.3~rc7-1~exp1"),
        ("debian:6.12.95-1~bpo12+1", SpecKind.DEBIAN_VERSION, (), "6.12.95-1~bpo12+1"),
        (
            "debian:linux-image-6.1.0-56-amd64",
            SpecKind.DEBIAN_PACKAGE,
            (),
            "linux-image-6.1.0-56-amd64",
        ),
    ],
)
def test_parse_debian_and_host(text, kind, series, value):
    spec = parse(text)
    assert (spec.kind, spec.series, spec.value, spec.text) == (kind, series, value, text)


def test_parse_path_with_and_without_modules():
    plain = parse("/boot/vmlinuz-6.18")
    assert plain.kind is SpecKind.PATH
    assert plain.kernel_path == Path("/boot/vmlinuz-6.18") and plain.modules_dir is None
    with_modules = parse("./arch/x86/boot/bzImage,modules=/tmp/mods/lib/modules/6.18.0")
    assert with_modules.kernel_path == Path("./arch/x86/boot/bzImage")
    assert with_modules.modules_dir == Path("/tmp/mods/lib/modules/6.18.0")


@pytest.mark.parametrize(
    "text", ["debian:", "debian:six", "ubuntu:22.04", "6.1", "/boot/bzImage,initrd=/x"]
)
def test_parse_rejects(text):
    with pytest.raises(SpecError):
        parse(text)


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("6.1.176-1", "6.1.192-2"),
        ("6.12.90-1~bpo12+1", "6.12.90-1"),  # a backport sorts before the release
        ("6.12.90-1", "6.12.90-1+deb12.1"),
        ("7.3~rc7-1~exp1", "7.3-1"),  # ~ sorts before anything, even the end
        ("7.3~rc7-1~exp1", "7.3.4-1~bpo13+1"),
        ("1.0", "1.0-1"),
        ("9.9-1", "1:0.1-1"),  # epoch wins
        ("1.0a", "1.0+"),  # letters before non-letters
        ("6.9.12-1", "6.10.1-1"),  # numeric, not lexical
    ],
)
def test_debian_version_order(older, newer):
    # Version is the sort key debindex.select and kernels.cached_kernels use
    assert Version(older) < Version(newer)
    assert Version(newer) > Version(older)
    assert Version(older) == Version(older)


def test_upstream_numbers():
    assert debindex.upstream_numbers("6.12.107-1") == (6, 12, 107)
    assert debindex.upstream_numbers("7.3~rc7-1~exp1") == (7, 3)
    assert debindex.upstream_numbers("1:5.10.262-1") == (5, 10, 262)


APT_SHOW = """\
Package: linux-image-6.1.0-50-amd64
Source: linux-signed-amd64 (6.1.176+1)
Version: 6.1.176-1
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Size: 70305560

Package: linux-image-6.1.0-56-amd64
Version: 6.1.192-2
Depends: kmod, linux-base (>= 4.3~)
Size: 70550672

Package: linux-image-6.1.0-56-cloud-amd64
Version: 6.1.192-2
Size: 1

Package: linux-image-6.12.107+deb13-amd64
Version: 6.12.107-1
Depends: kmod,
 initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Size: 107898972

Package: linux-image-7.3.4+deb13-amd64
Version: 7.3.4-1~bpo13+1
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), linux-modules-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)
Size: 1900

Package: linux-image-7.3-amd64
Version: 7.3~rc7-1~exp1
Depends: linux-binary-7.3-amd64 (= 7.3~rc7-1~exp1)
Size: 1888
"""  # noqa: E501


def test_parse_records_flattens_alternatives_and_continuations():
    records = {r.name: r for r in debindex.parse_records(APT_SHOW)}
    assert records["linux-image-6.12.107+deb13-amd64"].depends == (
        "kmod",
        "initramfs-tools",
        "linux-initramfs-tool",
    )
    assert records["linux-image-6.1.0-56-amd64"].release == "6.1.0-56-amd64"
    assert records["linux-image-6.1.0-50-amd64"].size == 70305560


@pytest.mark.parametrize(
    ("spec", "chosen"),
    [
        ("debian:6.1", "6.1.192-2"),  # newest 6.1, never 6.12, never the cloud flavour
        ("debian:6.12", "6.12.107-1"),
        ("debian:7.3", "7.3.4-1~bpo13+1"),  # the release beats experimental's rc
        ("debian:latest", "7.3.4-1~bpo13+1"),
        ("debian:6.1.176-1", "6.1.176-1"),
        ("debian:7.3~rc7-1~exp1", "7.3~rc7-1~exp1"),
        ("debian:linux-image-6.1.0-50-amd64", "6.1.176-1"),
    ],
)
def test_select(spec, chosen):
    assert debindex.select(parse(spec), debindex.parse_records(APT_SHOW)).version == chosen


def test_select_names_available_series_when_nothing_matches():
    with pytest.raises(LookupError, match=r"series available: 6\.1, 6\.12, 7\.3"):
        debindex.select(parse("debian:4.19"), debindex.parse_records(APT_SHOW))


def test_packages_for_both_layouts():
    records = {r.name: r for r in debindex.parse_records(APT_SHOW)}
    classic = debindex.packages_for(records["linux-image-6.1.0-56-amd64"])
    assert not classic.split_layout
    assert classic.downloads == (("linux-image-6.1.0-56-amd64", "6.1.192-2"),)
    split = debindex.packages_for(records["linux-image-7.3.4+deb13-amd64"])
    assert split.split_layout and split.release == "7.3.4+deb13-amd64"
    assert [name for name, _ in split.downloads] == [
        "linux-binary-7.3.4+deb13-amd64",
        "linux-modules-7.3.4+deb13-amd64",
        "linux-base-7.3.4+deb13-amd64",
    ]
    assert {version for _, version in split.downloads} == {"7.3.4-1~bpo13+1"}
