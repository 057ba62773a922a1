"""Reading kernel images: release string, payload compression, vmlinux with a PVH entry."""

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from uffdharness.matrix import bzimage


def make_elf(
    note_type: int = bzimage.XEN_ELFNOTE_PHYS32_ENTRY,
    extra: bytes = b"Linux version 6.18.0-test (me@here) #1 SMP\0",
) -> bytes:
    note = struct.pack("<III", 4, 4, note_type) + b"Xen\0" + struct.pack("<I", 0x1000000)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = bytearray(56)
    struct.pack_into("<I", phdr, 0, 4)  # PT_NOTE
    struct.pack_into("<Q", phdr, 8, 64 + 56)  # p_offset
    struct.pack_into("<Q", phdr, 32, len(note))  # p_filesz
    return bytes(header + phdr) + note + extra


def make_bzimage(payload: bytes, release: str = "6.18.0-test") -> bytes:
    setup_sects = 1
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    version = f"{release} (builder@host) #1 SMP\0".encode()
    setup[0x300 : 0x300 + len(version)] = version
    struct.pack_into("<H", setup, 0x20E, 0x300 - 0x200)
    payload_offset = 0x40
    struct.pack_into("<II", setup, 0x248, payload_offset, len(payload))
    return bytes(setup) + b"\0" * payload_offset + payload + b"\0" * 64


def _with_size_word(compressed: bytes, size: int) -> bytes:
    return compressed + struct.pack("<I", size)


@pytest.mark.parametrize("kind", ["gzip", "xz"])
def test_extract_vmlinux(kind):
    elf = make_elf()
    compressed = gzip.compress(elf) if kind == "gzip" else lzma.compress(elf)
    image = make_bzimage(_with_size_word(compressed, len(elf)))
    assert bzimage.payload_compression(image) == kind
    assert bzimage.extract_vmlinux(image) == elf


def test_unknown_payload_is_refused():
    image = make_bzimage(b"\x02\x21\x4c\x18" + b"lz4" * 10)
    assert bzimage.payload_compression(image) == "lz4"
    with pytest.raises(ValueError):
        bzimage.extract_vmlinux(image)


def test_release_from_bzimage_and_elf(tmp_path: Path):
    (tmp_path / "bzImage").write_bytes(make_bzimage(b"\x1f\x8b", release="6.1.0-56-amd64"))
    (tmp_path / "vmlinux").write_bytes(make_elf())
    assert bzimage.release_of(tmp_path / "bzImage") == "6.1.0-56-amd64"
    assert bzimage.release_of(tmp_path / "vmlinux") == "6.18.0-test"
    (tmp_path / "junk").write_bytes(b"\0" * 4096)
    with pytest.raises(bzimage.NotABzImage):
        bzimage.release_of(tmp_path / "junk")


def test_pvh_note_detection():
    assert bzimage.has_pvh_entry(make_elf())
    assert not bzimage.has_pvh_entry(make_elf(note_type=1))
    assert not bzimage.has_pvh_entry(b"MZ not an elf")
