"""The kernel calls of every kind of bundle the exporter writes, for compiling them at install time.

No bundle is needed: each kind's arguments are built by the runtime's own constructors (`layer_bytes`,
`layer_tensors`, `layer_config`) over a few zero bytes, so their numba types are those a real bundle of
that kind gives. `moedge warmup` (run by `make setup`) compiles them into numba's cache; a test holds
them to the calls real bundles of each kind make.
"""

from __future__ import annotations

import numpy as np
from numba import types

from . import kernel_calls
from .bundle import EXPERT_TENSORS, PAGE, ExpertLayout, ExpertsIndex, Manifest, TensorEntry
from .dense_decode import layer_config, layer_tensors
from .expert_store import layer_bytes
from .kernel_calls import KernelCall, argument_type
from .kernels import INT8_ACTIVATIONS, moe_decode, moe_decode_from, moe_decode_parallel
from .kv_cache import default_dtype
from .spec import ModelSpec, RoutingSpec

# The experts' schemes of each kind (quant.SCHEMES; "mixed": int4 with some int8) and whether the kernels
# quantize their activations (`moe.MoELayer`: int8 and int4 experts in groups of 32 do).
EXPERT_KINDS = {"int8": (("int8",), True), "int4": (("int4",), True), "mixed": (("int4", "int8"), True),
                "float32": (("float32",), False)}
DENSE_LINEARS = ("int8", "int4", "float32")  # the attention/dense-FFN matrices: int8 codes (default), 4-bit
# ones (--dense-bits 4) or --float-dense
# The dense linears beside each kind of experts in what `moedge export` writes (--float-experts: all float32; int8
# experts: --float-dense or not; int4: also --dense-bits 4)
DENSE_BESIDE = {"int8": ("int8", "float32"), "int4": DENSE_LINEARS, "mixed": DENSE_LINEARS, "float32": ("float32",)}
HEADS = (np.int8, np.uint8, np.float32)  # the LM head: int8, int4 (--dense-bits 4) or float32 (--float-experts)
GROUP = 32
SPEC = ModelSpec(vocab_size=GROUP, hidden_size=GROUP, n_layers=1, n_heads=1, n_kv_heads=1, head_dim=GROUP,
                 intermediate_size=GROUP, layer_kinds=("moe",), expert_intermediate_size=GROUP,
                 routing=RoutingSpec(n_experts=2, top_k=1))


def _readonly(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros seen read-only, like a view over the mapped bundle."""
    array = np.zeros(shape, dtype)
    array.setflags(write=False)
    return array


def _expert_types(schemes: tuple[str, ...], quantized: bool) -> tuple[types.Type, types.Type]:
    """The types of a layer's `ExpertBytes` with experts of these schemes and of the kernels' `quantized`."""
    entry = TensorEntry(0, (1,), "float32")
    layouts = {s: ExpertLayout(PAGE, dict.fromkeys(EXPERT_TENSORS, entry)) for s in schemes}
    index = ExpertsIndex(file="", group_size=GROUP, layouts=layouts, schemes={0: schemes},
                         layers={0: (0,) * len(schemes)}, checksums={})
    layer = layer_bytes(bytes(PAGE), index, np.zeros(len(schemes), np.int64), 0, SPEC)
    return argument_type(layer), argument_type(INT8_ACTIVATIONS if quantized else None)


def experts_kind(schemes: tuple[str, ...], quantized: bool, parallel: bool) -> list[KernelCall]:
    """The expert kernels' calls for a layer whose experts have these schemes (at one thread, also the decode
    kernel's under an expert budget)."""
    layer, activations = _expert_types(schemes, quantized)
    if parallel:
        return kernel_calls.expert_calls(layer, activations, moe_decode_parallel)
    budget = kernel_calls.expert_calls(layer, activations, moe_decode_from, long_prompts=False)[:1]
    return kernel_calls.expert_calls(layer, activations, moe_decode) + budget


def _dense_types(linears: str, threads: int) -> tuple[types.Type, types.Type, types.Type]:
    """The types of a layer's `LayerTensors` with int8, int4 or float32 dense linears, of its `LayerConfig` at one
    thread or more (one thread is a type of its own: its kernel leaves the parallel GEMV out) and of the kernel's
    `quantized` (quantized linears take int8 activation blocks)."""
    manifest = Manifest(spec=SPEC, quant_scheme="", group_size=GROUP, dense_linears=linears, layer_graphs=(),
                        head={}, dense_file="", dense_tensors={}, experts=None, tokenizer=None, files={})
    quantized = INT8_ACTIVATIONS if linears != "float32" else None
    return (argument_type(layer_tensors(None, manifest, 0)), argument_type(layer_config(SPEC, 0, threads)),
            argument_type(quantized))


def dense_kind(linears: str, threads: int) -> list[KernelCall]:
    """The dense decode kernel's call for int8, int4 or float32 dense linears, at one thread or more, beside the KV
    cache a run of them has by default."""
    return kernel_calls.decode_calls(*_dense_types(linears, threads), default_dtype("int8", linears))


def step_kind(schemes: tuple[str, ...], quantized: bool, linears: str, threads: int) -> list[KernelCall]:
    """The one-call decode step's (`decode_step`) for experts of these schemes beside these dense linears."""
    tensors, config, dense_quantized = _dense_types(linears, threads)
    layer, expert_quantized = _expert_types(schemes, quantized)
    return kernel_calls.step_calls(tensors, config, layer, threads > 1, dense_quantized, expert_quantized,
                                   default_dtype("int8", linears))


def head_kind(dtype) -> list[KernelCall]:
    """The LM head's call for int8 or int4 (uint8, two codes a byte: both on int8 activation blocks) or float32
    weights."""
    norm, scale = _readonly((GROUP,), np.float32), _readonly((GROUP, 1), np.float32)
    weight = _readonly((GROUP, GROUP // 2 if dtype == np.uint8 else GROUP), dtype)
    quantized = INT8_ACTIVATIONS if dtype != np.float32 else None
    return kernel_calls.head_calls(argument_type(norm), argument_type(weight), argument_type(scale),
                                   argument_type(quantized))


def install_calls() -> list[KernelCall]:
    """The calls of every kind of bundle `moedge export` writes (its flags' combinations), at one thread and
    at several, with and without an expert budget: what a first run would otherwise compile."""
    calls = kernel_calls.routing_calls() + kernel_calls.budget_calls(read_ahead=True) + kernel_calls.cache_calls()
    for schemes, quantized in EXPERT_KINDS.values():
        calls += experts_kind(schemes, quantized, parallel=False) + experts_kind(schemes, quantized, parallel=True)
    for linears in DENSE_LINEARS:
        calls += dense_kind(linears, threads=1) + dense_kind(linears, threads=2)
    for kind, (schemes, quantized) in EXPERT_KINDS.items():
        for linears in DENSE_BESIDE[kind]:
            calls += step_kind(schemes, quantized, linears, threads=1) + step_kind(schemes, quantized, linears, 2)
    for dtype in HEADS:
        calls += head_kind(dtype)
    return kernel_calls.unique(calls)
