"""A single ONNX graph of the whole model with every expert computed: a peer for `moedge bench`.

This is how a plain ONNX export runs an MoE: each token goes through all E experts of a layer
(int8 weights → DequantizeLinear → MatMul), weighted by a dense [T, E] routing matrix that is
zero outside the top-k. The graph reads the bundle's own files as external data, so it adds no
weights to the bundle. The runtime never uses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..runtime.bundle import EMBEDDING, NBITS, Manifest
from ..runtime.spec import ModelSpec
from .onnx_graphs import AttentionIO, GraphBuilder, causal_bias, layer_body, residual, value_info
from .source import ExportError

FULL_GRAPH = "full_graph.onnx"


def _dequantized(g: GraphBuilder, manifest: Manifest, layer: int, expert: int, part: str) -> str:
    """Expert weight [out, in] as float: DequantizeLinear over rows of one quantization group
    (float32 experts are read as they are)."""
    index = manifest.experts
    base = index.layers[layer][expert]
    layout = index.layouts[index.schemes[layer][expert]].tensors
    q, scale = layout[part], layout[f"{part}_scale"]
    rows, cols = q.shape
    groups = scale.shape[1]
    name = f"experts.{layer}.{expert}.{part}"
    if q.dtype == "float32":
        g.external(name, index.file, base + q.offset, q.nbytes, (rows, cols), TensorProto.FLOAT)
        return name
    g.external(name, index.file, base + q.offset, q.nbytes, (rows * groups, cols // groups), TensorProto.INT8)
    g.external(f"{name}_scale", index.file, base + scale.offset, scale.nbytes, (rows * groups,), TensorProto.FLOAT)
    deq = g.op("DequantizeLinear", name, f"{name}_scale", axis=0)  # [rows·groups, group]
    return g.op("Reshape", deq, g.const([rows, cols], np.int64))


def _head(g: GraphBuilder, manifest: Manifest, hidden: str) -> str:
    """Final norm and the LM head (int8 → DequantizeLinear, or float) → logits [T, V]."""
    spec, names, dense = manifest.spec, manifest.head, manifest.dense_tensors
    x = g.rmsnorm(hidden, names["norm"], spec.norm_eps)
    weight, scale = dense[names["weight"]], dense[names["scale"]]
    if weight.dtype == "int8":
        rows, cols = weight.shape
        groups = scale.shape[1]
        g.external("head.q", manifest.dense_file, weight.offset, weight.nbytes, (rows * groups, cols // groups),
                   TensorProto.INT8)
        g.external("head.s", manifest.dense_file, scale.offset, scale.nbytes, (rows * groups,), TensorProto.FLOAT)
        matrix = g.op("Reshape", g.op("DequantizeLinear", "head.q", "head.s", axis=0),
                      g.const([rows, cols], np.int64))
    else:
        matrix = g.weight(names["weight"])
    logits = g.op("Gemm", x, matrix, transB=1)
    return g.op("Div", logits, g.const(spec.logits_divisor)) if spec.logits_divisor != 1.0 else logits


def _dense_routing(g: GraphBuilder, spec: ModelSpec, logits: str) -> str:
    """[T, E] routing weights: the top-k weights in place, zeros elsewhere."""
    r = spec.routing
    scores = g.op("Softmax", logits, axis=-1) if r.score_func == "softmax" else g.op("Sigmoid", logits)
    values, indices = g.op("TopK", scores, g.const([r.top_k], np.int64), axis=-1, outputs=2)
    if r.normalize_top_k:
        values = g.op("Div", values, g.op("ReduceSum", values, g.const([-1], np.int64), keepdims=1))
    if r.scaling_factor != 1.0:
        values = g.op("Mul", values, g.const(r.scaling_factor))
    return g.op("ScatterElements", g.op("Mul", scores, g.const(0.0)), indices, values, axis=1)


def _all_experts(g: GraphBuilder, manifest: Manifest, layer: int, x: str, logits: str) -> str:
    spec = manifest.spec
    dense = _dense_routing(g, spec, logits)
    total = None
    for e in range(spec.routing.n_experts):
        gate, up, down = (_dequantized(g, manifest, layer, e, part) for part in ("gate", "up", "down"))
        h = g.op("Gemm", x, gate, transB=1)
        h = g.op("Mul", g.op("Mul", h, g.op("Sigmoid", h)), g.op("Gemm", x, up, transB=1))
        y = g.op("Gemm", h, down, transB=1)
        weight = g.op("Slice", dense, g.const([e], np.int64), g.const([e + 1], np.int64), g.const([1], np.int64))
        term = g.op("Mul", y, weight)
        total = term if total is None else g.op("Add", total, term)
    return total


def full_graph(manifest: Manifest) -> onnx.ModelProto:
    """The whole model: tokens, the RoPE rotation (`runtime.rope`) and the past KV of every layer
    → logits and present KV."""
    spec = manifest.spec
    dense = manifest.dense_tensors
    g = GraphBuilder(manifest.dense_file, dense.get, NBITS.get(manifest.dense_linears, 8))
    kv = ["P", spec.n_kv_heads, spec.head_dim]
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["T"]),
              value_info("rope", ["T", spec.head_dim, spec.head_dim])]
    outputs = []
    h = g.op("Gather", g.weight(EMBEDDING), "tokens", axis=0)
    if spec.embedding_multiplier != 1.0:
        h = g.op("Mul", h, g.const(spec.embedding_multiplier))
    bias = causal_bias(g, spec.n_heads // spec.n_kv_heads, h)
    for i in range(spec.n_layers):
        io = AttentionIO(hidden=h, causal_bias=bias, past_k=f"past_k_{i}", past_v=f"past_v_{i}",
                         k=f"k_{i}", v=f"v_{i}")
        inputs += [value_info(io.past_k, kv), value_info(io.past_v, kv)]
        h, ffn_in, logits = layer_body(g, spec, i, io)
        if logits is not None:
            h = residual(g, spec, h, _all_experts(g, manifest, i, ffn_in, logits))
        for past, new, present in ((io.past_k, io.k, f"present_k_{i}"), (io.past_v, io.v, f"present_v_{i}")):
            g.op("Concat", past, new, axis=0, name=present)
            outputs.append(value_info(present, ["P+T", *kv[1:]]))
    g.op("Identity", _head(g, manifest, h), name="logits")
    return g.model(inputs, [value_info("logits", ["T", spec.vocab_size]), *outputs], "full_model")


def write_full_graph(manifest: Manifest, folder: Path, check: bool = True) -> Path:
    """Write the full graph into `folder`, which must hold (or hard-link to) the bundle's weight files.

    `check` runs onnx.checker, which refuses external data behind links. int4 experts have no ONNX
    form here (ExportError): the graph reads int8 or float32 experts.
    """
    if manifest.quant_scheme not in ("int8", "float32"):
        raise ExportError(f"the full graph reads int8 or float32 experts, not {manifest.quant_scheme}")
    path = folder / FULL_GRAPH
    onnx.save(full_graph(manifest), str(path))
    if check:
        onnx.checker.check_model(str(path))
    return path
