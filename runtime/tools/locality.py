"""How well an expert cache would do on a token stream: LRU hit rates per budget, the most any cache of that size
could hit, and read-ahead recall.

Replays the routing of every token in decode order (token by token, layer by layer) through one
least-recently-used cache per MoE layer holding a fraction of that layer's experts, as the expert store's
budget would on a model whose experts do not all fit; replays it again through caches that know the future
(Belady's rule: evict the expert needed again last), the ceiling of every eviction policy; and scores the
next-layer guesses (runtime/prefetch.py) against the routing they guessed.
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
                capacity = _capacity(ids.shape[1], n_experts, fraction)
                for e in ids[t].tolist():
                    hits += e in cache
                    cache[e] = None
                    cache.move_to_end(e)
                total += ids.shape[1]
                while len(cache) > capacity:
                    cache.popitem(last=False)
    return hits / total if total else 1.0


def _capacity(k: int, n_experts: int, fraction: float) -> int:
    """Experts a layer's cache holds: `fraction` of them, at least the k one token needs."""
    return max(k, round(fraction * n_experts))


def optimal_hit_rate(routes: list[dict[int, np.ndarray]], n_experts: int, fraction: float) -> float:
    """`lru_hit_rate`'s share for caches that know the future: on a miss, the cached expert routed to again last
    (or never) leaves, never one the same token needs. No eviction policy hits more with that many experts held
    and nothing read ahead."""
    layers: dict[int, list[np.ndarray]] = {}
    for window in routes:
        for layer, ids in window.items():
            layers.setdefault(layer, []).append(ids)
    hits = total = 0
    for parts in layers.values():
        sequence = np.concatenate(parts)
        hits += _optimal_hits(sequence, n_experts, _capacity(sequence.shape[1], n_experts, fraction))
        total += sequence.size
    return hits / total if total else 1.0


def _optimal_hits(sequence: np.ndarray, n_experts: int, capacity: int) -> int:
    """Hits of Belady's rule on one layer's routing [T, k] with `capacity` experts cached."""
    following = np.empty_like(sequence)  # following[t, j]: the next token after t routed to sequence[t, j]
    next_use = np.full(n_experts, len(sequence))  # len: never again
    for t in range(len(sequence) - 1, -1, -1):
        following[t] = next_use[sequence[t]]
        next_use[sequence[t]] = t
    cached: dict[int, int] = {}  # expert -> the token that next routes to it
    hits = 0
    for row, after in zip(sequence.tolist(), following.tolist(), strict=True):
        for e, next_token in zip(row, after, strict=True):
            if e in cached:
                hits += 1
            elif len(cached) >= capacity:
                del cached[max((c for c in cached if c not in row), key=cached.__getitem__)]
            cached[e] = next_token
    return hits


def guess_recall(routes: list[dict[int, np.ndarray]], guesses: list[dict[int, np.ndarray]]) -> float | None:
    """Share of routed experts that the next-layer guess had named, over the layers that had a guess."""
    right = total = 0
    for window, guessed in zip(routes, guesses, strict=True):
        for layer, guess in guessed.items():
            ids = window[layer]
            right += sum(len(set(g) & set(r)) for g, r in zip(guess.tolist(), ids.tolist(), strict=True))
            total += ids.size
    return right / total if total else None
