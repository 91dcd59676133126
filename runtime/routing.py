"""Top-k expert routing on the CPU, as the bundle's `RoutingSpec` says."""

from __future__ import annotations

import numpy as np

from .spec import RoutingSpec


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def route(logits: np.ndarray, routing: RoutingSpec) -> tuple[np.ndarray, np.ndarray]:
    """Expert indices [T, k] (int64) and weights [T, k] (float32) from router logits [T, E].

    Ties are broken towards the lower expert index, so routing is deterministic.
    """
    logits = np.asarray(logits, dtype=np.float32)
    scores = _softmax(logits) if routing.score_func == "softmax" else 1.0 / (1.0 + np.exp(-logits))
    k = routing.top_k
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :k]  # [T, k]
    weights = np.take_along_axis(scores, order, axis=-1)
    if routing.normalize_top_k:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return order.astype(np.int64), (weights * routing.scaling_factor).astype(np.float32)
