"""Checks of what callers pass the API: token ids and sampling arguments. Each raises `InputError`
naming the argument, before any work is done."""

from __future__ import annotations

import numpy as np

from .errors import InputError


def check_tokens(tokens, vocab_size: int) -> np.ndarray:
    """Token ids (a list, tuple or 1-D integer array) as int64 [T]; refuses non-integers, an empty
    sequence and ids outside [0, vocab_size)."""
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise InputError(f"token ids must be a 1-D integer array, got {tokens.ndim}-D {tokens.dtype}")
    elif isinstance(tokens, (list, tuple)):
        wrong = [t for t in tokens if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer))]
        if wrong:
            raise InputError(f"token ids must be integers, got {type(wrong[0]).__name__} {_short(wrong[0])}")
    else:
        raise InputError(f"token ids must be a list of integers, got {type(tokens).__name__}")
    if len(tokens) == 0:
        raise InputError("no tokens given")
    if isinstance(tokens, np.ndarray):
        outside = tokens[(tokens < 0) | (tokens >= vocab_size)]
        bad = int(outside[0]) if outside.size else None
    else:
        bad = next((int(t) for t in tokens if not 0 <= int(t) < vocab_size), None)
    if bad is not None:
        raise InputError(f"token id {_short(bad)} is outside the vocabulary [0, {vocab_size})")
    return np.asarray(tokens, dtype=np.int64)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int | None,
                   stop: list[str] | None) -> None:
    """Raise `InputError` naming the first sampling argument of the wrong type or out of range."""
    def whole(value, name: str) -> None:
        if type(value) not in (int, np.int64) or value < 0:
            raise InputError(f"{name} must be a whole number >= 0, got {value!r}")

    whole(max_new_tokens, "max_new_tokens")
    whole(top_k, "top_k")
    if seed is not None:
        whole(seed, "seed")
    if type(temperature) not in (int, float) or not 0 <= temperature < float("inf"):
        raise InputError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if type(top_p) not in (int, float) or not 0 < top_p <= 1:
        raise InputError(f"top_p must be a number in (0, 1], got {top_p!r}")
    if stop is not None and (not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop)):
        raise InputError("stop must be a list of non-empty strings")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
