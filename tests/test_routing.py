"""CPU routing against a plain reference, and against the exporter's torch routing."""

import numpy as np
import pytest
import torch

from moedge.exporter.model import route as torch_route
from moedge.runtime.routing import route
from moedge.runtime.spec import RoutingSpec


def reference_route(logits, spec):
    """One token at a time, written out longhand."""
    ids, weights = [], []
    for row in logits.astype(np.float64):
        scores = np.exp(row - row.max()) / np.exp(row - row.max()).sum() if spec.score_func == "softmax" \
            else 1 / (1 + np.exp(-row))
        chosen = sorted(range(len(row)), key=lambda e: (-scores[e], e))[:spec.top_k]
        w = scores[chosen]
        if spec.normalize_top_k:
            w = w / w.sum()
        ids.append(chosen)
        weights.append(w * spec.scaling_factor)
    return np.array(ids), np.array(weights)


SPECS = [RoutingSpec(8, 2), RoutingSpec(8, 2, normalize_top_k=False), RoutingSpec(16, 1),
         RoutingSpec(16, 4, score_func="sigmoid", normalize_top_k=False, scaling_factor=2.5),
         RoutingSpec(64, 8, score_func="sigmoid")]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_route_matches_reference_and_torch(spec):
    logits = np.random.default_rng(spec.n_experts).standard_normal((33, spec.n_experts)).astype(np.float32)
    ids, weights = route(logits, spec)
    ref_ids, ref_w = reference_route(logits, spec)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(weights, ref_w, rtol=1e-5)
    t_w, t_ids = torch_route(torch.from_numpy(logits), spec)
    np.testing.assert_array_equal(ids, t_ids.numpy())
    np.testing.assert_allclose(weights, t_w.numpy(), rtol=1e-5)
    if spec.normalize_top_k:
        np.testing.assert_allclose(weights.sum(-1), spec.scaling_factor, rtol=1e-5)


def test_ties_go_to_the_lower_index():
    logits = np.array([[1.0, 3.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0]], np.float32)
    ids, weights = route(logits, RoutingSpec(5, 2))
    np.testing.assert_array_equal(ids, [[1, 2], [0, 1]])
    np.testing.assert_allclose(weights, 0.5)
