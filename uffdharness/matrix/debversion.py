"""Debian package version ordering (Debian Policy 5.6.12), to pick the newest kernel package."""

from __future__ import annotations

import functools
import re


def _char_order(c: str) -> int:
    # '~' sorts before everything, even the end of the string; letters before non-letters.
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    while a or b:
        a_text = re.match(r"\D*", a).group()
        b_text = re.match(r"\D*", b).group()
        a, b = a[len(a_text) :], b[len(b_text) :]
        for i in range(max(len(a_text), len(b_text))):
            ca = _char_order(a_text[i]) if i < len(a_text) else 0
            cb = _char_order(b_text[i]) if i < len(b_text) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        a_num = re.match(r"\d*", a).group()
        b_num = re.match(r"\d*", b).group()
        a, b = a[len(a_num) :], b[len(b_num) :]
        if int(a_num or 0) != int(b_num or 0):
            return -1 if int(a_num or 0) < int(b_num or 0) else 1
    return 0


def split(version: str) -> tuple[int, str, str]:
    """(epoch, upstream, revision) of a Debian version string."""
    epoch = 0
    if ":" in version:
        epoch_text, version = version.split(":", 1)
        epoch = int(epoch_text)
    upstream, _, revision = version.rpartition("-")
    if not upstream:
        upstream, revision = revision, ""
    return epoch, upstream, revision


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian version `a` sorts before, equal to or after `b`."""
    a_epoch, a_up, a_rev = split(a)
    b_epoch, b_up, b_rev = split(b)
    if a_epoch != b_epoch:
        return -1 if a_epoch < b_epoch else 1
    return _compare_part(a_up, b_up) or _compare_part(a_rev, b_rev)


sort_key = functools.cmp_to_key(compare)


def upstream_numbers(version: str) -> tuple[int, ...]:
    """Leading numeric components of the upstream version: '6.12.107-1' -> (6, 12, 107)."""
    upstream = split(version)[1]
    match = re.match(r"\d+(?:\.\d+)*", upstream)
    return tuple(int(n) for n in match.group().split(".")) if match else ()
