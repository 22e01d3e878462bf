"""Argument checks shared by the configs, the estimator and the library functions, so that
one kind of mistake gets one wording wherever it is made."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping


def int_problem(value, low: int = 1, high: int | None = None, *,
                python_int: bool = False) -> str | None:
    """Why ``value`` is not an int in [low, high] ("must be an int >= 1, got 0"), or None.

    A bool is refused (Python counts True as 1; here it is always a slip). numpy integers
    pass unless ``python_int``: configs ask for it, since they are written to JSON.
    """
    kind = int if python_int else numbers.Integral
    if isinstance(value, kind) and not isinstance(value, bool) and value >= low and (
            high is None or value <= high):
        return None
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    return f"must be an int {bound}, got {value!r}"


def check_int(name: str, value, low: int = 1, high: int | None = None) -> None:
    """ValueError naming ``name`` unless ``value`` is an int in [low, high]."""
    problem = int_problem(value, low, high)
    if problem:
        raise ValueError(f"{name} {problem}")


def from_known_fields(cls, values: Mapping):
    """``cls(**values)`` for a dataclass read from a file, with a ValueError naming the keys
    that are not fields of ``cls`` (rather than the TypeError of an unexpected keyword)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}; known: {sorted(known)}")
    return cls(**values)
