"""Argument checks shared by the model families: bad values become one-line UsageErrors."""
from __future__ import annotations

from typing import Iterable, Sequence

from robustlab.errors import require
from robustlab.models.layers import NORMS


def check_rate(name: str, value: float) -> float:
    require(isinstance(value, (int, float)) and 0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    require(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_norm(norm: str, allowed: Sequence[str] = NORMS) -> str:
    return check_choice("norm", norm, allowed)


def check_positive(name: str, value: int) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    require(ok, f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_int_list(name: str, values, length: int | None = None) -> tuple[int, ...]:
    """A non-empty list of positive integers, of exactly `length` entries when given."""
    ok = isinstance(values, (list, tuple)) and len(values) > 0
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
    require(ok, f"{name} must be a non-empty list of integers >= 1, got {values!r}")
    if length is not None:
        require(len(values) == length, f"{name} must have {length} entries, got {len(values)}")
    return tuple(values)
