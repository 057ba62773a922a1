"""Which host programs the matrix needs, and a clear error naming the missing ones.

This module only detects and explains; installing is the user's decision.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PT_INTERP = 3


@dataclass(frozen=True)
class HostTool:
    command: str
    package: str  # the Debian package that ships it
    needed_for: str  # "boot" (run a guest), "fetch" (download Debian kernels), "build"
    must_be_static: bool = False
    header: str | None = None  # a library: the header its -dev package installs


BOOT_TOOLS = (
    HostTool("qemu-system-x86_64", "qemu-system-x86", "boot"),
    # The guest's /init runs before any root file system exists, so busybox must carry its libc.
    HostTool("busybox", "busybox-static", "boot", must_be_static=True),
)
FETCH_TOOLS = (
    HostTool("apt-get", "apt", "fetch"),
    HostTool("apt-cache", "apt", "fetch"),
    HostTool("dpkg-deb", "dpkg", "fetch"),
    HostTool("depmod", "kmod", "fetch"),
    HostTool("modinfo", "kmod", "fetch"),
)
ALL_TOOLS = BOOT_TOOLS + FETCH_TOOLS
# Building a kernel (src:, debian-src: specs): kbuild's own host programs (fixdep, conf,
# objtool) need flex, bison and libelf; certs/ needs libssl. debian-src needs FETCH_TOOLS
# as well, and xz for the tarball inside the package.
BUILD_TOOLS = (
    HostTool("gcc", "gcc", "build"),
    HostTool("make", "make", "build"),
    HostTool("ld", "binutils", "build"),
    HostTool("flex", "flex", "build"),
    HostTool("bison", "bison", "build"),
    HostTool("bc", "bc", "build"),
    HostTool("perl", "perl", "build"),
    HostTool("cpio", "cpio", "build"),
    HostTool("patch", "patch", "build"),
    HostTool("xz", "xz-utils", "build"),
    HostTool("gelf.h", "libelf-dev", "build", header="gelf.h"),
    HostTool("openssl/ssl.h", "libssl-dev", "build", header="openssl/ssl.h"),
)
HEADER_DIRS = ("/usr/include", "/usr/include/x86_64-linux-gnu", "/usr/local/include")

# busybox-static installs /bin/busybox; the dynamic `busybox` package installs the same path,
# so the static check is what tells the two apart.
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


@dataclass(frozen=True)
class ToolProblem:
    tool: HostTool
    reason: str  # "not found" or "dynamically linked: /bin/busybox"


class MissingHostTools(RuntimeError):
    def __init__(self, problems: list[ToolProblem]) -> None:
        self.problems = problems
        packages = sorted({p.tool.package for p in problems})
        lines = [f"  {p.tool.command} ({p.tool.package}): {p.reason}" for p in problems]
        super().__init__(
            "uffdharness matrix needs host tools that are missing or unusable:\n"
            + "\n".join(lines)
            + f"\ninstall them with:\n  apt-get install -y {' '.join(packages)}"
        )

    @property
    def install_command(self) -> str:
        return "apt-get install -y " + " ".join(sorted({p.tool.package for p in self.problems}))


def is_static_elf(path: Path) -> bool:
    """True when the ELF file at `path` has no PT_INTERP program header (no dynamic loader)."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if ident[:4] != b"\x7fELF":
            return False
        is64 = ident[4] == 2
        endian = "<" if ident[5] == 1 else ">"
        if is64:
            (phoff,) = struct.unpack_from(endian + "Q", ident, 0x20)
            phentsize, phnum = struct.unpack_from(endian + "HH", ident, 0x36)
        else:
            (phoff,) = struct.unpack_from(endian + "I", ident, 0x1C)
            phentsize, phnum = struct.unpack_from(endian + "HH", ident, 0x2A)
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            (p_type,) = struct.unpack(endian + "I", f.read(4))
            if p_type == PT_INTERP:
                return False
    return True


def find_busybox(candidates: Iterable[str] = BUSYBOX_CANDIDATES) -> Path | None:
    """The first statically linked busybox among `candidates` (or on PATH), else None."""
    seen = list(candidates)
    on_path = shutil.which("busybox")
    if on_path:
        seen.append(on_path)
    for candidate in seen:
        path = Path(candidate)
        if path.is_file() and is_static_elf(path):
            return path
    return None


def has_header(header: str, directories: Iterable[str] = HEADER_DIRS) -> bool:
    return any((Path(directory) / header).is_file() for directory in directories)


def check(
    tools: Iterable[HostTool] = ALL_TOOLS,
    which: Callable[[str], str | None] = shutil.which,
    header_dirs: Iterable[str] = HEADER_DIRS,
) -> list[ToolProblem]:
    problems = []
    for tool in tools:
        if tool.header:
            if not has_header(tool.header, header_dirs):
                problems.append(ToolProblem(tool, "header not found"))
        elif tool.must_be_static:
            if find_busybox() is None:
                found = which(tool.command)
                reason = f"dynamically linked: {found}" if found else "not found"
                problems.append(ToolProblem(tool, reason))
        elif which(tool.command) is None:
            problems.append(ToolProblem(tool, "not found"))
    return problems


def require(tools: Iterable[HostTool] = ALL_TOOLS) -> None:
    """Raise MissingHostTools naming every missing tool and the apt-get line that fixes it."""
    problems = check(tools)
    if problems:
        raise MissingHostTools(problems)
