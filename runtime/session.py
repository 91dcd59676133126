"""A decoding session: a preallocated KV cache and the per-token loop over the layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError, NumericalError
from .moe import ExpertScratch

if TYPE_CHECKING:
    from .model import Model


class Session:
    """Holds the KV cache of one sequence; `prefill` then `decode` one token at a time.

    The cache is [max_seq_len, kv_heads, head_dim] per layer, allocated once; the graphs read
    the filled prefix as a view and the new rows are written in place. A session also owns the
    expert kernels' scratch buffers, so sessions of one model can decode on several threads at once.
    """

    def __init__(self, model: Model, record_routing: bool = False):
        self.model = model
        spec = model.spec
        shape = (spec.max_seq_len, spec.n_kv_heads, spec.head_dim)
        try:
            self.k_cache = [np.zeros(shape, dtype=np.float32) for _ in range(spec.n_layers)]
            self.v_cache = [np.zeros(shape, dtype=np.float32) for _ in range(spec.n_layers)]
        except MemoryError:
            raise InputError(f"the KV cache for the model's context of {spec.max_seq_len} tokens needs "
                             f"{spec.kv_cache_bytes / 1e9:.1f} GB, more than this machine can allocate") from None
        self.scratch = ExpertScratch(spec) if spec.is_moe else None
        self.pos = 0
        self.routing_trace: list[tuple[int, np.ndarray]] | None = [] if record_routing else None

    @property
    def remaining(self) -> int:
        """How many more tokens fit in the context."""
        return self.model.spec.max_seq_len - self.pos

    def prefill(self, token_ids, last_only: bool = False) -> np.ndarray:
        """Run the prompt; logits [T, vocab] (only the last row [1, vocab] if `last_only`)."""
        return self._forward(self.model.check_tokens(token_ids), last_only)

    def decode(self, token_id: int) -> np.ndarray:
        """Append one token; the logits [vocab] for the next one."""
        return self._forward(self.model.check_tokens([token_id]), True)[0]

    def reset(self) -> None:
        """Forget the sequence (the cache memory is reused)."""
        self.pos = 0

    def _forward(self, tokens: np.ndarray, last_only: bool) -> np.ndarray:
        model, t, pos = self.model, len(tokens), self.pos
        if t > self.remaining:
            raise InputError(f"{t} tokens at position {pos} exceed the context length "
                             f"{model.spec.max_seq_len}")
        hidden = model.embed(tokens)
        tables = model.step_tables(pos, t)
        residual_mult = np.float32(model.spec.residual_multiplier)
        for i in range(model.spec.n_layers):
            out = model.run_layer(i, hidden, tables, self.k_cache[i][:pos], self.v_cache[i][:pos])
            self.k_cache[i][pos:pos + t] = out.k
            self.v_cache[i][pos:pos + t] = out.v
            hidden = out.hidden
            if out.router_logits is not None:
                moe = model.moe[i]
                ids, weights = moe.select(out.router_logits)
                routed = moe.compute(out.ffn_in, ids, weights, self.scratch)
                hidden += routed * residual_mult if residual_mult != 1.0 else routed
                if self.routing_trace is not None:
                    self.routing_trace.append((i, ids))
        logits = model.logits(hidden[-1:] if last_only else hidden)
        if not np.isfinite(logits).all():
            raise NumericalError(f"the logits at positions {pos}..{pos + t - 1} are not finite: the activations "
                                 "overflowed float32 (the model's weights are out of range)")
        self.pos += t
        return logits
