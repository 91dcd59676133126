"""ONNX graphs for the dense parts of the canonical model: one graph per layer.

A layer graph takes the residual stream `hidden` [T, D], the step's RoPE rotation `rope` and
`causal_bias` (computed once per step by the runtime) and the cached `past_k`/`past_v`
[P, K, Hd]; it returns the new `k`/`v` rows for the runtime
to store, and either the finished `hidden_out` (dense layer) or the residual stream after
attention plus the shared expert, the normed FFN input and the router logits (MoE layer).
Attention splits scores into the cached part and the new part, so the cache is read, never
concatenated or copied. Weights are float32 external data in one file shared by all graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..runtime.bundle import TensorEntry
from ..runtime.spec import ModelSpec
from ..runtime.tensor_names import LayerNames, layer_names, swiglu_names

OPSET = 17
F32 = TensorProto.FLOAT

# tensor name -> its entry in the dense weights file (supplied by the bundle writer); None if absent.
WeightLocator = Callable[[str], TensorEntry | None]
ONNX_TYPES = {"float32": TensorProto.FLOAT, "uint8": TensorProto.UINT8}


class GraphBuilder:
    """Accumulates nodes and initializers; names every intermediate value uniquely."""

    def __init__(self, weights_file: str, locate: WeightLocator, bits: int = 8):
        """`bits`: of the quantized dense linears' MatMulNBits codes (8 or 4; `runtime.bundle.NBITS`)."""
        self.bits = bits
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.weights_file = weights_file
        self.locate = locate
        self._seen: set[str] = set()
        self._count = 0

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs):
        self._count += 1
        outs = [name or f"{op_type.lower()}_{self._count}"] if outputs == 1 else [
            f"{op_type.lower()}_{self._count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, value, dtype=np.float32) -> str:
        self._count += 1
        name = f"const_{self._count}"
        self.initializers.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, name: str) -> str:
        """An initializer stored as external data in the shared weights file."""
        if name not in self._seen:
            entry = self.locate(name)
            self.external(name, self.weights_file, entry.offset, entry.nbytes, entry.shape, ONNX_TYPES[entry.dtype])
        return name

    def external(self, name: str, file: str, offset: int, nbytes: int, shape, data_type: int) -> str:
        """An initializer whose bytes are at [offset, offset + nbytes) of `file` (beside the graph)."""
        tensor = TensorProto(name=name, data_type=data_type, dims=list(shape))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", file), ("offset", str(offset)), ("length", str(nbytes))):
            tensor.external_data.add(key=key, value=value)
        self.initializers.append(tensor)
        self._seen.add(name)
        return name

    def linear(self, x: str, weight_name: str, bias_name: str | None = None) -> str:
        """x [T, in] @ W[out, in]^T (+ b); a quantized weight runs as MatMulNBits of `bits` (accuracy level 4 lets a
        prepacking onnxruntime quantize activations to int8; the runtime runs it unpacked, with float activations)."""
        bias = [self.weight(bias_name)] if bias_name else []
        entry = self.locate(weight_name)
        if entry.dtype == "float32":
            return self.op("Gemm", x, self.weight(weight_name), *bias, transB=1)
        rows, blocks, blob = entry.shape  # uint8 codes [out, in / block, block · bits / 8] (quant.matmul_nbits)
        block = blob * 8 // self.bits
        y = self.op("MatMulNBits", x, self.weight(weight_name), self.weight(f"{weight_name}_scale"),
                    domain="com.microsoft", K=blocks * block, N=rows, bits=self.bits, block_size=block,
                    accuracy_level=4)
        return self.op("Add", y, *bias) if bias else y

    def rmsnorm(self, x: str, weight_name: str, eps: float) -> str:
        """x / sqrt(mean(x²) + eps) · w, written as the pattern onnxruntime fuses into one
        SimplifiedLayerNormalization kernel (Pow, ReduceMean, Add, Sqrt, Div, Mul)."""
        mean_sq = self.op("ReduceMean", self.op("Pow", x, self.const(2.0)), axes=[-1], keepdims=1)
        rms = self.op("Sqrt", self.op("Add", mean_sq, self.const(eps)))
        return self.op("Mul", self.op("Div", x, rms), self.weight(weight_name))

    def swiglu(self, x: str, prefix: str) -> str:
        gate, up, down = swiglu_names(prefix)
        gated = self.linear(x, gate)
        act = self.op("Mul", gated, self.op("Sigmoid", gated))
        return self.linear(self.op("Mul", act, self.linear(x, up)), down)

    def model(self, inputs, outputs, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        return helper.make_model(graph, producer_name="moedge", opset_imports=[
            helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])


@dataclass(frozen=True)
class AttentionIO:
    """Value names an attention block reads and writes.

    The RoPE rotation `rope` [T, Hd, Hd] and the additive `causal_bias` [G·T, T] are the same
    for every layer of a step, so they are inputs computed once per step, not nodes of every layer.
    """

    hidden: str = "hidden"
    rope: str = "rope"
    causal_bias: str = "causal_bias"
    past_k: str = "past_k"
    past_v: str = "past_v"
    k: str = "k"
    v: str = "v"


def _heads(g: GraphBuilder, x: str, n: int, hd: int) -> str:
    return g.op("Reshape", x, g.const([0, n, hd], np.int64))  # [T, n, Hd]


def _projection(g: GraphBuilder, spec: ModelSpec, x: str, names: LayerNames, which: str, heads: int) -> str:
    """A q/k/v projection [T, heads·Hd], per head [T, heads, Hd] when q/k norms are per head."""
    out = g.linear(x, names.projection(which), names.bias(which) if spec.attention_bias else None)
    return _heads(g, out, heads, spec.head_dim) if spec.qk_norm == "head" else out


def attention(g: GraphBuilder, spec: ModelSpec, x: str, names: LayerNames, io: AttentionIO = AttentionIO()) -> str:
    """Causal GQA over [past ‖ new] keys; emits the new rows `io.k` and `io.v` [T, K, Hd]."""
    kvh, hd, grp = spec.n_kv_heads, spec.head_dim, spec.n_heads // spec.n_kv_heads
    q, k, v = (_projection(g, spec, x, names, w, n) for w, n in (("wq", spec.n_heads), ("wk", kvh), ("wv", kvh)))
    if spec.qk_norm != "none":
        q, k = g.rmsnorm(q, names.q_norm, spec.norm_eps), g.rmsnorm(k, names.k_norm, spec.norm_eps)
    q = g.op("MatMul", _heads(g, q, spec.n_heads, hd), io.rope)  # [T, H, Hd] @ [T, Hd, Hd]
    g.op("MatMul", _heads(g, k, kvh, hd), io.rope, name=io.k)
    g.op("Identity", _heads(g, v, kvh, hd), name=io.v)
    # q [T, H, Hd] → [K, G·T, Hd], rows ordered (group, token); scaled once here.
    q = g.op("Reshape", q, g.const([0, kvh, grp, hd], np.int64))
    q = g.op("Transpose", q, perm=[1, 2, 0, 3])
    q = g.op("Mul", g.op("Reshape", q, g.const([kvh, -1, hd], np.int64)), g.const(spec.scale))
    keys_t = {src: g.op("Transpose", src, perm=[1, 2, 0]) for src in (io.past_k, io.k)}  # [K, Hd, *]
    vals = {src: g.op("Transpose", src, perm=[1, 0, 2]) for src in (io.past_v, io.v)}  # [K, *, Hd]
    s_past = g.op("MatMul", q, keys_t[io.past_k])  # [K, G·T, P]
    s_new = g.op("Add", g.op("MatMul", q, keys_t[io.k]), io.causal_bias)  # [K, G·T, T]
    probs = g.op("Softmax", g.op("Concat", s_past, s_new, axis=-1), axis=-1)
    past_len = g.op("Shape", io.past_k, start=0, end=1)
    p_past = g.op("Slice", probs, g.const([0], np.int64), past_len, g.const([2], np.int64))
    p_new = g.op("Slice", probs, past_len, g.const([np.iinfo(np.int64).max], np.int64), g.const([2], np.int64))
    out = g.op("Add", g.op("MatMul", p_past, vals[io.past_v]), g.op("MatMul", p_new, vals[io.v]))
    out = g.op("Reshape", out, g.const([kvh, grp, -1, hd], np.int64))  # [K, G, T, Hd]
    out = g.op("Transpose", out, perm=[2, 0, 1, 3])  # [T, K, G, Hd]
    out = g.op("Reshape", out, g.const([0, spec.n_heads * hd], np.int64))
    return g.linear(out, names.projection("wo"))


def causal_bias(g: GraphBuilder, groups: int, hidden: str) -> str:
    """[G·T, T] additive mask: 0 where key ≤ query, -inf above the diagonal."""
    t = g.op("Shape", hidden, start=0, end=1)
    idx = g.op("Range", g.const(0, np.int64), g.op("Squeeze", t), g.const(1, np.int64))
    above = g.op("Greater", g.op("Unsqueeze", idx, g.const([0], np.int64)),
                 g.op("Unsqueeze", idx, g.const([1], np.int64)))  # [T, T]: key > query
    bias = g.op("Where", above, g.const(-np.inf), g.const(0.0))
    return g.op("Tile", bias, g.op("Concat", g.const([groups], np.int64), g.const([1], np.int64), axis=0))


def residual(g: GraphBuilder, spec: ModelSpec, x: str, branch: str, name: str | None = None) -> str:
    if spec.residual_multiplier != 1.0:
        branch = g.op("Mul", branch, g.const(spec.residual_multiplier))
    return g.op("Add", x, branch, name=name)


def value_info(name: str, shape: list) -> onnx.ValueInfoProto:
    """A float32 graph input or output."""
    return helper.make_tensor_value_info(name, F32, shape)


def layer_body(g: GraphBuilder, spec: ModelSpec, i: int, io: AttentionIO = AttentionIO()):
    """Layer i up to its routed experts: (residual stream, FFN input, router logits or None).

    For a dense layer the residual stream is final; for an MoE layer it includes the shared
    expert and the routed experts' sum is still to be added.
    """
    n = layer_names(i)
    attn = attention(g, spec, g.rmsnorm(io.hidden, n.attn_norm, spec.norm_eps), n, io)
    h = residual(g, spec, io.hidden, attn)
    ffn_in = g.rmsnorm(h, n.ffn_norm, spec.norm_eps)
    if spec.layer_kinds[i] == "dense":
        return residual(g, spec, h, g.swiglu(ffn_in, n.ffn)), ffn_in, None
    logits = g.linear(ffn_in, n.router)
    if spec.routing.shared_expert_size:
        shared = g.swiglu(ffn_in, n.shared)
        if spec.routing.shared_expert_gate:
            shared = g.op("Mul", shared, g.op("Sigmoid", g.linear(ffn_in, n.shared_gate)))
        h = residual(g, spec, h, shared)
    return h, ffn_in, logits


def layer_graph(spec: ModelSpec, i: int, weights_file: str, locate: WeightLocator, bits: int = 8) -> onnx.ModelProto:
    """The ONNX graph of layer `i` (see module docstring for inputs and outputs); `bits` of the quantized dense
    linears' codes."""
    g = GraphBuilder(weights_file, locate, bits)
    kv = ["P", spec.n_kv_heads, spec.head_dim]
    inputs = [value_info("hidden", ["T", spec.hidden_size]),
              value_info("rope", ["T", spec.head_dim, spec.head_dim]), value_info("causal_bias", ["GT", "T"]),
              value_info("past_k", kv), value_info("past_v", kv)]
    h, ffn_in, logits = layer_body(g, spec, i)
    g.op("Identity", h, name="hidden_out")
    outputs = [value_info(n, s) for n, s in (("hidden_out", ["T", spec.hidden_size]),
                                         ("k", ["T", *kv[1:]]), ("v", ["T", *kv[1:]]))]
    if logits is not None:
        g.op("Identity", ffn_in, name="ffn_in")
        g.op("Identity", logits, name="router_logits")
        outputs += [value_info("ffn_in", ["T", spec.hidden_size]),
                    value_info("router_logits", ["T", spec.routing.n_experts])]
    return g.model(inputs, outputs, f"layer_{i}")
