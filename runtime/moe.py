"""One MoE layer on the CPU: route, then run the selected experts with the numba kernels.

Decode (one token) computes its k experts in one kernel call. Prefill groups the tokens by
expert; an expert chosen by at least `PREFILL_GEMM_MIN_TOKENS` tokens is dequantized once
and multiplied with BLAS, the others go through one kernel call (`kernels.expert_pairs`) that spreads
them over the threads and runs each one's tokens through the decode rows.
The kernels quantize int8 and int4 experts' activations to int8 blocks of 32 (`ACTIVATIONS`: "int8" or "float").
"""

from __future__ import annotations

import numpy as np

from ..quant import fake_quantize_activations
from . import kernels
from .expert_store import ExpertStore
from .kernel_q8 import BLOCK as ACTIVATION_BLOCK
from .routing import route
from .spec import ModelSpec

# An expert with fewer prompt tokens runs them through the decode kernel's rows (int8 activations: measured
# faster than dequantize + BLAS up to ~128 tokens an expert at one thread: mixtral-shape, 128-token prompt,
# experts 442 ms with the old threshold of 16 against 204-263 ms; equal at 128 tokens an expert)
PREFILL_GEMM_MIN_TOKENS = 128
PARALLEL_MIN_BYTES = 1 << 20  # a layer's k experts below this decode on one thread (fork/join costs ~20 µs)
# "int8": int8 and int4 experts take their activations quantized to int8 blocks of 32 (the fast kernels,
# `quant.quantize_activations`); "float": float32 activations, a float model with the dequantized weights
# up to rounding (the exact reference). Float32 experts, and groups that are not multiples of 32, stay float.
ACTIVATIONS = ("int8", "float")


class ExpertScratch:
    """Buffers the expert kernels write into, one set per session (never shared between threads)."""

    def __init__(self, spec: ModelSpec):
        self.hidden = np.empty((spec.routing.top_k, spec.expert_intermediate_size), dtype=np.float32)  # [k, I]
        self.dequantized: dict[int, np.ndarray] = {}  # gate/up/down for prefill, allocated on first use


class MoELayer:
    """The routed experts of layer `index` (the shared expert runs in the layer's ONNX graph)."""

    def __init__(self, index: int, spec: ModelSpec, store: ExpertStore, threads: int, activations: str = "int8"):
        self.index = index
        self.routing = spec.routing
        self.store = store
        self.bytes = store.layers[index]  # where the kernels find this layer's experts
        self.d, self.i = spec.hidden_size, spec.expert_intermediate_size
        self.residual_multiplier = np.float32(spec.residual_multiplier)
        # one thread streams the experts one after another; more threads take one expert each, when the
        # k experts are big enough to pay for the fork/join (a small model decodes faster on one thread)
        k_bytes = spec.routing.top_k * max(store.spans[index])
        parallel = threads > 1 and k_bytes >= PARALLEL_MIN_BYTES
        self.decode_kernel = kernels.moe_decode_parallel if parallel else kernels.moe_decode
        b = self.bytes
        blocks = b.group_hidden % ACTIVATION_BLOCK == 0 and b.group_inner % ACTIVATION_BLOCK == 0
        integer = activations == "int8" and b.weights.dtype != np.float32 and blocks
        self.quantized = kernels.INT8_ACTIVATIONS if integer else None  # the kernels' `quantized` argument

    def route(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Route router logits [T, E] to expert ids and weights [T, k], and count the use."""
        ids, weights = route(logits, self.routing)
        self.store.touch(self.index, ids)
        return ids, weights

    def experts(self, x: np.ndarray, ids: np.ndarray, weights: np.ndarray, scratch: ExpertScratch) -> np.ndarray:
        """The layer's routed-expert branch [T, D] for the normed input x [T, D]: the weighted sum of the
        selected experts, times the residual multiplier, ready to add to the residual stream."""
        out = self._weighted_sum(x, ids, weights, scratch)
        if self.residual_multiplier != 1.0:
            out *= self.residual_multiplier
        return out

    def _weighted_sum(self, x: np.ndarray, ids: np.ndarray, weights: np.ndarray, scratch: ExpertScratch) -> np.ndarray:
        if x.shape[0] == 1:  # decode: the kernel writes every element
            out = np.empty_like(x)
            with self.store.using():
                if self.decode_kernel is kernels.moe_decode and self.store.budget_bytes is not None:
                    self._decode_as_read(x[0], ids[0], weights[0], scratch, out[0])
                else:
                    self.store.hold(self.index, ids[0])
                    self.decode_kernel(x[0], self.bytes, ids[0], weights[0], scratch.hidden, out[0], self.quantized)
            return out
        t, k = ids.shape
        flat = ids.ravel()
        order = np.argsort(flat, kind="stable")  # the (token, slot) pairs p = token·k + slot, grouped by expert
        experts, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
        y = np.empty((t * k, self.d), dtype=np.float32)  # each pair's expert output
        hidden = np.empty((t * k, self.i), dtype=np.float32)
        with self.store.using():
            batch = self.store.capacity or len(experts)  # under a budget, as many experts as may be held at once
            for lo in range(0, len(experts), batch):
                part = slice(lo, lo + batch)
                self.store.hold(self.index, experts[part])
                self._pairs(x, k, order, experts[part], starts[part], counts[part], hidden, y, scratch)
        return np.einsum("tk,tkd->td", weights, y.reshape(t, k, self.d))

    def _decode_as_read(self, x: np.ndarray, ids: np.ndarray, weights: np.ndarray, scratch: ExpertScratch,
                        out: np.ndarray) -> None:
        """One token's experts under a budget: those held first while the others are read, each then as soon as
        its bytes are in (the same result as one `moe_decode` call)."""
        self.store.hold(self.index, ids, wait=False)
        first = 0
        for j, e in enumerate(ids):
            if not self.store.ready(self.index, int(e), block=False):
                if j > first:
                    kernels.moe_decode_from(x, self.bytes, ids[:j], weights[:j], scratch.hidden, out, self.quantized,
                                            first)
                    first = j
                self.store.ready(self.index, int(e))
        kernels.moe_decode_from(x, self.bytes, ids, weights, scratch.hidden, out, self.quantized, first)

    def _pairs(self, x: np.ndarray, k: int, order: np.ndarray, experts: np.ndarray, starts: np.ndarray,
               counts: np.ndarray, hidden: np.ndarray, y: np.ndarray, scratch: ExpertScratch) -> None:
        """y[p] = the output of pair p's expert, for the pairs of `experts` (consecutive in `order`, expert g's
        at order[starts[g]:starts[g] + counts[g]])."""
        run = order[starts[0]:starts[-1] + counts[-1]]
        few = counts < PREFILL_GEMM_MIN_TOKENS  # in one kernel call, the experts spread over the threads
        kernels.expert_pairs(x, self.bytes, experts[few], np.concatenate([[0], np.cumsum(counts[few])]),
                             run[np.repeat(few, counts)], hidden, y, self.quantized)
        for expert, s, c in zip(experts[~few], starts[~few], counts[~few], strict=True):  # many tokens: BLAS
            rows = order[s:s + c]
            y[rows] = self._expert_gemm(int(expert), x[rows // k], scratch)

    def _expert_gemm(self, expert: int, x: np.ndarray, scratch: ExpertScratch) -> np.ndarray:
        """One expert on many tokens x [n, D] → [n, D]: its matrices dequantized, then multiplied with BLAS."""
        gate, up, down = (self._dequantize(expert, part, scratch) for part in (kernels.GATE, kernels.UP, kernels.DOWN))
        x = self._as_kernels_see(x)
        h = x @ gate.T
        h = h / (1.0 + np.exp(-h)) * (x @ up.T)
        return self._as_kernels_see(h) @ down.T

    def _as_kernels_see(self, v: np.ndarray) -> np.ndarray:
        """v as the kernels take it (int8 blocks with int8 activations): a token gives the same numbers
        whichever path its expert takes."""
        return v if self.quantized is None else fake_quantize_activations(v)

    def _dequantize(self, expert: int, part: int, scratch: ExpertScratch) -> np.ndarray:
        if part not in scratch.dequantized:  # allocated once: fresh 2 MB arrays would page-fault on every write
            shape = (self.d, self.i) if part == kernels.DOWN else (self.i, self.d)
            scratch.dequantized[part] = np.empty(shape, dtype=np.float32)
        out = scratch.dequantized[part]
        kernels.dequantize(self.bytes, expert, part, out)
        return out
