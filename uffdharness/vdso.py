"""The kernel version as the vDSO states it, read from this process's own memory.

The kernel links a ``Linux`` ELF note of type 0 into the vDSO whose 4-byte descriptor is
LINUX_VERSION_CODE: ``(major << 16) | (minor << 8) | patch``. Since the 4.9.256 overflow
(kbuild "clamp SUBLEVEL to 255", 5.11 and the stable trees) the patch byte saturates at 255.
Distribution kernels fill it with the real upstream patch level, so the vDSO of Debian's
"6.1.0-27-amd64" says 6.1.123 where ``uname -r`` does not.
"""

from __future__ import annotations

import ctypes
import io
import os
import struct
from dataclasses import dataclass

from uffdharness.kernelversion import KernelVersion

__all__ = [
    "AT_SYSINFO_EHDR",
    "PATCH_CLAMP",
    "VdsoError",
    "VdsoMapping",
    "agrees",
    "auxv_value",
    "find_vdso",
    "read_vdso_image",
    "version_from_elf",
    "vdso_version",
]

AT_SYSINFO_EHDR = 33
PATCH_CLAMP = 255

# Notes of owner "Linux": type 0 is LINUX_VERSION_CODE; type 0x100 is the build salt
# (CONFIG_BUILD_SALT), a free-form string that may name a different kernel entirely.
_NOTE_OWNER = "Linux"
_NOTE_TYPE_VERSION = 0

_AUXV_PAIR = struct.Struct("@2L")


class VdsoError(RuntimeError):
    """The vDSO could not be located or carries no version note."""


@dataclass(frozen=True)
class VdsoMapping:
    base: int
    length: int


# A process that is not dumpable (it changed credentials, e.g. root -> setuid(65534), or
# called prctl(PR_SET_DUMPABLE, 0)) finds its own /proc/self/auxv (0400) and /proc/self/mem
# (0600) owned by root and cannot open them. Then libc's copy of the auxiliary vector and a
# plain load from the always-readable vDSO mapping give the same bytes.


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def auxv_value(key: int, auxv_path: str = "/proc/self/auxv") -> int | None:
    """The value of one auxiliary vector entry of this process, or None if absent."""
    try:
        with open(auxv_path, "rb") as auxv:
            raw = auxv.read()
    except PermissionError:
        getauxval = _libc().getauxval
        getauxval.restype = ctypes.c_ulong
        getauxval.argtypes = [ctypes.c_ulong]
        return int(getauxval(key)) or None
    usable = len(raw) - len(raw) % _AUXV_PAIR.size
    for entry_key, value in _AUXV_PAIR.iter_unpack(raw[:usable]):
        if entry_key == 0:  # AT_NULL ends the vector
            break
        if entry_key == key:
            return int(value)
    return None


def _vdso_maps_line(maps_path: str = "/proc/self/maps") -> tuple[int, int] | None:
    with open(maps_path) as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == "[vdso]":
                start, _, end = fields[0].partition("-")
                return int(start, 16), int(end, 16)
    return None


def find_vdso() -> VdsoMapping:
    """Where the vDSO is mapped: base from AT_SYSINFO_EHDR, length from /proc/self/maps."""
    base = auxv_value(AT_SYSINFO_EHDR)
    if base is None or base == 0:
        raise VdsoError("no AT_SYSINFO_EHDR in /proc/self/auxv (kernel booted with vdso=0?)")
    span = _vdso_maps_line()
    if span is None:
        raise VdsoError("no [vdso] line in /proc/self/maps")
    start, end = span
    if start != base:
        raise VdsoError(
            f"AT_SYSINFO_EHDR {base:#x} is not the start of the [vdso] mapping {start:#x}-{end:#x}"
        )
    return VdsoMapping(base=base, length=end - start)


def read_vdso_image(mapping: VdsoMapping | None = None) -> bytes:
    """The bytes of this process's vDSO image, read through /proc/self/mem."""
    where = mapping if mapping is not None else find_vdso()
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        return ctypes.string_at(where.base, where.length)
    try:
        image = os.pread(fd, where.length, where.base)
    finally:
        os.close(fd)
    if len(image) != where.length:
        raise VdsoError(f"short read of vDSO: {len(image)} of {where.length} bytes")
    return image


def version_from_elf(image: bytes) -> KernelVersion:
    """Decode the LINUX_VERSION_CODE note of an ELF image (a vDSO)."""
    # Imported here: pyelftools costs ~0.9 s per interpreter start in a TCG guest, and
    # most commands never read the vDSO.
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(image))
        for segment in elf.iter_segments():
            if segment.header.p_type != "PT_NOTE":
                continue
            for note in segment.iter_notes():
                if note.n_name == _NOTE_OWNER and note.n_type == _NOTE_TYPE_VERSION:
                    if note.n_descsz < 4:
                        raise VdsoError(f"Linux version note too short: {note.n_descsz} bytes")
                    order = "<" if elf.little_endian else ">"
                    (code,) = struct.unpack(order + "I", bytes(note.n_descdata[:4]))
                    return _decode_version_code(code)
    except ELFError as error:
        raise VdsoError(f"vDSO is not a readable ELF image: {error}") from error
    raise VdsoError("vDSO has no 'Linux' type 0 (LINUX_VERSION_CODE) note")


def _decode_version_code(code: int) -> KernelVersion:
    major, minor, patch = (code >> 16) & 0xFFFF, (code >> 8) & 0xFF, code & 0xFF
    return KernelVersion(
        major,
        minor,
        patch,
        extra="",
        release=f"{major}.{minor}.{patch}",
        patch_known=patch < PATCH_CLAMP,
    )


def vdso_version() -> KernelVersion:
    """The kernel version recorded in this process's vDSO."""
    return version_from_elf(read_vdso_image())


def agrees(from_vdso: KernelVersion, from_uname: KernelVersion) -> bool:
    """Whether the vDSO's version is consistent with what ``uname -r`` claims.

    major.minor must be equal. The patch must be equal too, except where one side cannot
    say: the vDSO saturates at 255, and ABI-style releases ("6.1.0-27-amd64") carry none.
    """
    if (from_vdso.major, from_vdso.minor) != (from_uname.major, from_uname.minor):
        return False
    if not from_uname.patch_known:
        return True
    if from_vdso.patch == PATCH_CLAMP:
        return from_uname.patch >= PATCH_CLAMP
    return from_vdso.patch == from_uname.patch
