"""The numba kernels a run calls from Python, each with the argument types it passes.

numba compiles a kernel once per tuple of argument types (and keeps the machine code in its cache on disk,
see `numba_cache`); the kernels they call inside are compiled with them. So these calls are what a model's
run compiles, or loads from the cache: `model_calls` lists them for a loaded model, `warmup` for every kind
of bundle the exporter writes, and `jit_cache` checks or compiles them ahead of a run. A test records the
calls real runs make and holds this list to them.
"""

from __future__ import annotations

from typing import NamedTuple

from numba import typeof, types
from numba.core.dispatcher import Dispatcher
from numba.core.typing.typeof import Purpose

from . import decode_step, dense_decode, expert_store, half, kernels, routing
from .kv_cache import KV_DTYPES
from .weights import Weights

F32 = types.float32
INT = types.int64  # a Python int (an expert, a position, a clock)
BOOL = types.boolean


def array(dtype: types.Type, ndim: int) -> types.Array:
    """A writable C-contiguous array type (the buffers the runtime allocates)."""
    return types.Array(dtype, ndim, "C")


class KernelCall(NamedTuple):
    """One kernel and the argument types of a call to it."""

    kernel: Dispatcher
    args: tuple[types.Type, ...]

    @property
    def name(self) -> str:
        return self.kernel.py_func.__name__


def argument_type(value) -> types.Type:
    """The type numba gives `value` as a kernel's argument (a read-only array is a type of its own)."""
    return typeof(value, Purpose.argument)


def routing_calls() -> list[KernelCall]:
    """What routing a prompt or a token calls, and counting its experts (`routing.route`, `ExpertStore.touch`)."""
    logits, ids, gates = array(F32, 2), array(INT, 2), array(F32, 2)
    flags, counts = array(BOOL, 1), array(INT, 1)
    return [KernelCall(routing._route, (logits, INT, BOOL, BOOL, types.float64, ids, gates)),
            KernelCall(expert_store._count, (counts, flags, flags, counts, INT, ids))]


def budget_calls(read_ahead: bool) -> list[KernelCall]:
    """What an expert budget adds (releasing the least recently used), and reading ahead under it."""
    flags, counts = array(BOOL, 1), array(INT, 1)
    calls = [KernelCall(expert_store._release_order, (flags, counts, counts, INT, INT, INT, INT))]
    if read_ahead:
        calls.append(KernelCall(expert_store._guess, (flags, flags, counts, INT, array(INT, 2))))
    return calls


def expert_calls(layer_bytes: types.Type, quantized: types.Type, decode_kernel: Dispatcher,
                 long_prompts: bool = True) -> list[KernelCall]:
    """One MoE layer's expert kernels (`moe.MoELayer`) for its `ExpertBytes` type and `quantized` argument's:
    decode (`decode_kernel`), a few prompt tokens per expert, and (`long_prompts`) an expert that
    `PREFILL_GEMM_MIN_TOKENS` or more prompt tokens share (dequantized)."""
    vector, matrix, ints = array(F32, 1), array(F32, 2), array(INT, 1)
    first = (INT,) if decode_kernel is kernels.moe_decode_from else ()  # the expert it goes on from
    calls = [KernelCall(decode_kernel, (vector, layer_bytes, ints, vector, matrix, vector, quantized, *first)),
             KernelCall(kernels.expert_pairs, (matrix, layer_bytes, ints, ints, ints, matrix, matrix, quantized))]
    return calls + [KernelCall(kernels.dequantize, (layer_bytes, INT, INT, matrix))] if long_prompts else calls


def cache_element(kv_dtype: str) -> types.Type:
    """What a KV cache of this dtype ("float32", "float16") holds, as numba types it (`kv_cache.KV_DTYPES`)."""
    return typeof(KV_DTYPES[kv_dtype](0))


def decode_calls(tensors: types.Type, config: types.Type, quantized: types.Type, kv_dtype: str) -> list[KernelCall]:
    """The dense part of one layer for one token (`dense_decode.DecodeLayers`) beside a KV cache of `kv_dtype`."""
    vector, cache = array(F32, 1), array(cache_element(kv_dtype), 3)
    return [KernelCall(dense_decode.decode_layer, (vector, tensors, config, cache, cache, INT, vector, vector,
                                                   vector, vector, vector, quantized))]


def step_calls(tensors: types.Type, config: types.Type, layer_bytes: types.Type, parallel: bool,
               dense_quantized: types.Type, expert_quantized: types.Type, kv_dtype: str) -> list[KernelCall]:
    """Every layer for one token in one call (`decode_step.DecodeStep`) beside a KV cache of `kv_dtype`, and the
    typed lists it takes."""
    vector, matrix, cache = array(F32, 1), array(F32, 2), array(cache_element(kv_dtype), 4)
    ids, counts, flags = array(INT, 2), array(INT, 2), array(BOOL, 2)
    lists = [types.ListType(t) for t in (tensors, config, layer_bytes)]
    step = KernelCall(decode_step.decode_layers, (
        vector, INT, BOOL, *lists[:2], cache, cache, INT, vector, vector, lists[2],
        array(BOOL, 1) if parallel else types.none, INT, BOOL, BOOL, types.float64, F32, counts, flags, flags, counts,
        flags, flags, BOOL, INT, vector, vector, matrix, ids, matrix, matrix, vector, dense_quantized,
        expert_quantized))
    return [step] + [call for t, typed in zip((tensors, config, layer_bytes), lists, strict=True)
                     for call in (KernelCall(decode_step._list_of, (t,)), KernelCall(decode_step._append, (typed, t)))]


def cache_calls() -> list[KernelCall]:
    """A float16 KV cache's past rows widened for the layer graphs (`kv_cache.KVCache.past`)."""
    return [KernelCall(half.to_float32, (array(types.uint16, 3),))]


def head_calls(norm: types.Type, weight: types.Type, scale: types.Type, quantized: types.Type) -> list[KernelCall]:
    """The LM head (`head.Head.run`)."""
    return [KernelCall(kernels.norm_linear, (array(F32, 2), norm, F32, weight, scale, array(F32, 2), quantized))]


def model_calls(weights: Weights, long_prompts: bool = True) -> list[KernelCall]:
    """Every call a run of this loaded model may make (a prompt, decode steps), each once; without
    `long_prompts`, those of prompts shorter than `moe.PREFILL_GEMM_MIN_TOKENS` tokens."""
    head = weights.head
    calls = head_calls(argument_type(head.norm), argument_type(head.weight), argument_type(head.scale),
                       argument_type(head.quantized))
    if isinstance(weights.decode_layers, dense_decode.DecodeLayers):
        layers = weights.decode_layers
        calls += [call for t, c in zip(layers.tensors, layers.configs, strict=True)
                  for call in decode_calls(argument_type(t), argument_type(c), argument_type(layers.quantized),
                                           weights.kv_dtype)]
    if weights.kv_dtype == "float16":
        calls += cache_calls()
    if weights.decode_step is not None:
        step, layers = weights.decode_step, weights.decode_layers
        calls += step_calls(argument_type(layers.tensors[0]), argument_type(layers.configs[0]),
                            argument_type(step.views[0]), step.parallel is not None,
                            argument_type(layers.quantized), argument_type(step.expert_quantized), weights.kv_dtype)
    if weights.experts is not None:
        calls += routing_calls()
        if weights.experts.budget_bytes is not None:
            calls += budget_calls(weights.may_read_ahead)
        budget = weights.experts.budget_bytes is not None
        calls += [call for layer in weights.moe.values()
                  for call in expert_calls(argument_type(layer.bytes), argument_type(layer.quantized),
                                           _decode_kernel(layer.decode_kernel, budget), long_prompts)]
    return unique(calls)


def _decode_kernel(kernel: Dispatcher, budget: bool) -> Dispatcher:
    """The kernel a layer decodes with: on one thread under an expert budget, `moe_decode_from` (`moe.MoELayer`
    goes on expert by expert as their reads land)."""
    return kernels.moe_decode_from if budget and kernel.py_func is kernels.moe_decode.py_func else kernel


def unique(calls: list[KernelCall]) -> list[KernelCall]:
    """`calls` without repeats, in order."""
    return list(dict.fromkeys(calls))
