"""How well an expert cache would do on a token stream: LRU hit rates per budget, and read-ahead recall.

Replays the routing of every token in decode order (token by token, layer by layer) through one
least-recently-used cache per MoE layer holding a fraction of that layer's experts, as the expert store's
budget would on a model whose experts do not all fit; and scores the next-layer guesses (runtime/prefetch.py)
against the routing they guessed.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

CACHED_FRACTIONS = (0.25, 0.5, 0.75)


def lru_hit_rate(routes: list[dict[int, np.ndarray]], n_experts: int, fraction: float) -> float:
    """Share of routed experts already cached, with `fraction` of each layer's experts cached (at least the
    k one token needs). `routes`: per window, {layer: ids [T, k]}; windows follow each other in one cache."""
    caches: dict[int, OrderedDict] = {}
    hits = total = 0
    for window in routes:
        tokens = len(next(iter(window.values()))) if window else 0  # every layer routed the same tokens
        for t in range(tokens):
            for layer, ids in window.items():
                cache = caches.setdefault(layer, OrderedDict())
                capacity = max(ids.shape[1], round(fraction * n_experts))
                for e in ids[t].tolist():
                    hits += e in cache
                    cache[e] = None
                    cache.move_to_end(e)
                total += ids.shape[1]
                while len(cache) > capacity:
                    cache.popitem(last=False)
    return hits / total if total else 1.0


def guess_recall(routes: list[dict[int, np.ndarray]], guesses: list[dict[int, np.ndarray]]) -> float | None:
    """Share of routed experts that the next-layer guess had named, over the layers that had a guess."""
    right = total = 0
    for window, guessed in zip(routes, guesses, strict=True):
        for layer, guess in guessed.items():
            ids = window[layer]
            right += sum(len(set(g) & set(r)) for g, r in zip(guess.tolist(), ids.tolist(), strict=True))
            total += ids.size
    return right / total if total else None
