"""The SVR4 "newc" cpio format the kernel unpacks as an initramfs, written and read back.

Each entry: the ASCII magic 070701, thirteen 8-digit hex fields (ino, mode, uid, gid, nlink,
mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize incl. NUL, check=0),
the name, NUL, padding to 4 bytes, the data, padding to 4 bytes. The archive ends with an
entry named TRAILER!!!.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_LEN = 6 + 13 * 8


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int  # file type bits included
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    mtime: int = 0


class CpioWriter:
    """Collects entries in order; `getvalue()` returns the archive. Parents come first."""

    def __init__(self) -> None:
        self._entries: list[CpioEntry] = []
        self._names: set[str] = set()

    def _add(self, entry: CpioEntry) -> None:
        name = entry.name.strip("/")
        if name in self._names:
            raise ValueError(f"duplicate cpio entry {name!r}")
        parent = name.rpartition("/")[0]
        if parent and parent not in self._names:
            self.add_dir(parent)
        self._names.add(name)
        self._entries.append(CpioEntry(name, entry.mode, entry.data, entry.rdev, entry.mtime))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._add(CpioEntry(name, stat.S_IFDIR | perm))

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._add(CpioEntry(name, stat.S_IFREG | perm, data))

    def add_symlink(self, name: str, target: str) -> None:
        self._add(CpioEntry(name, stat.S_IFLNK | 0o777, target.encode()))

    def add_char_device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._add(CpioEntry(name, stat.S_IFCHR | perm, rdev=(major, minor)))

    def getvalue(self) -> bytes:
        out = bytearray()
        for ino, entry in enumerate([*self._entries, CpioEntry(TRAILER, 0)], start=1):
            name = entry.name.encode() + b"\0"
            nlink = 2 if stat.S_ISDIR(entry.mode) else 1
            fields = (
                ino if entry.name != TRAILER else 0,
                entry.mode,
                0,
                0,
                nlink,
                entry.mtime,
                len(entry.data),
                0,
                0,
                entry.rdev[0],
                entry.rdev[1],
                len(name),
                0,
            )
            header = MAGIC + b"".join(b"%08X" % value for value in fields)
            out += header + name + _pad(len(header) + len(name))
            out += entry.data + _pad(len(entry.data))
        return bytes(out)


def read(archive: bytes) -> list[CpioEntry]:
    """Parse a newc archive (up to its trailer) back into entries."""
    entries = []
    pos = 0
    while True:
        if archive[pos : pos + 6] != MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}")
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, mtime, size = fields[1], fields[5], fields[6]
        namesize = fields[11]
        name_start = pos + _HEADER_LEN
        name = archive[name_start : name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(_HEADER_LEN + namesize) % 4)
        data = archive[data_start : data_start + size]
        pos = data_start + size + (-size % 4)
        if name == TRAILER:
            return entries
        entries.append(CpioEntry(name, mode, data, (fields[9], fields[10]), mtime))
