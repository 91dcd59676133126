"""Typed fields of a JSON request body. Each reader returns the value (or its default when the field is
absent or null) and raises a 400 `ApiError` naming the field when its type or range is wrong."""

from __future__ import annotations

import math
from typing import Any

from .errors import bad_request

MAX_STOPS = 16


def describe(value: Any) -> str:
    """A JSON value for an error message: its JSON type and (shortened) value."""
    kind = {bool: "a boolean", str: "a string", list: "an array", dict: "an object", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
    text = repr(value)
    return kind if value is None else f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


def number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite number in [lo, hi] (or (lo, hi] with `lo_open`)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"{name} must be a number, got {describe(value)}", name)
    if not (lo < value if lo_open else lo <= value) or value > hi:
        raise bad_request(f"{name} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value:g}", name)
    return float(value)


def integer(body: dict, name: str, default: int | None, lo: int) -> int | None:
    """A whole number >= lo."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer, got {describe(value)}", name)
    if value < lo:
        raise bad_request(f"{name} must be >= {lo}, got {value}", name)
    return value


_REQUIRED = object()


def _typed(body: dict, name: str, kind: type, label: str, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        if default is _REQUIRED:
            raise bad_request(f"{name} is required", name)
        return default
    if not isinstance(value, kind):
        raise bad_request(f"{name} must be {label}, got {describe(value)}", name)
    return value


def boolean(body: dict, name: str, default: bool = False) -> bool:
    return _typed(body, name, bool, "a boolean", default)


def text(body: dict, name: str) -> str:
    """A required string."""
    return _typed(body, name, str, "a string", _REQUIRED)


def obj(body: dict, name: str) -> dict:
    """An optional JSON object ({} when absent)."""
    return _typed(body, name, dict, "an object", {})


def stop(body: dict) -> tuple[str, ...]:
    """`stop`: a string or an array of up to MAX_STOPS non-empty strings."""
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request(f"stop must be a string or an array of strings, got {describe(value)}", "stop")
    if len(stops) > MAX_STOPS or not all(stops):
        raise bad_request(f"stop must hold 1 to {MAX_STOPS} non-empty strings, got {describe(value)}", "stop")
    return tuple(stops)


# Fields of the OpenAI API this server does not implement: each may only hold its neutral values.
NOT_SUPPORTED = {
    "n": ((1,), "n must be 1: this server generates one choice per request"),
    "best_of": ((1,), "best_of must be 1: this server generates one choice per request"),
    "logprobs": ((False, 0), "logprobs are not supported"),
    "top_logprobs": ((0,), "top_logprobs are not supported"),
    "presence_penalty": ((0, 0.0), "presence_penalty is not supported (only 0)"),
    "frequency_penalty": ((0, 0.0), "frequency_penalty is not supported (only 0)"),
    "logit_bias": (({},), "logit_bias is not supported"),
    "suffix": (("",), "suffix is not supported"),
    "tools": (([],), "tools are not supported"),
    "functions": (([],), "functions are not supported"),
    "response_format": (({"type": "text"},), "response_format is not supported (only {\"type\": \"text\"})"),
}


def refuse_unsupported(body: dict) -> None:
    """Raise a 400 for the first field of NOT_SUPPORTED set to something other than its neutral values."""
    for name, (neutral, message) in NOT_SUPPORTED.items():
        value = body.get(name)
        if value is not None and not any(type(value) is type(v) and value == v for v in neutral):
            raise bad_request(f"{message}, got {describe(value)}", name)
