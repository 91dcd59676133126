"""Decode (one token) of a layer's dense part in numba, over the very tensors the ONNX graphs read.

onnxruntime costs ~0.4 ms per layer call however small the layer (measured on granite-1b-shape: 9.6 ms
of dense graphs per token for 75 MB of weights, about 3x their share of the roofline). This path does
what a layer graph does — norms, q/k/v, q/k norms, RoPE, attention over the KV cache, output
projection, residuals, then the dense FFN or the router and shared expert — in one numba call per
layer, reading the dense file's float32 matrices or MatMulNBits codes in place: 8-bit codes as int8 rows,
4-bit ones as int4 rows (`kernel_codes`) of the input taken in `quant.nbits_order`, which is how those rows
hold it. The linears' inputs are quantized to int8 blocks of 32 as the experts' are, or stay float32
(`activations="float"`, like the graphs). The layer graphs stay the reference and run prefill; tests hold
the two paths together.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange, typeof, types
from numba.core.typing.typeof import Purpose
from numba.extending import overload

from ..quant import UNSIGNED_ZERO
from . import numba_cache  # noqa: F401  (first: it says where the kernels' cache lives)
from .bundle import NBITS, Manifest
from .cache_lines import prefetch_row, rows_ahead
from .fast_exp import fast_exp
from .graphs import LayerOutputs
from .half import narrow, widen
from .head import tensor_view
from .kernel_codes import BLOCK, KERNEL_OPTIONS, NIBBLES, activations
from .kernels import INT8_ACTIVATIONS, dot_row, dot_rows4
from .kv_cache import KVCache
from .rope import rope_angles
from .spec import ModelSpec
from .tensor_names import layer_names, swiglu_names

_0 = np.float32(0.0)
_1 = np.float32(1.0)
QK_NORM_MODES = {"none": 0, "head": 1, "full": 2}
PARALLEL_MIN_WEIGHTS = 1 << 18  # a smaller matrix is not worth a fork/join (~20 µs) on the decode path
ATTEND_SPLIT_ROWS = 64  # on several threads, attention over this many cached rows or more takes two threads
NEVER = None  # one thread: a type of its own, so that the kernel is compiled without the parallel GEMV


class Linear(NamedTuple):
    """A matrix [out, in] as the kernels read it: `w` [out, groups, group] (float32, or uint8 codes q + zero) or
    [out, groups, blocks, 16] (4-bit codes, inputs in `quant.nbits_order`), `scale` [out, groups], `zero` (128
    for 8-bit codes, 0 for floats and 4-bit codes, whose offset the int4 row dots take off), `bias` [out]
    (empty: none)."""

    w: np.ndarray
    scale: np.ndarray
    zero: float
    bias: np.ndarray


class LayerConfig(NamedTuple):
    """The spec's numbers one layer's kernel needs (run-time values: one compiled kernel for every layer)."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    eps: float
    scale: float  # on q·k
    qk_norm: int  # QK_NORM_MODES
    residual: float
    moe: bool
    shared: bool
    shared_gate: bool
    parallel_min: int | None  # GEMVs of this many weights or more are spread over the threads (one thread: None)


class LayerTensors(NamedTuple):
    """Views over the dense file of one layer's tensors; absent ones are empty (e.g. q/k norms, biases)."""

    attn_norm: np.ndarray
    wq: Linear
    wk: Linear
    wv: Linear
    wo: Linear
    q_norm: np.ndarray
    k_norm: np.ndarray
    ffn_norm: np.ndarray
    gate: Linear  # the dense SwiGLU, or the shared expert's (empty in an MoE layer without one)
    up: Linear
    down: Linear
    router: Linear  # MoE layers
    shared_gate: Linear


def _readonly(array: np.ndarray) -> np.ndarray:
    """Read-only, like the views over the mapped file: numba types read-only arrays apart, and one type
    for every tensor means one compiled kernel per bundle (each extra specialisation costs seconds)."""
    array.setflags(write=False)
    return array


_EMPTY = _readonly(np.zeros(0, dtype=np.float32))


def _no_linear(dtype, rank: int = 3) -> Linear:
    """An absent matrix, of the dtype and rank the present ones have."""
    return Linear(_readonly(np.zeros((0,) + (1,) * (rank - 1), dtype)), _readonly(np.zeros((0, 1), np.float32)),
                  0.0, _EMPTY)


def _linear(dense: np.ndarray, manifest: Manifest, name: str, bias: str | None) -> Linear:
    w = tensor_view(dense, manifest, name)
    b = tensor_view(dense, manifest, bias) if bias else _EMPTY
    if w.dtype != np.uint8:
        return Linear(w.reshape(w.shape[0], 1, w.shape[1]), _readonly(np.ones((w.shape[0], 1), np.float32)), 0.0, b)
    scale = tensor_view(dense, manifest, f"{name}_scale")  # [out, in/b]
    if NBITS[manifest.dense_linears] == 4:  # codes [out, in/b, b/2] as int4 blocks of 32 inputs: 16 bytes each
        return Linear(w.reshape(w.shape[0], w.shape[1], -1, NIBBLES), scale, 0.0, b)
    return Linear(w, scale, float(UNSIGNED_ZERO), b)  # 8 bits: codes q + 128 [out, in/b, b]


def layer_tensors(dense: np.ndarray, manifest: Manifest, layer: int) -> LayerTensors:
    """Views over the dense file of everything layer `layer`'s graph reads."""
    spec, n = manifest.spec, layer_names(layer)
    bits = NBITS.get(manifest.dense_linears)
    codes, rank = (np.uint8, 4 if bits == 4 else 3) if bits else (np.float32, 3)

    def lin(name, bias=None, dtype=codes, rank=rank):
        return _linear(dense, manifest, name, bias) if name in manifest.dense_tensors else _no_linear(dtype, rank)

    def vec(name):
        return tensor_view(dense, manifest, name) if name in manifest.dense_tensors else _EMPTY

    bias = spec.attention_bias
    gate, up, down = swiglu_names(n.ffn if spec.layer_kinds[layer] == "dense" else n.shared)
    return LayerTensors(
        attn_norm=vec(n.attn_norm), wq=lin(n.projection("wq"), n.bias("wq") if bias else None),
        wk=lin(n.projection("wk"), n.bias("wk") if bias else None),
        wv=lin(n.projection("wv"), n.bias("wv") if bias else None), wo=lin(n.projection("wo")),
        q_norm=vec(n.q_norm), k_norm=vec(n.k_norm), ffn_norm=vec(n.ffn_norm),
        gate=lin(gate), up=lin(up), down=lin(down),
        router=lin(n.router, dtype=np.float32, rank=3), shared_gate=lin(n.shared_gate, dtype=np.float32, rank=3))


def layer_config(spec: ModelSpec, layer: int, threads: int = 1) -> LayerConfig:
    """Layer `layer`'s `LayerConfig`."""
    moe = spec.layer_kinds[layer] == "moe"
    return LayerConfig(spec.n_heads, spec.n_kv_heads, spec.head_dim, float(spec.norm_eps), float(spec.scale),
                       QK_NORM_MODES[spec.qk_norm], float(spec.residual_multiplier), moe,
                       moe and spec.routing.shared_expert_size > 0, moe and spec.routing.shared_expert_gate,
                       PARALLEL_MIN_WEIGHTS if threads > 1 else NEVER)


@njit(cache=True, error_model="numpy", fastmath=True)
def _rmsnorm(x, weight, eps, out):
    ss = _0
    for j in range(x.shape[0]):
        ss += x[j] * x[j]
    inv = _1 / np.sqrt(ss / x.shape[0] + np.float32(eps))
    for j in range(x.shape[0]):
        out[j] = x[j] * inv * weight[j]


@njit(cache=True, error_model="numpy", fastmath=True)
def _rows4(lin, xa, out, r, q):
    """Rows r, r + q, r + 2q and r + 3q of `lin` (a page apart: four memory streams, `kernels.dot_rows4`)."""
    out[r], out[r + q], out[r + 2 * q], out[r + 3 * q] = dot_rows4(lin.w, lin.scale, xa, r, r + q, r + 2 * q, r + 3 * q)


@njit(cache=True, error_model="numpy", fastmath=True, parallel=True)
def _rows4_parallel(a, b, c, xa, out_a, out_b, out_c, qa, qb, qc):
    """The four-row passes of up to three matrices on one input spread over the threads in one fork/join
    (a fork/join costs ~9 µs: q, k and v take one, not three)."""
    for i in prange(qa + qb + qc):
        if i < qa:
            _rows4(a, xa, out_a, i, qa)
        elif i < qa + qb:
            _rows4(b, xa, out_b, i - qa, qb)
        else:
            _rows4(c, xa, out_c, i - qa - qb, qc)


def _subtract_zero(lin, xa, out):
    """Codes stored q + zero, dotted with float activations x2: Σ (code − zero)·x·s = Σ code·x·s − zero·Σ_g s·Σx.
    (Quantized activations: nothing to do, the integer dots take the zero off themselves.)"""


@overload(_subtract_zero, jit_options=KERNEL_OPTIONS)
def _subtract_zero_overload(lin, xa, out):
    if isinstance(xa, types.BaseTuple):
        return lambda lin, xa, out: None

    def float_activations(lin, xa, out):
        zero = np.float32(lin.zero)
        if zero == _0:
            return
        groups, group = xa.shape
        shift = np.empty(groups, dtype=np.float32)
        for g in range(groups):
            total = _0
            for j in range(group):
                total += xa[g, j]
            shift[g] = zero * total
        for r in range(out.shape[0]):
            acc = _0
            for g in range(groups):
                acc += shift[g] * lin.scale[r, g]
            out[r] -= acc
    return float_activations


def linear_input(lin, x, quantized):
    """x [in] as `lin`'s row dots take it (`kernel_codes.activations`): for 4-bit codes in `quant.nbits_order`."""


@overload(linear_input, jit_options=KERNEL_OPTIONS)
def _linear_input(lin, x, quantized):
    if lin.types[lin.fields.index("w")].ndim == 4:
        def four_bit(lin, x, quantized):
            ordered = np.empty_like(x)
            half = BLOCK // 2
            for b in range(x.shape[0] // BLOCK):
                for j in range(half):
                    ordered[b * BLOCK + j] = x[b * BLOCK + 2 * j]
                    ordered[b * BLOCK + half + j] = x[b * BLOCK + 2 * j + 1]
            return activations(ordered, lin.w.shape[2] * BLOCK, quantized)
        return four_bit
    return lambda lin, x, quantized: activations(x, lin.w.shape[2], quantized)


@njit(cache=True, error_model="numpy", fastmath=True)
def _finish(lin, xa, out):
    """The rows past `lin`'s four-row passes, then its zero-point correction and bias."""
    rows = lin.w.shape[0]
    for r in range(rows // 4 * 4, rows):
        out[r] = dot_row(lin.w, lin.scale, xa, r)
    _subtract_zero(lin, xa, out)
    if lin.bias.shape[0]:
        for r in range(rows):
            out[r] += lin.bias[r]


@njit(cache=True, error_model="numpy", fastmath=True)
def _apply_each(a, b, c, count, xa, out_a, out_b, out_c, parallel_min):
    """out_a = A x (+ bias), then as many of out_b = B x and out_c = C x as `count` (1-3) says, for one input x
    as the row dots take it (`linear_input`: float32 [groups, group] or int8 blocks), four rows a page apart
    per pass; when the matrices hold `parallel_min` weights or more together, their passes are split over the
    threads in one fork/join."""
    qa = a.w.shape[0] // 4
    qb = b.w.shape[0] // 4 if count > 1 else 0
    qc = c.w.shape[0] // 4 if count > 2 else 0
    weights = a.w.size + (b.w.size if count > 1 else 0) + (c.w.size if count > 2 else 0)
    if parallel_min is not None and weights * (2 if a.w.ndim == 4 else 1) >= parallel_min:
        _rows4_parallel(a, b, c, xa, out_a, out_b, out_c, qa, qb, qc)
    else:
        for r in range(qa):
            _rows4(a, xa, out_a, r, qa)
        for r in range(qb):
            _rows4(b, xa, out_b, r, qb)
        for r in range(qc):
            _rows4(c, xa, out_c, r, qc)
    _finish(a, xa, out_a)
    if count > 1:
        _finish(b, xa, out_b)
    if count > 2:
        _finish(c, xa, out_c)


@njit(cache=True, error_model="numpy", fastmath=True)
def _apply(lin, xa, out, parallel_min):
    """out = W x (+ b): `_apply_each` of one matrix."""
    _apply_each(lin, lin, lin, 1, xa, out, out, out, parallel_min)


@njit(cache=True, error_model="numpy", fastmath=True)
def _linear_of(lin, x, out, parallel_min, quantized):
    """`_apply` to x [in] float32, its activations quantized first when `quantized` (see `_apply`)."""
    _apply(lin, linear_input(lin, x, quantized), out, parallel_min)


@njit(cache=True, error_model="numpy", fastmath=True)
def _swiglu(t, x, out, parallel_min, quantized):
    inner = t.gate.w.shape[0]
    g = np.empty(inner, dtype=np.float32)
    u = np.empty(inner, dtype=np.float32)
    xa = linear_input(t.gate, x, quantized)  # once for gate and up
    _apply_each(t.gate, t.up, t.up, 2, xa, g, u, u, parallel_min)
    for r in range(inner):
        g[r] = g[r] / (_1 + fast_exp(-g[r])) * u[r]
    _linear_of(t.down, g, out, parallel_min, quantized)


@njit(cache=True, error_model="numpy", fastmath=True)
def _rope(x, heads, hd, cos, sin):
    half = hd // 2
    for h in range(heads):
        for i in range(half):
            a = x[h * hd + i]
            b = x[h * hd + i + half]
            x[h * hd + i] = a * cos[i] - b * sin[i]
            x[h * hd + i + half] = b * cos[i] + a * sin[i]


@njit(cache=True, error_model="numpy", fastmath=True, inline="always")
def _scores_of_row(q, kj, j, scores, group, hd, scale):
    """scores[h, j] = q_h · kj[kv(h)] · scale for every head (kj [K, Hd]: a cached row, float32 or float16 bits)."""
    for kv in range(kj.shape[0]):  # heads by kv head: no division per row and head
        for g in range(group):
            h = kv * group + g
            s = _0
            for d in range(hd):
                s += q[h * hd + d] * widen(kj[kv, d])
            scores[h, j] = s * scale


@njit(cache=True, error_model="numpy", fastmath=True, inline="always")
def _add_row(out, vj, j, scores, group, hd):
    """out_h += scores[h, j] · vj[kv(h)] for every head (vj [K, Hd]: a cached row, float32 or float16 bits)."""
    for kv in range(vj.shape[0]):
        for g in range(group):
            h = kv * group + g
            p = scores[h, j]
            for d in range(hd):
                out[h * hd + d] += p * widen(vj[kv, d])


@njit(cache=True, error_model="numpy", fastmath=True)
def _attend_rows(q, k_new, v_new, k_cache, v_cache, r0, r1, with_new, cfg, out, stats):
    """Attention of q over cached rows r0..r1 [S, K, Hd] (and, `with_new`, the token's own k/v rows [K, Hd]), not
    yet normalised: out_h = Σ_j e^(s_hj − m_h) v_j and stats[h] = (m_h, Σ_j e^(s_hj − m_h)), for `_attend` to
    combine with other row ranges'. Reads the cache in memory order: cached row j of every kv head, then row j + 1
    (kv head by kv head, each head's rows sat a row of every head apart: measured 1.3x slower at 40 cached rows,
    1.8x at 170, 3x at 1000; split into two halves of every row, 4x slower), asking for the rows ahead of the
    one it reads (`cache_lines`)."""
    hd, heads, kvh = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    group = heads // kvh
    scale = np.float32(cfg.scale)
    n = r1 - r0 + (1 if with_new else 0)
    scores = np.empty((heads, n), dtype=np.float32)  # head by head: the softmax reads it contiguously
    ahead = rows_ahead(k_cache)  # rows asked for ahead of the one read (V's rows are K's size)
    for j in range(r0, min(r0 + ahead, r1)):
        prefetch_row(k_cache, j)
    for j in range(r1 - r0):
        if r0 + j + ahead < r1:
            prefetch_row(k_cache, r0 + j + ahead)
        _scores_of_row(q, k_cache[r0 + j], j, scores, group, hd, scale)
    if with_new:
        _scores_of_row(q, k_new, n - 1, scores, group, hd, scale)
    for j in range(r0, min(r0 + ahead, r1)):
        prefetch_row(v_cache, j)
    for h in range(heads):
        row = scores[h]
        top = row[0]
        for j in range(n):
            top = max(top, row[j])
        total = _0
        for j in range(n):
            e = fast_exp(row[j] - top)
            row[j] = e
            total += e
        stats[h, 0] = top
        stats[h, 1] = total
    for i in range(heads * hd):
        out[i] = _0
    for j in range(r1 - r0):
        if r0 + j + ahead < r1:
            prefetch_row(v_cache, r0 + j + ahead)
        _add_row(out, v_cache[r0 + j], j, scores, group, hd)
    if with_new:
        _add_row(out, v_new, n - 1, scores, group, hd)


@njit(cache=True, error_model="numpy", fastmath=True, parallel=True)
def _attend_halves(q, k_new, v_new, k_cache, v_cache, past, cfg, parts, stats):
    """`_attend_rows` of the first half of the cached rows and of the second with the token's own, one per thread
    (a fork/join: attention at two threads reads twice the bytes a second; split by kv heads it would not)."""
    half = past // 2
    for t in prange(2):
        _attend_rows(q, k_new, v_new, k_cache, v_cache, t * half, half + t * (past - half), t == 1, cfg, parts[t],
                     stats[t])


@njit(cache=True, error_model="numpy", fastmath=True)
def _attend(q, k_new, v_new, k_cache, v_cache, past, cfg, out):
    """out [H·Hd] = softmax(q·Kᵀ·scale) V over the `past` cached rows [S, K, Hd] and the token's own k/v rows
    [K, Hd] (float32, as computed: a float16 cache rounds what it keeps, not what this step attends to, as in the
    layer graphs). On several threads a cache of `ATTEND_SPLIT_ROWS` rows or more is split in two row ranges, whose
    partial sums are combined by their maxima (as split-K "flash decoding" does)."""
    heads, hd = cfg.n_heads, cfg.head_dim
    parts = np.empty((2, heads * hd), dtype=np.float32)
    stats = np.empty((2, heads, 2), dtype=np.float32)
    if cfg.parallel_min is not None and past >= ATTEND_SPLIT_ROWS:
        _attend_halves(q, k_new, v_new, k_cache, v_cache, past, cfg, parts, stats)
        count = 2
    else:
        _attend_rows(q, k_new, v_new, k_cache, v_cache, 0, past, True, cfg, parts[0], stats[0])
        count = 1
    for h in range(heads):
        top = stats[0, h, 0]
        for t in range(1, count):
            top = max(top, stats[t, h, 0])
        total = _0
        for t in range(count):
            stats[t, h, 0] = fast_exp(stats[t, h, 0] - top)  # each part's weight
            total += stats[t, h, 0] * stats[t, h, 1]
        inv = _1 / total
        for d in range(hd):
            acc = _0
            for t in range(count):
                acc += stats[t, h, 0] * parts[t, h * hd + d]
            out[h * hd + d] = acc * inv


@njit(cache=True, error_model="numpy", fastmath=True)
def decode_layer(x, t, cfg, k_cache, v_cache, pos, cos, sin, hidden_out, ffn_in, router_logits, quantized):
    """One layer's dense part for one token x [D] at position `pos`: writes the new k/v rows into the
    cache [S, K, Hd] (float32, or float16 bits: `half`) at `pos`, `hidden_out` [D] (attention and dense FFN or
    shared expert added), and for an MoE layer `ffn_in` [D] and `router_logits` [E]. `quantized` (None or True,
    8- and 4-bit linears only): the linears' inputs quantized to int8 blocks of 32, as the experts' are
    (`kernels.INT8_ACTIVATIONS`)."""
    d, hd, heads, kvh = x.shape[0], cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    rm = np.float32(cfg.residual)
    xn = np.empty(d, dtype=np.float32)
    _rmsnorm(x, t.attn_norm, cfg.eps, xn)
    q = np.empty(heads * hd, dtype=np.float32)
    k = np.empty(kvh * hd, dtype=np.float32)
    v = np.empty(kvh * hd, dtype=np.float32)
    xa = linear_input(t.wq, xn, quantized)  # once for q, k and v
    _apply_each(t.wq, t.wk, t.wv, 3, xa, q, k, v, cfg.parallel_min)
    if cfg.qk_norm == 2:
        _rmsnorm(q.copy(), t.q_norm, cfg.eps, q)
        _rmsnorm(k.copy(), t.k_norm, cfg.eps, k)
    elif cfg.qk_norm == 1:
        for h in range(heads):
            _rmsnorm(q[h * hd:(h + 1) * hd].copy(), t.q_norm, cfg.eps, q[h * hd:(h + 1) * hd])
        for h in range(kvh):
            _rmsnorm(k[h * hd:(h + 1) * hd].copy(), t.k_norm, cfg.eps, k[h * hd:(h + 1) * hd])
    _rope(q, heads, hd, cos, sin)
    _rope(k, kvh, hd, cos, sin)
    for h in range(kvh):  # element by element: an array assignment compiles a shape check costing seconds
        for j in range(hd):
            k_cache[pos, h, j] = narrow(k[h * hd + j], k_cache)
            v_cache[pos, h, j] = narrow(v[h * hd + j], v_cache)
    attended = np.empty(heads * hd, dtype=np.float32)
    _attend(q, k.reshape(kvh, hd), v.reshape(kvh, hd), k_cache, v_cache, pos, cfg, attended)
    branch = np.empty(d, dtype=np.float32)
    _linear_of(t.wo, attended, branch, cfg.parallel_min, quantized)
    for j in range(d):
        hidden_out[j] = x[j] + branch[j] * rm
    _rmsnorm(hidden_out, t.ffn_norm, cfg.eps, ffn_in)
    if cfg.moe:
        _linear_of(t.router, ffn_in, router_logits, cfg.parallel_min, None)  # float32 router
    if not cfg.moe or cfg.shared:
        _swiglu(t, ffn_in, branch, cfg.parallel_min, quantized)
        if cfg.shared_gate:
            gate = np.empty(1, dtype=np.float32)
            _linear_of(t.shared_gate, ffn_in, gate, cfg.parallel_min, None)
            s = _1 / (_1 + np.exp(-gate[0]))
            for j in range(d):
                branch[j] *= s
        for j in range(d):
            hidden_out[j] += branch[j] * rm


class DecodeLayers:
    """The dense part of every layer for one token, in numba (the decode path of `forward`).

    `activations` "int8" quantizes the 8- and 4-bit linears' inputs to int8 blocks of 32, as the experts' are
    (integer dots); "float" keeps them float32, like the layer graphs (float32 linears always do).
    """

    def __init__(self, manifest: Manifest, dense: np.ndarray, threads: int = 1, activations: str = "int8"):
        spec = self.spec = manifest.spec
        self.tensors = [layer_tensors(dense, manifest, i) for i in range(spec.n_layers)]
        self.configs = [layer_config(spec, i, threads) for i in range(spec.n_layers)]
        self.n_experts = spec.routing.n_experts if spec.routing else 0
        self.quantized = INT8_ACTIVATIONS if activations == "int8" and _blocks_fit(self.tensors) else None
        self.kernels = [None] * spec.n_layers  # each layer's compiled `decode_layer`, found at its first call

    def tables(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin [Hd/2] of the token's position."""
        cos, sin = rope_angles(self.spec, start, 1)
        return cos[0], sin[0]

    def __call__(self, i: int, hidden: np.ndarray, tables, cache: KVCache) -> LayerOutputs:
        """Layer i on one token hidden [1, D]; writes its k/v rows into the cache."""
        d = hidden.shape[1]
        hidden_out, ffn_in = np.empty((1, d), np.float32), np.empty((1, d), np.float32)
        moe = self.configs[i].moe
        logits = np.empty((1, self.n_experts if moe else 0), np.float32)
        args = (hidden[0], self.tensors[i], self.configs[i], cache.k[i], cache.v[i], cache.length, *tables,
                hidden_out[0], ffn_in[0], logits[0], self.quantized)
        if self.kernels[i] is None:  # numba's dispatcher types a layer's tuples of arrays anew each call: ~10 µs
            self.kernels[i] = decode_layer.compile(tuple(typeof(a, Purpose.argument) for a in args))
        self.kernels[i](*args)
        return LayerOutputs(hidden_out, ffn_in if moe else None, logits if moe else None)


def _blocks_fit(tensors: list[LayerTensors]) -> bool:
    """Whether every linear but the float32 router and shared-expert gate is 4-bit codes or 8-bit ones in groups
    of a multiple of 32 inputs, the blocks the integer dots take."""
    linears = [lin for t in tensors for lin in (t.wq, t.wk, t.wv, t.wo, t.gate, t.up, t.down) if lin.w.shape[0]]
    return all(lin.w.dtype == np.uint8 and (lin.w.ndim == 4 or lin.w.shape[2] % BLOCK == 0) for lin in linears)
