"""Checks for programmer errors that survive `python -O` (never a bare `assert` in production code).

Both raise `AssertionError`: a failed check is a bug in Semel, never an operating error to handle.
Both narrow types for mypy: after `x = not_none(x, ...)` the value is no longer optional.
"""

from __future__ import annotations

from typing import TypeVar

_T = TypeVar("_T")


def invariant(cond: bool, msg: str) -> None:
    """Raise AssertionError(msg) unless `cond` holds."""
    if not cond:
        raise AssertionError(msg)


def not_none(value: _T | None, msg: str) -> _T:
    """`value`, checked not to be None (AssertionError(msg) otherwise)."""
    if value is None:
        raise AssertionError(msg)
    return value
