"""Sampling and streaming generation on top of a `Session`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from .model import Model


@dataclass(frozen=True)
class Token:
    """One generated token: its id and the text it completes (may be '' mid-character)."""

    id: int
    text: str


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float = 0.0, top_k: int = 0,
           top_p: float = 1.0) -> int:
    """Pick a token id from logits [vocab]: argmax at temperature 0, else top-k/top-p sampling."""
    if temperature <= 0.0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    order = np.argsort(-scaled, kind="stable")
    if top_k > 0:
        order = order[:top_k]
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return int(order[rng.choice(len(order), p=probs)])


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int | None) -> None:
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


def _stop_ids(model: Model) -> set[int]:
    eos = model.manifest.generation.get("eos_token_id")
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def generate(model: Model, prompt: str | list[int], max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             stop: list[str] | None = None) -> Iterator[Token]:
    """Stream up to `max_new_tokens` tokens after `prompt` (text, or token ids); ends early at EOS or a
    stop string. Bad arguments raise `InputError` naming the argument, before any work."""
    check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    if stop is not None and (not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop)):
        raise InputError("stop must be a list of non-empty strings")
    if isinstance(prompt, str):
        ids = model.encode(prompt)
    elif isinstance(prompt, (list, tuple, np.ndarray)):
        ids = model.check_tokens(prompt).tolist()
    else:
        raise InputError(f"the prompt must be text or a list of token ids, got {type(prompt).__name__}")
    session = model.session()
    if len(ids) + max_new_tokens > session.remaining:
        raise InputError(f"prompt of {len(ids)} tokens plus {max_new_tokens} new tokens exceeds the "
                         f"context length {model.spec.max_seq_len}")
    rng = np.random.default_rng(seed)
    eos, stop = _stop_ids(model), stop or []
    logits = session.prefill(ids, last_only=True)[0]
    detokenizer = _Detokenizer(model) if model.tokenizer is not None else None
    tail, longest_stop = "", max((len(s) for s in stop), default=0)
    for step in range(max_new_tokens):
        token = sample(logits, rng, temperature, top_k, top_p)
        if token in eos:
            return
        piece = detokenizer.push(token) if detokenizer else ""
        yield Token(token, piece)
        tail = (tail + piece)[-(longest_stop + len(piece)):] if stop else ""
        if any(s in tail for s in stop):
            return
        if step + 1 < max_new_tokens:
            logits = session.decode(token)


class _Detokenizer:
    """Incremental detokenization: each token costs a decode of a few tokens, not of the whole text.

    The text of a new token is the difference between decoding [prefix ‖ new] and [prefix], where
    the prefix is the last few emitted tokens (so decoders that treat the first token specially
    stay right); it waits while the text ends in an incomplete multi-byte character.
    """

    def __init__(self, model: Model):
        self.model = model
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] is the context of the next piece
        self.read = 0  # ids before read have been emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.model.decode_text(self.ids[self.prefix:self.read])
        after = self.model.decode_text(self.ids[self.prefix:])
        if after.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            return ""
        self.prefix, self.read = max(self.read - 4, 0), len(self.ids)
        return after[len(before):]
