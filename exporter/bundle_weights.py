"""A bundle's weights back as float32 arrays under their canonical names (no torch): what the benchmark
peers run, so that every engine computes with the very numbers the bundle holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..quant import dequantize_stored, nbits_dequantize
from ..runtime import kernels
from ..runtime.bundle import NBITS, Manifest
from ..runtime.expert_store import layer_bytes
from ..runtime.head import tensor_view
from ..runtime.tensor_names import LM_HEAD, dense_names, expert_names

EXPERT_MATRICES = {"gate": kernels.GATE, "up": kernels.UP, "down": kernels.DOWN}


def _dense_float(dense: np.ndarray, manifest: Manifest, name: str) -> np.ndarray:
    """A dense tensor as float32; quantized linears (MatMulNBits codes + scales) are dequantized."""
    tensor = tensor_view(dense, manifest, name)
    if tensor.dtype != np.uint8:
        return tensor.copy()
    return nbits_dequantize(tensor, tensor_view(dense, manifest, f"{name}_scale"), NBITS[manifest.dense_linears])


def head_float(dense: np.ndarray, manifest: Manifest) -> np.ndarray:
    """The LM head [vocab, hidden] as the bundle computes it (dequantized when it is int8 or int4)."""
    head = {key: tensor_view(dense, manifest, name) for key, name in manifest.head.items()}
    return dequantize_stored(manifest.head_stored, head["weight"], head["scale"])


def bundle_float_tensors(root: Path, manifest: Manifest) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor of the canonical model as float32, one at a time: the dense tensors (quantized linears
    dequantized), each MoE layer's stacked experts (read and dequantized as the runtime reads them),
    and `lm_head.weight`, the bundle's own head (untied from the embedding)."""
    dense = np.memmap(root / manifest.dense_file, dtype=np.uint8, mode="r")
    for name in dense_names(manifest.spec):
        if name != LM_HEAD:
            yield name, _dense_float(dense, manifest, name)
    if manifest.experts is not None:
        index = manifest.experts
        d, i = manifest.spec.hidden_size, manifest.spec.expert_intermediate_size
        canonical = {"gate": (i, d), "up": (i, d), "down": (d, i)}
        experts = np.memmap(root / index.file, dtype=np.uint8, mode="r")
        for layer, offsets in index.layers.items():
            record = layer_bytes(experts, index, np.array(offsets, dtype=np.int64), layer, manifest.spec)
            for part, name in expert_names(layer).items():
                stacked = np.empty((len(offsets), *canonical[part]), dtype=np.float32)
                for e in range(len(offsets)):
                    kernels.dequantize(record, e, EXPERT_MATRICES[part], stacked[e])
                yield name, stacked
    yield LM_HEAD, head_float(dense, manifest)
