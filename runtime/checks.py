"""Typed readers for values that come from files (manifests, model specs): strict and bounded.

Each returns the value or raises the given error class with a message naming the field.
JSON has one number type, so an integer field refuses floats and booleans (`2.5`, `true`),
and a float field takes ints and floats but refuses booleans, NaN and infinities.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import MoedgeError

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def integer(value: Any, name: str, lo: int, hi: int, error: type[MoedgeError]) -> int:
    """An int (never a bool or a float) in [lo, hi]."""
    if type(value) is not int:
        raise error(f"{name} must be an integer, got {show(value)}")
    if not lo <= value <= hi:
        raise error(f"{name} must be in [{lo}, {hi}], got {show(value)}")
    return value


def number(value: Any, name: str, lo: float, hi: float, error: type[MoedgeError]) -> float:
    """A finite int or float (never a bool) in [lo, hi]."""
    if type(value) not in (int, float) or not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {show(value)}")
    if not lo <= value <= hi:
        raise error(f"{name} must be in [{lo:g}, {hi:g}], got {show(value)}")
    return float(value)


def boolean(value: Any, name: str, error: type[MoedgeError]) -> bool:
    if type(value) is not bool:
        raise error(f"{name} must be true or false, got {show(value)}")
    return value


def choice(value: Any, name: str, options: tuple[str, ...], error: type[MoedgeError]) -> str:
    if not isinstance(value, str) or value not in options:
        raise error(f"{name} must be one of {list(options)}, got {show(value)}")
    return value


def text(value: Any, name: str, error: type[MoedgeError], limit: int = 1 << 20) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise error(f"{name} must be a string of at most {limit} characters, got {show(value)}")
    return value


def plain_name(value: Any, name: str, error: type[MoedgeError]) -> str:
    """A plain file name inside a bundle: no directory part, not hidden, at most 128 characters."""
    if not isinstance(value, str) or not _PLAIN_NAME.fullmatch(value):
        raise error(f"{name} must be a plain file name inside the bundle (letters, digits, '._-'), got {show(value)}")
    return value


def record(value: Any, name: str, required: tuple[str, ...], optional: tuple[str, ...],
           error: type[MoedgeError]) -> dict[str, Any]:
    """A JSON object with exactly the `required` keys and any of the `optional` ones; nothing else."""
    if not isinstance(value, dict):
        raise error(f"{name} must be an object, got {show(value)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise error(f"{name} lacks the field(s) {missing}")
    unknown = sorted(str(k) for k in value if k not in required and k not in optional)
    if unknown:
        raise error(f"{name} has unknown field(s) {show(unknown)}")
    return value


def array(value: Any, name: str, length: int | None, error: type[MoedgeError], limit: int = 1 << 20) -> list:
    """A JSON list, of exactly `length` items if given (else at most `limit`)."""
    if not isinstance(value, list):
        raise error(f"{name} must be a list, got {show(value)}")
    if length is not None and len(value) != length:
        raise error(f"{name} must have {length} items, got {len(value)}")
    if len(value) > limit:
        raise error(f"{name} has {len(value)} items, more than {limit}")
    return value


def show(value: Any) -> str:
    """A short, one-line rendering of a value for an error message."""
    if isinstance(value, int) and abs(value) >= 10 ** 30:
        return f"an integer of {value.bit_length()} bits"
    shown = repr(value)
    shown = " ".join(shown.split())
    return shown if len(shown) <= 60 else shown[:57] + "..."
