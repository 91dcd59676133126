"""A decoding session: one sequence's KV cache and scratch buffers, stepped by `forward`."""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .forward import SILENT, Probe, forward
from .inputs import check_tokens
from .kv_cache import KVCache
from .moe import ExpertScratch
from .weights import Weights


class Session:
    """One sequence: `prefill` the prompt, then `decode` one token at a time.

    A session owns its KV cache and the expert kernels' scratch buffers, so sessions of one
    model can run on several threads at once. A `probe` watches every step (see `forward.Probe`).
    """

    def __init__(self, weights: Weights, probe: Probe = SILENT):
        self.weights = weights
        self.cache = KVCache(weights.spec)
        weights.track(self.cache)
        self.scratch = ExpertScratch(weights.spec) if weights.spec.is_moe else None
        self.probe = probe

    @property
    def pos(self) -> int:
        """How many tokens the sequence holds."""
        return self.cache.length

    @property
    def remaining(self) -> int:
        """How many more tokens fit in the context."""
        return self.cache.capacity - self.cache.length

    def prefill(self, token_ids, last_only: bool = False) -> np.ndarray:
        """Run the prompt; logits [T, vocab] (only the last row [1, vocab] if `last_only`)."""
        return self._step(check_tokens(token_ids, self.weights.spec.vocab_size), last_only)

    def decode(self, token_id: int) -> np.ndarray:
        """Append one token; the logits [vocab] for the next one."""
        return self._step(check_tokens([token_id], self.weights.spec.vocab_size), True)[0]

    def reset(self) -> None:
        """Forget the sequence (the cache memory is reused)."""
        self.cache.length = 0

    def rewind(self, length: int) -> None:
        """Keep only the first `length` tokens of the sequence (their cached rows do not depend on later ones)."""
        if not 0 <= length <= self.pos:
            raise InputError(f"cannot rewind a sequence of {self.pos} tokens to {length}")
        self.cache.length = length

    def _step(self, tokens: np.ndarray, last_only: bool) -> np.ndarray:
        if len(tokens) > self.remaining:
            raise InputError(f"{len(tokens)} tokens at position {self.pos} exceed the context length "
                             f"{self.cache.capacity}")
        return forward(self.weights, self.cache, self.scratch, tokens, last_only, self.probe)
