"""A private apt setup for fetching Debian kernel packages without touching the host's apt.

Everything apt writes (lists, package cache, state) lives under one directory of ours and the
sources come from our own sources.list, passed with `-o Dir::...` options. The host's
apt.conf.d is still read on purpose: that is where proxies and mirror credentials live.

Signatures: every suite is checked against the host's debian-archive-keyring
(`signed-by=`), never `trusted=yes`. On a Debian 12 host that keyring (2023.3+deb12u2) holds
the bullseye, bookworm and trixie keys, which also sign sid and experimental; a host whose
keyring lacks a suite's key loses only that suite, and the update report names it.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .aptmirror import Mirror
from .children import CHILDREN

ARCHIVE_SUITES = (
    "bullseye",  # 5.10
    "bookworm",  # 6.1
    "bookworm-backports",  # 6.12
    "trixie",  # 6.12
    "trixie-backports",  # 6.16 .. 7.x
    "sid",
    "experimental",  # release candidates
)
SECURITY_SUITES = ("bullseye-security", "bookworm-security", "trixie-security")
DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_MAX_AGE_S = 24 * 3600


class AptError(RuntimeError):
    pass


def sources_list(mirror: Mirror, keyring: Path) -> str:
    lines = [f"# written by uffdharness; mirror from {mirror.origin}"]
    for suite in ARCHIVE_SUITES:
        lines.append(f"deb [arch=amd64 signed-by={keyring}] {mirror.archive} {suite} main")
    for suite in SECURITY_SUITES:
        lines.append(f"deb [arch=amd64 signed-by={keyring}] {mirror.security} {suite} main")
    return "\n".join(lines) + "\n"


@dataclass
class UpdateReport:
    ran: bool  # False when the lists were fresh enough
    ok: bool
    problems: list[str] = field(default_factory=list)  # apt's W:/E: lines


class PrivateApt:
    def __init__(self, root: Path, mirror: Mirror, keyring: Path = DEFAULT_KEYRING) -> None:
        self.root = root
        self.mirror = mirror
        self.keyring = keyring

    @property
    def stamp(self) -> Path:
        return self.root / "last-update"

    def options(self) -> list[str]:
        root = self.root
        settings = {
            "Dir::Etc::sourcelist": root / "etc" / "sources.list",
            "Dir::Etc::sourceparts": root / "etc" / "sources.list.d",
            "Dir::Etc::preferences": root / "etc" / "preferences",
            "Dir::Etc::preferencesparts": root / "etc" / "preferences.d",
            "Dir::State": root / "state",
            "Dir::State::lists": root / "state" / "lists",
            "Dir::State::status": root / "state" / "status",
            "Dir::Cache": root / "cache",
            "Dir::Cache::archives": root / "cache" / "archives",
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
            "Acquire::Languages": "none",
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled": "false",
        }
        if os.geteuid() == 0:
            # apt drops to the _apt user to download, which cannot enter a root-owned ~/.cache.
            settings["APT::Sandbox::User"] = "root"
        args = []
        for key, value in settings.items():
            args += ["-o", f"{key}={value}"]
        return args

    def write_config(self) -> None:
        if not self.keyring.is_file():
            raise AptError(
                f"Debian archive keyring {self.keyring} is missing; "
                "install it with: apt-get install -y debian-archive-keyring"
            )
        for sub in (
            "etc/sources.list.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
        ):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "state" / "status").touch()
        wanted = sources_list(self.mirror, self.keyring)
        target = self.root / "etc" / "sources.list"
        if not target.is_file() or target.read_text() != wanted:
            target.write_text(wanted)
            self.stamp.unlink(missing_ok=True)  # new sources: the old lists do not count

    def lists_age(self) -> float | None:
        try:
            return time.time() - self.stamp.stat().st_mtime
        except FileNotFoundError:
            return None

    def update(self, max_age_s: float = DEFAULT_MAX_AGE_S, timeout: float = 600) -> UpdateReport:
        """`apt-get update` unless the lists are younger than `max_age_s`."""
        self.write_config()
        age = self.lists_age()
        if age is not None and age < max_age_s:
            return UpdateReport(ran=False, ok=True)
        proc = self._run(["apt-get", *self.options(), "update"], timeout=timeout)
        problems = [line for line in proc.stderr.splitlines() if line[:2] in ("W:", "E:")]
        if any("NO_PUBKEY" in line for line in problems):
            problems.append(
                f"hint: {self.keyring} lacks the keys of the suites above, which are skipped; "
                "a newer debian-archive-keyring package carries them"
            )
        # A suite apt refused (unsigned, unreachable) is left out; the others still count,
        # so the lists are fresh if any suite's Packages file arrived.
        if proc.returncode == 0 or any((self.root / "state" / "lists").glob("*_Packages*")):
            self.stamp.touch()
        return UpdateReport(ran=True, ok=proc.returncode == 0, problems=problems)

    def search_names(self, regex: str) -> list[str]:
        proc = self._run(["apt-cache", *self.options(), "search", "--names-only", regex])
        self._check(proc, "apt-cache search")
        return sorted({line.split(" - ", 1)[0].strip() for line in proc.stdout.splitlines()})

    def show(self, names: list[str]) -> str:
        """deb822 records of every version of `names` (empty string for no names)."""
        if not names:
            return ""
        proc = self._run(["apt-cache", *self.options(), "show", *names])
        self._check(proc, "apt-cache show")
        return proc.stdout

    def download(self, pins: list[tuple[str, str]], dest: Path, timeout: float = 1800) -> None:
        """`apt-get download name=version ...` into `dest`."""
        dest.mkdir(parents=True, exist_ok=True)
        args = [f"{name}={version}" for name, version in pins]
        proc = self._run(["apt-get", *self.options(), "download", *args], cwd=dest, timeout=timeout)
        self._check(proc, "apt-get download")

    @staticmethod
    def _run(
        argv: list[str], cwd: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
        return CHILDREN.run(argv, cwd=cwd, env=env, timeout=timeout)

    @staticmethod
    def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
        if proc.returncode != 0:
            raise AptError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
