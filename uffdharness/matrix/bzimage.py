"""Read an x86 kernel image: its release string, and the ELF vmlinux inside a bzImage.

bzImage layout (Documentation/arch/x86/boot.rst): the real-mode setup header at 0x1F1 holds
setup_sects; "HdrS" at 0x202; kernel_version (0x20E) points, minus 0x200, at the version
string; from boot protocol 2.08 payload_offset/payload_length (0x248/0x24C) locate the
compressed vmlinux inside the protected-mode part, which starts at (setup_sects + 1) * 512.
The compressor appends the uncompressed size as a 32-bit little-endian word.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from . import compression

ELF_MAGIC = b"\x7fELF"
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point that lets qemu -kernel boot an ELF


class NotABzImage(ValueError):
    pass


def _header(data: bytes) -> tuple[int, int, int]:
    """(protected-mode start, payload offset, payload length) of a bzImage."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise NotABzImage("no HdrS setup header")
    (protocol,) = struct.unpack_from("<H", data, 0x206)
    if protocol < 0x208:
        raise NotABzImage(f"boot protocol {protocol:#x} predates payload_offset (2.08)")
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    return (setup_sects + 1) * 512, payload_offset, payload_length


def release_of(path: Path) -> str:
    """`uname -r` of the kernel in `path`, a bzImage or an ELF vmlinux."""
    with open(path, "rb") as f:
        head = f.read(0x10000)
        if head[:4] == ELF_MAGIC:
            f.seek(0)
            match = re.search(rb"Linux version (\S+) ", f.read())
            if not match:
                raise ValueError(f"{path}: no 'Linux version' string in the ELF image")
            return match.group(1).decode()
    if head[0x202:0x206] != b"HdrS":
        raise NotABzImage(f"{path}: neither a bzImage nor an ELF vmlinux")
    (pointer,) = struct.unpack_from("<H", head, 0x20E)
    text = head[pointer + 0x200 : pointer + 0x200 + 256]
    return text.split(b" ", 1)[0].split(b"\0", 1)[0].decode()


def payload_compression(data: bytes) -> str:
    start, offset, length = _header(data)
    return compression.detect(data[start + offset : start + offset + 8]) or "unknown"


def extract_vmlinux(data: bytes) -> bytes:
    """The ELF vmlinux inside bzImage `data`; ValueError for compressions we cannot read."""
    start, offset, length = _header(data)
    elf = compression.decompress(data[start + offset : start + offset + length])
    if not elf.startswith(ELF_MAGIC):
        raise ValueError("the kernel payload did not decompress to an ELF image")
    return elf


def has_pvh_entry(elf: bytes) -> bool:
    """True when the ELF carries XEN_ELFNOTE_PHYS32_ENTRY, which qemu needs to boot it."""
    if elf[:4] != ELF_MAGIC or elf[4] != 2:
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        base = phoff + index * phentsize
        (p_type,) = struct.unpack_from("<I", elf, base)
        if p_type != 4:  # PT_NOTE
            continue
        (p_offset,) = struct.unpack_from("<Q", elf, base + 8)
        (p_filesz,) = struct.unpack_from("<Q", elf, base + 32)
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False
