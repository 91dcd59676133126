"""The forward pass of one step, top to bottom: tokens in, logits out, the KV cache one step longer.

    token ids → embedding rows → for each layer:
        dense part (attention over the KV cache, norms, dense FFN or shared expert + router logits; one
        token in numba, a prompt in the layer's onnxruntime graph) → the new k/v rows into the cache
        → MoE layers: route on the CPU, add the selected experts' weighted sum (numba, from the mmap);
          when reading ahead, guess the next MoE layer's experts and start reading them
    → head (final norm + logits, numba) → refuse non-finite logits → commit the cache rows

A one-token step with every expert in the mapped file and no probe runs the layers in one numba call
(`decode_step`: the same kernels in the same order, without the Python between them).

A `Probe` watches a step without changing it: `moedge bench` times the parts, `moedge eval`
counts the experts each layer chose.
"""

from __future__ import annotations

import time

import numpy as np

from .errors import NumericalError
from .kv_cache import KVCache
from .moe import ExpertScratch
from .weights import Weights


class Probe:
    """Watches forward passes; this base does nothing. `lap(part)` ends a span of work of that part
    (dense, routing, experts, head); `routed(layer, ids)` sees the experts [T, k] a layer chose;
    `guessed(layer, ids)` the experts [T, k] it was guessed to choose (made only while reading ahead,
    or when `watches_guesses`)."""

    watches_guesses = False

    def lap(self, part: str) -> None:
        pass

    def routed(self, layer: int, ids: np.ndarray) -> None:
        pass

    def guessed(self, layer: int, ids: np.ndarray) -> None:
        pass


SILENT = Probe()


class RoutingTrace(Probe):
    """Records the experts every MoE layer chose, `trace`: a list of (layer, ids [T, k]), and the next
    layer's guesses, `guesses`: {layer: ids [T, k]} of the current step."""

    watches_guesses = True

    def __init__(self):
        self.trace: list[tuple[int, np.ndarray]] = []
        self.guesses: dict[int, np.ndarray] = {}

    def routed(self, layer: int, ids: np.ndarray) -> None:
        self.trace.append((layer, ids))

    def guessed(self, layer: int, ids: np.ndarray) -> None:
        self.guesses[layer] = ids


def forward(weights: Weights, cache: KVCache, scratch: ExpertScratch | None, tokens: np.ndarray, last_only: bool,
            probe: Probe = SILENT) -> np.ndarray:
    """Logits [T, V] (or [1, V] with `last_only`) for checked token ids [T] after the cached ones."""
    started = time.perf_counter()
    start, count = cache.length, len(tokens)
    cache.reserve(count)  # an expert budget that follows the KV cache makes room for these rows first
    layers = weights.decode_layers if count == 1 else weights.graph_layers  # numba for a token, else ORT
    hidden = weights.embed(tokens)  # [T, D]
    tables = layers.tables(start, count)  # RoPE (and the causal mask) of this step
    probe.lap("other")
    if count == 1 and probe is SILENT and weights.decode_step is not None:  # every layer in one numba call
        weights.decode_step(hidden, tables, cache, scratch.hidden)
    else:
        hidden = _layers(weights, layers, hidden, tables, cache, scratch, probe)
    logits = weights.head.run(hidden[-1:] if last_only else hidden)  # [T or 1, V]
    probe.lap("head")
    if not np.isfinite(logits).all():
        raise NumericalError(f"the logits at positions {start}..{start + count - 1} are not finite: the activations "
                             "overflowed float32 (the model's weights are out of range)")
    cache.commit(count)
    if count == 1:
        weights.decoded(time.perf_counter() - started)  # how long a step takes decides whether to read ahead
    else:
        weights.prompted()
    return logits


def _layers(weights: Weights, layers, hidden: np.ndarray, tables, cache: KVCache, scratch: ExpertScratch | None,
            probe: Probe) -> np.ndarray:
    """hidden [T, D] through every layer, part by part, each part's end shown to the probe."""
    for i in range(weights.spec.n_layers):
        out = layers(i, hidden, tables, cache)  # the new k/v rows go into the cache
        hidden = out.hidden  # attention (and a dense FFN or the shared expert) added
        probe.lap("dense")
        if out.router_logits is not None:
            moe = weights.moe[i]
            ids, gates = moe.route(out.router_logits)  # [T, k] each
            probe.routed(i, ids)
            probe.lap("routing")
            hidden += moe.experts(out.ffn_in, ids, gates, scratch)  # the routed experts' residual branch
            weights.read_ahead(i, hidden, probe)  # guess the next MoE layer's experts; start reading them
            probe.lap("experts")
    return hidden
