"""The catalogue: scenarios register themselves with @scenario in their modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .model import Observation, Scenario

CATALOGUE: dict[str, Scenario] = {}


def scenario(**declared: Any) -> Callable[[Callable[[Any], Observation]], Callable]:
    def register(run: Callable[[Any], Observation]) -> Callable[[Any], Observation]:
        item = Scenario(run=run, **declared)
        if item.id in CATALOGUE:
            raise ValueError(f"duplicate scenario id {item.id}")
        CATALOGUE[item.id] = item
        return run

    return register
