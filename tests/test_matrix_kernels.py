"""Resolving specs against the kernel cache, offline: a warm cache needs neither apt nor
network, and a kernel given by path gets a PVH vmlinux made once."""

import gzip
import json
import struct
from pathlib import Path

import pytest
from test_matrix_bzimage import make_bzimage, make_elf

from uffdharness.matrix import kernels, privateapt
from uffdharness.matrix.privateapt import AptError


def _fake_entry(cache: Path, release: str, version: str) -> Path:
    entry = cache / "debian" / f"{release}_{version}"
    modules_dir = entry / "root" / "lib" / "modules" / release
    modules_dir.mkdir(parents=True)
    (entry / "root" / "boot").mkdir()
    (entry / "root" / "boot" / f"vmlinuz-{release}").write_bytes(b"bz")
    (entry / "vmlinux").write_bytes(b"elf")
    meta = {
        "release": release,
        "version": version,
        "image_package": f"linux-image-{release}",
        "kernel": f"root/boot/vmlinuz-{release}",
        "modules_dir": str(modules_dir.relative_to(entry)),
    }
    (entry / "kernel.json").write_text(json.dumps(meta))
    return entry


@pytest.fixture
def no_apt(monkeypatch):
    def refuse(*args, **kwargs):
        raise AptError("apt must not run in this test")

    monkeypatch.setattr(privateapt.PrivateApt, "update", refuse)
    monkeypatch.setattr(privateapt.PrivateApt, "download", refuse)


def test_exact_version_from_warm_cache_needs_no_apt(tmp_path: Path, no_apt):
    entry = _fake_entry(tmp_path, "6.1.0-56-amd64", "6.1.192-2")
    image = kernels.resolve("debian:6.1.192-2", cache=tmp_path)
    assert image.release == "6.1.0-56-amd64" and image.package_version == "6.1.192-2"
    assert image.boot_image() == entry / "vmlinux"
    assert image.modules_dir == entry / "root" / "lib" / "modules" / "6.1.0-56-amd64"
    by_name = kernels.resolve("debian:linux-image-6.1.0-56-amd64", cache=tmp_path)
    assert by_name.cache_dir == entry


def test_alias_falls_back_to_newest_cached_kernel_when_apt_fails(tmp_path: Path, no_apt):
    _fake_entry(tmp_path, "6.1.0-50-amd64", "6.1.176-1")
    _fake_entry(tmp_path, "6.1.0-56-amd64", "6.1.192-2")
    _fake_entry(tmp_path, "6.12.117+deb13-amd64", "6.12.117-1")
    logged = []
    image = kernels.resolve("debian:6.1", cache=tmp_path, log=logged.append)
    assert image.package_version == "6.1.192-2"
    assert "apt unavailable" in logged[0]
    assert [k.package_version for k in kernels.cached_kernels(tmp_path)] == [
        "6.1.176-1",
        "6.1.192-2",
        "6.12.117-1",
    ]


def test_alias_without_apt_or_cache_is_a_clear_error(tmp_path: Path, no_apt):
    with pytest.raises(kernels.KernelFetchError, match="debian:6.1"):
        kernels.resolve("debian:6.1", cache=tmp_path, log=lambda m: None)


def test_path_kernel_gets_a_cached_vmlinux(tmp_path: Path):
    elf = make_elf()
    bz = tmp_path / "bzImage"
    bz.write_bytes(make_bzimage(gzip.compress(elf) + struct.pack("<I", len(elf))))
    modules = tmp_path / "mods"
    modules.mkdir()
    (modules / "modules.dep").write_text("")
    image = kernels.resolve(f"{bz},modules={modules}", cache=tmp_path / "cache")
    assert image.release == "6.18.0-test" and image.modules_dir == modules
    assert image.vmlinux is not None and image.vmlinux.read_bytes() == elf
    assert image.vmlinux.parent.parent == tmp_path / "cache" / "local"
    again = kernels.resolve(str(bz), cache=tmp_path / "cache")
    assert again.vmlinux == image.vmlinux


def test_path_kernel_errors(tmp_path: Path):
    with pytest.raises(kernels.KernelFetchError, match="no kernel image"):
        kernels.resolve(str(tmp_path / "absent"), cache=tmp_path)
    (tmp_path / "bz").write_bytes(make_bzimage(b"\x1f\x8b"))
    (tmp_path / "m").mkdir()
    with pytest.raises(kernels.KernelFetchError, match="depmod"):
        kernels.resolve(f"{tmp_path / 'bz'},modules={tmp_path / 'm'}", cache=tmp_path)


def test_host_spec():
    image = kernels.resolve("host")
    assert image.is_host and image.kernel is None and image.release
