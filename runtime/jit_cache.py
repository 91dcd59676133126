"""Whether numba's on-disk cache already holds the runtime's kernels, so that a first run can say it compiles.

Compiling every kernel takes ~10-15 s on a small CPU (once after an install or an update; `cache=True`
keeps the machine code beside the sources afterwards).
"""

from __future__ import annotations

import os

from . import dense_decode, expert_store, kernels, routing
from .weights import Weights


def _kernels_of(weights: Weights) -> list:
    """The kernels a model's run will call: the decode kernels its layers chose, and those every run needs."""
    needed = [kernels.expert_pairs, kernels.norm_linear, routing._route, expert_store._count]
    needed += {layer.decode_kernel for layer in weights.moe.values()} if weights.spec.is_moe else []
    if isinstance(weights.decode_layers, dense_decode.DecodeLayers):
        needed.append(dense_decode.decode_layer)
        if any(c.parallel_min < dense_decode.NEVER for c in weights.decode_layers.configs):
            needed.append(dense_decode._rows4_parallel)
    return needed


def kernels_cached(weights: Weights) -> bool:
    """False if a kernel this model's run calls has never been compiled on this machine (its cache index is
    missing). Prefill's dequantize kernel, only for experts many prompt tokens share, is left out: ~1 s."""
    for dispatcher in _kernels_of(weights):
        try:
            index = dispatcher._cache._cache_file._index_path  # numba internals: if they move, say nothing
        except AttributeError:
            continue
        if not os.path.exists(index):
            return False
    return True
