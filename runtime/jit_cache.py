"""Whether numba's on-disk cache already holds the runtime's kernels, so that a first run can say it compiles.

Compiling every kernel takes ~10-15 s on a small CPU (once after an install or an update; `cache=True`
keeps the machine code beside the sources afterwards).
"""

from __future__ import annotations

import os

from . import dense_decode, expert_store, kernels, routing


def kernels_cached() -> bool:
    """False if some runtime kernel has never been compiled on this machine (its cache index is missing)."""
    for dispatcher in (kernels.moe_decode, kernels.moe_decode_parallel, kernels.expert_tokens, kernels.dequantize,
                       kernels.norm_linear, dense_decode.decode_layer, routing._route, expert_store._count):
        try:
            index = dispatcher._cache._cache_file._index_path  # numba internals: if they move, say nothing
        except AttributeError:
            continue
        if not os.path.exists(index):
            return False
    return True
