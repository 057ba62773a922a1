"""Reading the JSON a matrix consumes, checked: a guest's ``uffdharness run --json`` report
and the ``uffdharness matrix --json`` files ``merge`` reads.

Both come from outside this process (a guest kernel, a CI artefact), so every field is
checked before use, and anything else is a ReportError (a ValueError) naming the first field
that is wrong, e.g. ``results[3].verdict: 'great' is not a verdict``. Nothing here trusts
the shape of the input, so no KeyError or TypeError escapes to the caller.
"""

from __future__ import annotations

import json
from typing import Any

from ..runner import Result
from ..scenarios.model import VERDICTS

__all__ = ["ReportError", "decode", "kernel_section", "need", "result_from_json", "results"]


class ReportError(ValueError):
    pass


def decode(data: bytes | str, what: str) -> Any:
    """The JSON value in ``data``; ReportError for bytes that are not JSON at all."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise ReportError(f"{what} is not JSON: {exc}") from None


def need(mapping: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``mapping[key]`` when it is a ``kind``; ReportError naming ``where.key`` otherwise."""
    if key not in mapping:
        raise ReportError(f"{where}: no {key!r}")
    value = mapping[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ReportError(f"{where}.{key}: {_short(value)} is not {_kind_name(kind)}")
    return value


def _optional(
    mapping: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any
) -> Any:
    return need(mapping, key, kind, where) if key in mapping else default


def result_from_json(item: Any, where: str = "result") -> Result:
    """The inverse of runner.Result.to_json, checked."""
    if not isinstance(item, dict):
        raise ReportError(f"{where}: {_short(item)} is not an object")
    verdict = need(item, "verdict", str, where)
    if verdict not in VERDICTS:
        raise ReportError(f"{where}.verdict: {verdict!r} is not one of {', '.join(VERDICTS)}")
    duration = _optional(item, "duration_s", (int, float), where, 0.0)
    return Result(
        need(item, "id", str, where),
        need(item, "memory", str, where),
        verdict,  # type: ignore[arg-type]
        _optional(item, "reason", str, where, ""),
        _optional(item, "key", str, where, ""),
        _optional(item, "facts", dict, where, {}),
        float(duration),
    )


def results(items: Any, where: str = "results") -> list[Result]:
    if not isinstance(items, list):
        raise ReportError(f"{where}: {_short(items)} is not a list")
    return [result_from_json(item, f"{where}[{index}]") for index, item in enumerate(items)]


def kernel_section(kernel: Any, where: str = "kernel") -> dict[str, Any]:
    """A report's ``kernel`` object: ``release`` a string, ``version`` three integers."""
    if not isinstance(kernel, dict):
        raise ReportError(f"{where}: {_short(kernel)} is not an object")
    if "release" in kernel:
        need(kernel, "release", str, where)
    if "version" in kernel:
        version = need(kernel, "version", list, where)
        if len(version) < 3 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in version[:3]
        ):
            raise ReportError(f"{where}.version: {_short(version)} is not [major, minor, patch]")
    return kernel


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        dict: "an object",
        list: "a list",
    }
    return " or ".join(names.get(k, f"a {k.__name__}") for k in kinds)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
