"""A decoding session: one sequence's KV cache and scratch buffers, stepped by `forward`."""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .forward import SILENT, Probe, forward
from .inputs import check_tokens
from .kv_cache import KVCache
from .moe import ExpertScratch
from .weights import Weights

# Tokens per forward pass of a prompt. A pass's scratch grows with its length (the attention scores with length ×
# context, the experts' inputs and outputs with length × top-k), and so did its time per token: a long prompt goes
# through in passes of this many. Measured on granite-1b-shape, one thread, a 2,000-token prompt: one pass 42.9 s
# and a 2,498 MB peak RSS; passes of 512 tokens 32.0 s, 256: 22.4 s, 128: 20.2 s and 1,793 MB, 64: 22.9 s.
PREFILL_CHUNK = 128


class Session:
    """One sequence: `prefill` the prompt, then `decode` one token at a time.

    A session owns its KV cache and the expert kernels' scratch buffers, so sessions of one
    model can run on several threads at once. A `probe` watches every step (see `forward.Probe`).
    """

    def __init__(self, weights: Weights, probe: Probe = SILENT):
        self.weights = weights
        self.cache = KVCache(weights.spec, weights.kv_dtype)
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
        """Run the prompt (in passes of `PREFILL_CHUNK` tokens); logits [T, vocab] (only the last row [1, vocab] if
        `last_only`). If a pass fails, the sequence is left as it was before the call."""
        tokens = check_tokens(token_ids, self.weights.spec.vocab_size)
        self._check_room(len(tokens))
        start = self.pos
        try:
            logits = [self._step(tokens[i:i + PREFILL_CHUNK], last_only) for i in range(0, len(tokens), PREFILL_CHUNK)]
        except BaseException:
            self.cache.length = start
            raise
        return logits[-1] if last_only else np.concatenate(logits)

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

    def _check_room(self, count: int) -> None:
        if count > self.remaining:
            raise InputError(f"{count} tokens at position {self.pos} exceed the context length {self.cache.capacity}")

    def _step(self, tokens: np.ndarray, last_only: bool) -> np.ndarray:
        self._check_room(len(tokens))
        return forward(self.weights, self.cache, self.scratch, tokens, last_only, self.probe)
