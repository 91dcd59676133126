"""The dense layer graphs: one onnxruntime session per layer, checked against the graph contract."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .bundle import GRAPH_CONTRACT_KEY, GRAPH_LAYER_KEY
from .errors import BundleError
from .kv_cache import KVCache
from .rope import rope_rotation
from .spec import ModelSpec


@dataclass(frozen=True)
class LayerOutputs:
    """What a layer's dense part hands on (its new k/v rows went into the KV cache)."""

    hidden: np.ndarray  # [T, D]: attention and the dense FFN or shared expert added
    ffn_in: np.ndarray | None = None  # [T, D], MoE layers only: the normed input of the routed experts
    router_logits: np.ndarray | None = None  # [T, E]


def shared_initializers(arrays: dict[str, np.ndarray]) -> dict[str, ort.OrtValue]:
    """onnxruntime values over `arrays` without a copy (keep them alive as long as the sessions)."""
    return {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in arrays.items()}


def session_options(threads: int, initializers: dict[str, ort.OrtValue]) -> ort.SessionOptions:
    """Options for every layer graph: `threads` intra-op threads that do not spin, and the graphs' weights
    taken from `initializers` (over the runtime's one mapping of the dense file, which the numba decode
    path reads too) instead of a second mapping or a prepacked private copy: each weight is held once."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Prepacking copies int8 MatMulNBits weights into a private layout (80 MB on granite-1b-shape). Without
    # it, prefill (the graphs' only use) runs as fast (measured) and computes with float activations like
    # the numba decode path, instead of int8 ones.
    options.add_session_config_entry("session.disable_prepacking", "1")
    # No arena: it keeps the high-water mark of a prefill's activations (~120 MB on granite-1b-shape, 128
    # tokens) for the process's life; plain allocations are no slower here (measured side by side).
    options.enable_cpu_mem_arena = False
    # Idle ORT threads must not spin: the numba expert kernels need the cores between graphs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for name, value in initializers.items():
        options.add_initializer(name, value)
    return options


LAYER_INPUTS = {"hidden", "rope", "causal_bias", "past_k", "past_v"}
LAYER_OUTPUTS = (["hidden_out", "k", "v"], ["hidden_out", "k", "v", "ffn_in", "router_logits"])


class DenseGraph:
    """One onnxruntime session over layer graph `layer`, checked against the graph contract (FORMAT.md):
    its inputs and outputs, their declared sizes, its layer index and the manifest it was built for."""

    def __init__(self, path: str, name: str, options: ort.SessionOptions, layer: int, contract: str,
                 spec: ModelSpec):
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{name}: onnxruntime cannot load this graph: {' '.join(str(exc).split())[:300]}") \
                from None
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        self.outputs = list(outputs)
        if set(inputs) != LAYER_INPUTS or self.outputs not in LAYER_OUTPUTS:
            raise BundleError(f"{name}: inputs {sorted(inputs)} / outputs {self.outputs} are not the layer "
                              "graph contract of this runtime; re-export the model")
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(GRAPH_LAYER_KEY) != str(layer) or meta.get(GRAPH_CONTRACT_KEY) != contract:
            raise BundleError(f"{name}: this graph was not exported as layer {layer} of this manifest (the manifest "
                              "or the graph list was edited, or the graph belongs to another bundle)")
        kv = [spec.n_kv_heads, spec.head_dim]
        declared = {"hidden": [spec.hidden_size], "past_k": kv, "past_v": kv, "hidden_out": [spec.hidden_size],
                    "router_logits": [spec.routing.n_experts] if spec.routing else []}
        for key, tail in declared.items():
            shape = inputs.get(key) or outputs.get(key)
            if shape is not None and tail and list(shape[-len(tail):]) != tail:
                raise BundleError(f"{name}: {key} is declared {shape}, the model spec needs [..., {tail}]")


    def __call__(self, hidden: np.ndarray, tables: dict[str, np.ndarray], past_k: np.ndarray,
                 past_v: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for hidden [T, D], the step's tables and the cached rows [P, K, Hd]."""
        return self.session.run(self.outputs, {"hidden": hidden, "past_k": past_k, "past_v": past_v, **tables})


class GraphLayers:
    """The dense part of every layer in onnxruntime: the reference path, and the one prefill takes."""

    def __init__(self, graphs: list[DenseGraph], spec: ModelSpec):
        self.graphs = graphs
        self.spec = spec

    def tables(self, start: int, count: int) -> dict[str, np.ndarray]:
        """Inputs shared by every layer graph of one step: the RoPE rotation and the causal bias."""
        bias = np.triu(np.full((count, count), -np.inf, dtype=np.float32), 1)  # key after query: masked
        groups = self.spec.n_heads // self.spec.n_kv_heads
        return {"rope": rope_rotation(self.spec, start, count), "causal_bias": np.tile(bias, (groups, 1))}

    def __call__(self, i: int, hidden: np.ndarray, tables: dict[str, np.ndarray], cache: KVCache) -> LayerOutputs:
        """Layer i on hidden [T, D]; writes its k/v rows [T, K, Hd] into the cache."""
        out, k, v, *moe = self.graphs[i](hidden, tables, *cache.past(i))
        cache.write(i, k, v)
        return LayerOutputs(out, *moe)
