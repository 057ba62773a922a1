"""modules.dep resolution: dependency order, built-in modules, compressed modules."""

import gzip
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest

from uffdharness.matrix import modules

MODULES_DEP = """\
kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz kernel/fs/fscache/fscache.ko.xz
kernel/net/9p/9pnet.ko.xz:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz
kernel/fs/fscache/fscache.ko.xz: kernel/fs/netfs/netfs.ko.xz
kernel/fs/netfs/netfs.ko.xz:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci-modern-dev.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio_pci-modern-dev.ko.xz: kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio.ko.xz:
"""  # noqa: E501

WANTED = ["virtio_pci", "9pnet_virtio", "9p"]


def _index(builtin: str = "") -> modules.ModuleIndex:
    return modules.ModuleIndex(
        modules.parse_modules_dep(MODULES_DEP), modules.parse_builtin(builtin)
    )


def test_module_name_normalises_suffix_and_dashes():
    assert modules.module_name("kernel/net/9p/9pnet_virtio.ko.zst") == "9pnet_virtio"
    assert modules.module_name("kernel/x/virtio_pci-modern-dev.ko") == "virtio_pci_modern_dev"
    assert modules.module_name("a/b.ko.gz") == "b"


def test_load_order_puts_dependencies_first_and_each_once():
    order = [e.name for e in modules.load_order(_index(), WANTED)]
    assert sorted(order) == sorted(set(order))
    assert set(order) == {
        "virtio_pci",
        "9pnet_virtio",
        "9p",
        "9pnet",
        "netfs",
        "fscache",
        "virtio_pci_modern_dev",
        "virtio_ring",
        "virtio",
    }
    deps = modules.parse_modules_dep(MODULES_DEP)
    for position, name in enumerate(order):
        for dep in deps[name].depends:
            assert order.index(dep) < position, f"{dep} must load before {name}"


def test_builtin_modules_are_not_loaded():
    builtin = (
        "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_pci.ko\n"
    )
    order = [e.name for e in modules.load_order(_index(builtin), WANTED)]
    assert "virtio_pci" not in order and "virtio" not in order
    assert "9pnet_virtio" in order


def test_everything_builtin_gives_an_empty_order():
    builtin = "\n".join(f"kernel/{name}.ko" for name in ["9p", "9pnet_virtio", "virtio_pci"])
    assert modules.load_order(modules.ModuleIndex({}, modules.parse_builtin(builtin)), WANTED) == []


def test_missing_module_is_named():
    with pytest.raises(modules.MissingModules, match="9p"):
        modules.load_order(modules.ModuleIndex({}, frozenset()), ["9p"])


@pytest.mark.parametrize("suffix", [".ko", ".ko.xz", ".ko.gz", ".ko.zst"])
def test_read_module_decompresses(tmp_path: Path, suffix):
    elf = b"\x7fELF" + bytes(range(256)) * 40
    if suffix == ".ko.xz":
        data = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    elif suffix == ".ko.gz":
        data = gzip.compress(elf)
    elif suffix == ".ko.zst":
        if shutil.which("zstd") is None:
            pytest.skip("zstd CLI not installed (apt-get install -y zstd)")
        data = subprocess.run(
            ["zstd", "-q", "-c"], input=elf, capture_output=True, check=True
        ).stdout
    else:
        data = elf
    (tmp_path / f"m{suffix}").write_bytes(data)
    entry = modules.ModuleEntry("m", f"m{suffix}", ())
    assert modules.read_module(tmp_path, entry) == elf


def test_load_index_needs_depmod_output(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="depmod"):
        modules.load_index(tmp_path)
    (tmp_path / "modules.dep").write_text(MODULES_DEP)
    (tmp_path / "modules.builtin").write_text("kernel/drivers/virtio/virtio.ko\n")
    index = modules.load_index(tmp_path)
    assert "virtio" in index.builtin and "9p" in index.modules
