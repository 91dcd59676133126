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


@pytest.mark.parametrize("routing", [dict(shared_expert_size=48, shared_expert_gate=True),
                                     dict(shared_expert_size=48, normalize_top_k=False),
                                     dict(top_k=3, score_func="sigmoid")], ids=["gated", "ungated", "none"])
def test_moe_block_matches_numpy_reference(exported, routing):
    """One MoE layer of the runtime (ONNX graph + CPU routing + kernels) vs numpy on the source weights (float
    expert activations, as numpy's; the int8 ones are checked in test_kernels and test_parity)."""
    from helpers import tiny_moe_spec
    from moedge.exporter.checkpoint import read_checkpoint
    from moedge.quant import dequantize, quantize_int8
    from moedge.runtime import Model
    from moedge.runtime.kv_cache import KVCache

    case = exported("block_" + "_".join(f"{k}{v}" for k, v in routing.items()), tiny_moe_spec(routing=routing))
    model, source = Model.load(case.bundle, threads=1, activations="float"), read_checkpoint(case.checkpoint)
    spec = model.spec
    x = np.random.default_rng(0).standard_normal((5, spec.hidden_size)).astype(np.float32)
    layers = model.weights.graph_layers
    out = layers(0, x, layers.tables(0, 5), KVCache(spec))
    moe = model.weights.moe[0]
    ids, weights = moe.route(out.router_logits)
    got = out.hidden + moe.experts(out.ffn_in, ids, weights, model.session().scratch)

    def w(name):
        return source.get(f"layers.0.ffn.{name}").astype(np.float64)

    def swiglu(v, gate, up, down):
        h = v @ gate.T
        return (h / (1 + np.exp(-h)) * (v @ up.T)) @ down.T

    f = out.ffn_in.astype(np.float64)
    ref_ids, ref_w = reference_route(f @ w("router.weight").T, spec.routing)
    np.testing.assert_array_equal(ids, ref_ids)
    experts = [dequantize(quantize_int8(w(f"experts.{p}"))) for p in ("gate", "up", "down")]
    routed = np.stack([sum(ref_w[t, j] * swiglu(f[t], *(m[ref_ids[t, j]] for m in experts))
                           for j in range(spec.routing.top_k)) for t in range(5)])
    shared = 0.0
    if spec.routing.shared_expert_size:
        shared = swiglu(f, w("shared.gate.weight"), w("shared.up.weight"), w("shared.down.weight"))
        if spec.routing.shared_expert_gate:
            shared = shared / (1 + np.exp(-(f @ w("shared_gate.weight").T)))
    expected = x + attention_reference(x, source, spec) + routed + shared
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def attention_reference(x, source, spec):
    """Layer 0's attention branch in numpy (no cache, positions 0..T-1)."""
    def w(name):
        return source.get(f"layers.0.{name}").astype(np.float64)

    def rms(v, weight):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + spec.norm_eps) * weight

    t, hd = x.shape[0], spec.head_dim
    xn = rms(x.astype(np.float64), w("attn_norm.weight"))
    inv = 1.0 / spec.rope_theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(t)[:, None, None] * inv  # [T, 1, Hd/2]

    def heads(v, n):
        v = v.reshape(t, n, hd)
        a, b = v[..., :hd // 2], v[..., hd // 2:]
        return np.concatenate([a * np.cos(ang) - b * np.sin(ang), b * np.cos(ang) + a * np.sin(ang)], -1)

    q = heads(xn @ w("attn.wq.weight").T, spec.n_heads)
    k = heads(xn @ w("attn.wk.weight").T, spec.n_kv_heads)
    v = (xn @ w("attn.wv.weight").T).reshape(t, spec.n_kv_heads, hd)
    group = spec.n_heads // spec.n_kv_heads
    out = np.zeros((t, spec.n_heads, hd))
    for h in range(spec.n_heads):
        scores = q[:, h] @ k[:, h // group].T * spec.scale + np.triu(np.full((t, t), -np.inf), 1)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        out[:, h] = (p / p.sum(-1, keepdims=True)) @ v[:, h // group]
    return out.reshape(t, -1) @ w("attn.wo.weight").T
