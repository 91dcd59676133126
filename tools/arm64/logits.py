"""The logits `make check-arm64` compares between machines: two prefills and teacher-forced decode steps of
one bundle, on one thread and on two threads with every parallel kernel forced, computed the same way on
x86 (the reference) and on aarch64.

Which kernels run: decode steps from an empty cache are numba alone (`dense_decode.decode_layer`,
`kernels.moe_decode`, the head's `kernels.norm_linear`; with two threads `kernels.moe_decode_parallel`
and `dense_decode._rows4_parallel`). Prompts run the layer graphs in onnxruntime, and their experts in
numba: experts with fewer prompt tokens than `GEMM_FROM` run in `kernels.expert_pairs`, 8 tokens send every
expert fewer, 96 tokens give some expert 24 or more (192 slots over 8 experts: `kernels.dequantize` and
BLAS; the runtime's own threshold, 128 tokens an expert, is more than these bundles' context holds); decode
steps after the 96 read the cache that prompt wrote. The quantization schemes (int8 per channel and per
group, int4, mixed, float experts, float dense linears) each compile their own specialisation, so each
bundle runs its own code.

Each trace runs twice: with float expert activations (`activations="float"`: float kernels only,
held to 1e-4 of the logit range) and with the default int8 activation blocks (the integer-dot kernels). The
second cannot be held as tight: where the two CPUs' float sums differ in the last bit, an activation that
sits on a rounding boundary takes the neighbouring int8 code, and one code step moves the logits by up to
~2e-3 of their range (the same happens on one machine between two summation orders).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moedge.runtime import Model, kernels, moe

SHORT_PROMPT, LONG_PROMPT, DECODE_STEPS = 8, 96, 8
GEMM_FROM = 16  # prompt tokens an expert needs for the dequantize + BLAS path here
THREADS = (1, 2)
TOLERANCE = {"float": 1e-4, "int8": 2e-3}  # of the reference's logit range, per expert activations


def force_parallel(model: Model) -> None:
    """Take the parallel paths a bigger model takes (dense GEMVs over threads, a layer's experts one per thread)."""
    layers = model.weights.decode_layers
    layers.configs = [c._replace(parallel_min=1) for c in layers.configs]
    for layer in model.weights.moe.values():
        layer.decode_kernel = kernels.moe_decode_parallel


def trace(bundle: str | Path, threads: int, activations: str) -> dict[str, np.ndarray]:
    """Logits [tokens, V] of decode steps from an empty cache, a short prefill, a long one and decode steps
    after it, with `activations` ("float" or "int8") into the experts."""
    model = Model.load(bundle, threads=threads, activations=activations)
    moe.PREFILL_GEMM_MIN_TOKENS = GEMM_FROM
    if threads > 1:
        force_parallel(model)
    rng = np.random.default_rng(0)
    vocab = model.spec.vocab_size

    def steps(session):
        return np.stack([session.decode(int(t)) for t in rng.integers(0, vocab, DECODE_STEPS)])

    name = f"{activations}/{threads}t"
    out = {f"{name}_decode": steps(model.session()),
           f"{name}_prefill{SHORT_PROMPT}": model.session().prefill(rng.integers(0, vocab, SHORT_PROMPT))}
    session = model.session()
    out[f"{name}_prefill{LONG_PROMPT}"] = session.prefill(rng.integers(0, vocab, LONG_PROMPT))
    out[f"{name}_decode_after_prefill"] = steps(session)
    return out



def worst_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| as a share of want's range (max - min); inf when a shape differs or a value is not finite."""
    if got.shape != want.shape or not np.isfinite(got).all():
        return float("inf")
    return float(np.abs(got - want).max() / (want.max() - want.min()))
