"""Config fragments and .config files: reading them, and checking a generated .config.

``olddefconfig`` drops, without a word, every option whose dependencies are unmet (on 6.1,
9P_FS depends on INET; tinyconfig has no INET). So after it, every option asked for is
checked: an option the tree's Kconfig defines but the .config does not have as asked is
*dropped* (the build is an error naming it and its dependencies); one the tree does not
define at all is *absent* (harmless: that kernel version predates it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .options import REQUIRED_NAMES

_SET = re.compile(r"CONFIG_([A-Za-z0-9_]+)=(.*)")
_UNSET = re.compile(r"# CONFIG_([A-Za-z0-9_]+) is not set")
_ENTRY = re.compile(r"\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$")
_DEPENDS = re.compile(r"\s*depends on\s+(.+?)\s*$")
_IF = re.compile(r"\s*if\s+(.+?)\s*$")
_ENDIF = re.compile(r"\s*endif\b")
# Kconfig keywords that end a config entry's attribute block.
_BLOCK_END = re.compile(
    r"\s*(?:(?:menu)?config|menu|endmenu|choice|endchoice|if|endif|source|comment)\b"
)
_HELP = re.compile(r"\s*(?:help|---help---)\s*$")


def _indent(line: str) -> int:
    return len(line.expandtabs(8)) - len(line.expandtabs(8).lstrip())


def _without_help(lines: list[str]) -> Iterable[tuple[int, str]]:
    """(number, line) of a Kconfig file without help texts, which may say anything
    ("if you have one of these machines"). A help text ends at the first non-blank line
    indented less than its own first line."""
    help_indent: int | None = None  # the text's indentation once its first line is seen
    in_help = False
    for number, line in enumerate(lines, 1):
        if in_help:
            if not line.strip():
                continue
            if help_indent is None:
                help_indent = _indent(line)
                continue
            if _indent(line) >= help_indent:
                continue
            in_help, help_indent = False, None
        if _HELP.match(line):
            in_help = True
            continue
        yield number, line


class FragmentError(ValueError):
    """A config fragment line that is neither an assignment, a comment nor blank."""


def parse_assignments(text: str, origin: str = "fragment") -> dict[str, str]:
    """``{NAME: value}`` of a .config or fragment; ``# CONFIG_X is not set`` is ``n``.

    Strings keep their quotes, as in the file. A later line wins, as in Kconfig."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        unset = _UNSET.fullmatch(line)
        if unset:
            values[unset.group(1)] = "n"
            continue
        if line.startswith("#"):
            continue
        assigned = _SET.fullmatch(line)
        if not assigned or not assigned.group(2):
            raise FragmentError(
                f"{origin}:{number}: not a CONFIG_NAME=value line or a comment: {raw!r}"
            )
        values[assigned.group(1)] = assigned.group(2)
    return values


def read_config(path: Path) -> dict[str, str]:
    return parse_assignments(path.read_text(errors="replace"), str(path))


@dataclass(frozen=True)
class Symbol:
    name: str
    defined_in: str  # "fs/9p/Kconfig:1"
    depends: tuple[str, ...]  # its "depends on" lines and the "if" blocks around it


def kconfig_files(tree: Path, arch: str = "x86") -> Iterable[Path]:
    """Every Kconfig file of ``tree`` that an ``arch`` build reads (other arches' skipped)."""
    for directory, subdirs, files in os.walk(tree):
        here = Path(directory)
        if here == tree:
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        elif here == tree / "arch":
            subdirs[:] = [d for d in subdirs if d == arch]
        for name in files:
            if name.startswith("Kconfig"):
                yield here / name


def symbol_index(tree: Path, arch: str = "x86") -> dict[str, Symbol]:
    """The config symbols ``tree`` defines, with where and under which dependencies.

    A symbol defined twice (SMP is in several Kconfig files) keeps its first definition's
    place and every definition's dependencies."""
    index: dict[str, Symbol] = {}
    for path in sorted(kconfig_files(tree, arch)):
        relative = path.relative_to(tree)
        enclosing: list[str] = []
        current: str | None = None
        for number, line in _without_help(path.read_text(errors="replace").splitlines()):
            entry = _ENTRY.match(line)
            if entry:
                current = entry.group(1)
                previous = index.get(current)
                index[current] = Symbol(
                    current,
                    previous.defined_in if previous else f"{relative}:{number}",
                    (previous.depends if previous else ())
                    + tuple(f"if {condition}" for condition in enclosing),
                )
                continue
            if _ENDIF.match(line):
                if enclosing:
                    enclosing.pop()
                current = None
                continue
            condition = _IF.match(line)
            if condition:
                enclosing.append(condition.group(1))
                current = None
                continue
            if _BLOCK_END.match(line):
                current = None
                continue
            depends = _DEPENDS.match(line)
            if depends and current is not None:
                symbol = index[current]
                index[current] = Symbol(
                    symbol.name,
                    symbol.defined_in,
                    symbol.depends + (f"depends on {depends.group(1)}",),
                )
    return index


@dataclass(frozen=True)
class Dropped:
    name: str
    wanted: str
    got: str  # the .config's value, "unset" when it has no line for it
    symbol: Symbol

    def __str__(self) -> str:
        needs = "; ".join(self.symbol.depends) or "no dependency found in Kconfig"
        return (
            f"CONFIG_{self.name}={self.got} where {self.wanted} was asked "
            f"({self.symbol.defined_in}: {needs})"
        )


@dataclass(frozen=True)
class ConfigCheck:
    dropped: tuple[Dropped, ...] = ()
    absent: tuple[str, ...] = ()  # asked for, but this kernel version does not define them
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.dropped

    def summary(self) -> str:
        if self.ok:
            absent = f"; not in this kernel: {', '.join(self.absent)}" if self.absent else ""
            return f"all {self.checked} options as asked{absent}"
        return f"{len(self.dropped)} option(s) dropped: " + "; ".join(map(str, self.dropped))


def _satisfied(wanted: str, got: str | None) -> bool:
    if wanted == "n":
        return got in (None, "n")
    return got == wanted


def wanted_values(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a build asks for: every required option =y, then the user's fragment on top."""
    return {name: "y" for name in REQUIRED_NAMES} | dict(extra or {})


def check_config(
    config: Mapping[str, str], wanted: Mapping[str, str], index: Mapping[str, Symbol]
) -> ConfigCheck:
    """Compare a generated .config with what was asked; absent symbols are harmless."""
    dropped, absent = [], []
    for name, value in wanted.items():
        got = config.get(name)
        if _satisfied(value, got):
            continue
        symbol = index.get(name)
        if symbol is None:
            absent.append(name)
            continue
        dropped.append(Dropped(name, value, got if got is not None else "unset", symbol))
    return ConfigCheck(tuple(dropped), tuple(absent), checked=len(wanted))
