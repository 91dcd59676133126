"""Sampling and streaming generation on a `Session`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from .session import Session
from .stop_strings import StopStrings


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


def stream(session: Session, tokenizer: Tokenizer | None, prompt: list[int], max_new_tokens: int,
           eos: set[int], temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
           stop: list[str] | None = None) -> Iterator[Token]:
    """Prefill `prompt` (checked ids) into a fresh `session`, then yield up to `max_new_tokens` tokens;
    ends early at an `eos` id or once the text holds a `stop` string."""
    rng = np.random.default_rng(seed)
    stops = StopStrings(stop or ())
    logits = session.prefill(prompt, last_only=True)[0]
    text = DecodeStream(skip_special_tokens=True) if tokenizer is not None else None
    for step in range(max_new_tokens):
        token = sample(logits, rng, temperature, top_k, top_p)
        if token in eos:
            return
        piece = (text.step(tokenizer, token) or "") if text is not None else ""
        yield Token(token, piece)
        stops.feed(piece)
        if stops.matched is not None:
            return
        if step + 1 < max_new_tokens:
            logits = session.decode(token)
