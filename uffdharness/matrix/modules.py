"""Resolve kernel modules and their dependencies from a kernel's modules.dep.

modules.dep lines read `kernel/fs/9p/9p.ko.xz: kernel/fs/netfs/netfs.ko.xz ...`; a module
listed in modules.builtin is compiled into the kernel and needs no loading. Names are
normalised as the kernel does: '-' and '_' are the same character in a module name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import compression

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: str) -> str:
    """kernel/net/9p/9pnet-virtio.ko.zst -> 9pnet_virtio"""
    base = path.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


@dataclass(frozen=True)
class ModuleEntry:
    name: str
    path: str  # relative to the modules dir, as in modules.dep
    depends: tuple[str, ...]  # names


@dataclass(frozen=True)
class ModuleIndex:
    modules: dict[str, ModuleEntry]
    builtin: frozenset[str]


class MissingModules(LookupError):
    pass


def parse_modules_dep(text: str) -> dict[str, ModuleEntry]:
    modules = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        path = path.strip()
        entry = ModuleEntry(module_name(path), path, tuple(module_name(d) for d in deps.split()))
        modules[entry.name] = entry
    return modules


def parse_builtin(text: str) -> frozenset[str]:
    return frozenset(module_name(line.strip()) for line in text.splitlines() if line.strip())


def load_index(modules_dir: Path) -> ModuleIndex:
    dep = modules_dir / "modules.dep"
    if not dep.is_file():
        raise FileNotFoundError(f"{dep} is missing: run depmod -b <root> <release> first")
    builtin_file = modules_dir / "modules.builtin"
    builtin = parse_builtin(builtin_file.read_text()) if builtin_file.is_file() else frozenset()
    return ModuleIndex(parse_modules_dep(dep.read_text()), builtin)


def load_order(index: ModuleIndex, wanted: list[str]) -> list[ModuleEntry]:
    """`wanted` plus everything they depend on, each after its dependencies.

    Built-in modules are dropped; a name neither built in nor in modules.dep raises
    MissingModules listing all such names.
    """
    ordered: list[ModuleEntry] = []
    placed: set[str] = set()
    missing: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in placed or name in index.builtin:
            return
        entry = index.modules.get(name)
        if entry is None:
            missing.append(name if not chain else f"{name} (needed by {chain[-1]})")
            return
        if name in chain:
            return  # modules.dep has no cycles; guard against a corrupt file anyway
        for dep in entry.depends:
            visit(dep, (*chain, name))
        placed.add(name)
        ordered.append(entry)

    for name in wanted:
        visit(name, ())
    if missing:
        raise MissingModules("modules neither built in nor in modules.dep: " + ", ".join(missing))
    return ordered


def available(index: ModuleIndex, name: str) -> bool:
    """Whether ``name`` is built in, or a module whose dependencies all resolve."""
    try:
        load_order(index, [name])
    except MissingModules:
        return False
    return True


def read_module(modules_dir: Path, entry: ModuleEntry) -> bytes:
    """The module's ELF bytes, decompressed: busybox insmod may not read .ko.xz/.ko.zst."""
    data = (modules_dir / entry.path).read_bytes()
    if entry.path.endswith(".ko"):
        return data
    return compression.decompress(data)
