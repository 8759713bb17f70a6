"""Checks shared by the per-task postprocess settings (``<task>.py``'s ``Settings`` dataclass).

Settings are frozen dataclasses validated in ``__post_init__``; ``to_dict`` / ``from_dict``
give the plain-JSON form stored as ``pipeline.json``'s ``"postprocess"``. A bad value raises
ValueError naming the key. stdlib only: this package is copied into generated Triton models.
"""
from __future__ import annotations

from typing import Any


def check_keys(what: str, data: Any, known: set[str]) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what} postprocess settings must be a mapping, got {data!r}")
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise ValueError(f"unknown {what} postprocess setting {unknown[0]!r} (known: {', '.join(sorted(known))})")


def check_int(key: str, value: Any, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value}")


def check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")


def as_float(key: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float (an int is accepted), within [low, high] where given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    value = float(value)
    if value != value:
        raise ValueError(f"{key} must be a number, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{key} must be within [{low}, {high}], got {value}")
    return value
