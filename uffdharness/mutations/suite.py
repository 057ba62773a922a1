"""The mutation manifest: each mutation's patch and the scenario x memory pairs that must
catch it.

``mutations/manifest.toml`` at the top of the repository::

    base = "debian-src:7.3"              # the spec every patch applies to
    written_against = "7.3.4-1~bpo13+1"  # the source version the patches were made on

    [[mutation]]
    name = "merge-pgoff"                 # the patch is mutations/<series>/<name>.patch
    caught_by = ["unregister-merge[anon,shmem,memfd]", "register-merge"]

A ``caught_by`` entry is a scenario id (every memory kind it runs on) or
``id[kind,kind]``. The patch's preamble says what it breaks: a ``Mutation:`` line (the
one-line summary), and ``Reverts: <upstream fix subject>`` or ``Breaks: <mechanism>``.
Everything is checked here, before any build: a manifest naming an unknown scenario, a
kind the scenario does not run on, or a missing patch is a SuiteError.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, from PyPI
    import tomli as tomllib

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "mutations" / "manifest.toml"
_ENTRY = re.compile(r"([a-z0-9-]+)(?:\[([a-z0-9,-]+)\])?")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_HEADER = re.compile(r"^(Mutation|Reverts|Breaks):\s*(.+?)\s*$", re.MULTILINE)

Pair = tuple[str, str]  # (scenario id, memory kind)


class SuiteError(ValueError):
    """A manifest that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Mutation:
    name: str
    patch: Path
    summary: str  # the patch's "Mutation:" line
    reverts: str  # the upstream fix it undoes, or ""
    breaks: str  # the mechanism it breaks, or ""
    caught_by: frozenset[Pair]

    def spec(self, base: str) -> str:
        return f"{base},patch={self.patch}"


@dataclass(frozen=True)
class Suite:
    path: Path
    base: str
    written_against: str
    mutations: tuple[Mutation, ...]

    def select(self, pattern: str | None) -> tuple[Mutation, ...]:
        """The mutations whose names match ``pattern`` (comma-separated globs or
        substrings, as ``-k`` elsewhere); SuiteError when none does."""
        import fnmatch

        patterns = [p for p in (pattern or "").split(",") if p]
        chosen = tuple(
            m
            for m in self.mutations
            if not patterns or any(fnmatch.fnmatchcase(m.name, p) or p in m.name for p in patterns)
        )
        if not chosen:
            names = ", ".join(m.name for m in self.mutations)
            raise SuiteError(f"-k {pattern!r} matches no mutation (there are: {names})")
        return chosen


def _pairs(where: str, entries: object, catalogue: dict[str, tuple[str, ...]]) -> frozenset[Pair]:
    if not isinstance(entries, list) or not entries:
        raise SuiteError(f"{where}: caught_by must be a non-empty list of scenario ids")
    pairs: set[Pair] = set()
    for entry in entries:
        match = _ENTRY.fullmatch(entry) if isinstance(entry, str) else None
        if not match:
            raise SuiteError(f"{where}: {entry!r} is not 'scenario' or 'scenario[kind,...]'")
        scenario, kinds = match.group(1), match.group(2)
        if scenario not in catalogue:
            raise SuiteError(f"{where}: no scenario {scenario!r} (uffdharness run --list)")
        runs_on = catalogue[scenario]
        chosen = kinds.split(",") if kinds else list(runs_on)
        for kind in chosen:
            if kind not in runs_on:
                raise SuiteError(
                    f"{where}: {scenario} does not run on {kind!r} (it runs on "
                    f"{', '.join(runs_on)})"
                )
            pairs.add((scenario, kind))
    return frozenset(pairs)


def _describe(patch: Path) -> dict[str, str]:
    text = patch.read_text(errors="replace")
    preamble = text.split("\n---\n", 1)[0]
    return {key.lower(): value for key, value in _HEADER.findall(preamble)}


def load(path: Path = DEFAULT_MANIFEST) -> Suite:
    from ..scenarios import CATALOGUE

    catalogue = {item.id: tuple(item.memory) for item in CATALOGUE.values()}
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SuiteError(f"cannot read the mutation manifest {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: {exc}") from exc
    base = data.get("base")
    if not isinstance(base, str) or not base:
        raise SuiteError(f'{path}: no base = "SPEC"')
    series = data.get("series", "")
    mutations = []
    seen: set[str] = set()
    for number, entry in enumerate(data.get("mutation", []), 1):
        where = f"{path}: mutation #{number}"
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SuiteError(f"{where}: name must be lowercase letters, digits and dashes")
        where = f"{path}: mutation {name!r}"
        if name in seen:
            raise SuiteError(f"{where}: listed twice")
        seen.add(name)
        patch = path.parent / series / f"{name}.patch"
        if not patch.is_file():
            raise SuiteError(f"{where}: no patch {patch}")
        described = _describe(patch)
        if "mutation" not in described:
            raise SuiteError(f"{where}: {patch.name} has no 'Mutation:' line in its preamble")
        mutations.append(
            Mutation(
                name,
                patch,
                described["mutation"],
                described.get("reverts", ""),
                described.get("breaks", ""),
                _pairs(where, entry.get("caught_by"), catalogue),
            )
        )
    if not mutations:
        raise SuiteError(f"{path}: no [[mutation]] entries")
    return Suite(path, base, str(data.get("written_against", "")), tuple(mutations))
