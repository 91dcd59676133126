"""Top-k expert routing on the CPU, as the bundle's `RoutingSpec` says (one numba call per layer)."""

from __future__ import annotations

import numpy as np
from numba import njit

from . import numba_cache  # noqa: F401  (first: it says where the kernels' cache lives)
from .spec import RoutingSpec


@njit(cache=True, error_model="numpy")
def _route(logits, k, sigmoid, normalize, scaling, ids, weights):
    t_n, e_n = logits.shape
    scores = np.empty(e_n, dtype=np.float64)
    chosen = np.zeros(e_n, dtype=np.bool_)
    for t in range(t_n):
        if sigmoid:
            for e in range(e_n):
                scores[e] = 1.0 / (1.0 + np.exp(-np.float64(logits[t, e])))
        else:
            top = np.float64(logits[t, 0])
            for e in range(1, e_n):  # a loop: `logits[t].max()` compiles 0.35 s more
                top = max(top, np.float64(logits[t, e]))
            total = 0.0
            for e in range(e_n):
                scores[e] = np.exp(np.float64(logits[t, e]) - top)
                total += scores[e]
            scores /= total
        chosen[:] = False
        total = 0.0
        for j in range(k):  # k passes of selection: a tie keeps the lower index
            best = -1
            for e in range(e_n):
                if not chosen[e] and (best < 0 or scores[e] > scores[best]):
                    best = e
            chosen[best] = True
            ids[t, j] = best
            total += scores[best]
        for j in range(k):
            w = scores[ids[t, j]] / total if normalize else scores[ids[t, j]]
            weights[t, j] = w * scaling


def route(logits: np.ndarray, routing: RoutingSpec) -> tuple[np.ndarray, np.ndarray]:
    """Expert indices [T, k] (int64) and weights [T, k] (float32) from router logits [T, E].

    Scores are computed in float64; ties are broken towards the lower expert index, so routing
    is deterministic.
    """
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    ids = np.empty((logits.shape[0], routing.top_k), dtype=np.int64)
    weights = np.empty((logits.shape[0], routing.top_k), dtype=np.float32)
    # one argument type whatever the manifest's JSON held (an int factor would compile another specialisation)
    _route(logits, int(routing.top_k), routing.score_func == "sigmoid", bool(routing.normalize_top_k),
           float(routing.scaling_factor), ids, weights)
    return ids, weights
