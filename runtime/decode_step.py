"""One token through every layer in one numba call, when nothing between the layers needs Python.

`forward` otherwise calls, per layer, the dense decode kernel, routing, the expert store's counting and the
expert kernel from Python, each call unboxing its arguments: 11 µs a layer on the demo model (0.202 → 0.157 ms a
token, 4 layers), 0.2-0.35 ms a token on olmoe-shape at two threads (docs/performance-history.md, session 7).
Here one call runs those same kernels in the same order on the same arrays, so the logits are the same bit for
bit; the layers' tensors, configs and experts' views reach it as numba typed lists, made once (unboxing a list
costs one pointer, not ~40 arrays a layer).

Used for one-token steps with every expert in the mapped file (no expert budget: nothing to read into slots,
release or read ahead) and no probe watching the parts. Every layer's experts' view has one numba type (the
bundle's schemes choose it, `expert_store.layer_bytes`: a mixed bundle's all-int4 layers take the mixed
kernels). The expert store's counters are updated as `ExpertStore.touch` does; an expert routed to for the
first time (not yet advised to the kernel or checked against its checksum) ends the call at its layer, Python
touches it as usual (`touch` reads and checks it), and a second call goes on from that layer's experts.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.typed import List

from . import numba_cache  # noqa: F401  (first: it says where the kernels' cache lives)
from .dense_decode import DecodeLayers, decode_layer
from .expert_store import ExpertStore, _count
from .kernels import moe_decode, moe_decode_parallel
from .kv_cache import KVCache
from .moe import MoELayer
from .routing import _route


@njit(cache=True)
def _list_of(first):
    """A typed list holding `first` (in a cached kernel: building one from Python compiles its methods, ~1 s)."""
    items = List()
    items.append(first)
    return items


@njit(cache=True)
def _append(items, item):
    items.append(item)


def typed_list(items: list) -> List:
    """`items` (of one numba type) as a numba typed list."""
    typed = _list_of(items[0])
    for item in items[1:]:
        _append(typed, item)
    return typed


@njit(cache=True, error_model="numpy")
def decode_layers(hidden, first, resume, tensors, configs, k_cache, v_cache, pos, cos, sin, experts, parallel,
                  top_k, sigmoid, normalize, scaling, residual, hits, touched, guessed, last_use, mapped, verified,
                  checking, clock, mid, ffn_in, logits, ids, gates, scratch, out, dense_quantized, expert_quantized):
    """hidden [D] through layers `first`.. for one token at position `pos` (in place; the k/v rows into the cache).
    Per layer: `decode_layer` (into `mid`, `ffn_in`, `logits` [1, E]), then for an MoE layer `_route` (into `ids`,
    `gates` [1, k]) and, once its experts are all mapped and checked (`mapped`, `verified` when `checking`), the
    store's counting (`_count` at clock + 1) and the expert kernel (`moe_decode`, or `moe_decode_parallel` where
    `parallel` [layers] says; None: one thread), then hidden = mid + out · residual. `resume`: layer `first`'s
    dense part and routing are done already (mid, ffn_in, ids, gates hold them) and its experts counted.
    Returns (the layer whose routed experts are not all mapped and checked, or the number of layers; the clock).
    No fastmath: mid + out · residual rounds as numpy's two operations do."""
    for i in range(first, len(tensors)):
        cfg = configs[i]
        if not (resume and i == first):
            decode_layer(hidden, tensors[i], cfg, k_cache[i], v_cache[i], pos, cos, sin, mid, ffn_in, logits[0],
                         dense_quantized)
            if cfg.moe:
                _route(logits, top_k, sigmoid, normalize, scaling, ids, gates)
                for j in range(top_k):
                    e = ids[0, j]
                    if not mapped[i, e] or (checking and not verified[i, e]):
                        return i, clock
                clock += 1
                _count(hits[i], touched[i], guessed[i], last_use[i], clock, ids)
        if cfg.moe:
            wide = False
            if parallel is not None:
                wide = parallel[i]
            if wide:
                moe_decode_parallel(ffn_in, experts[i], ids[0], gates[0], scratch, out, expert_quantized)
            else:
                moe_decode(ffn_in, experts[i], ids[0], gates[0], scratch, out, expert_quantized)
            for j in range(hidden.shape[0]):
                hidden[j] = mid[j] + out[j] * residual
        else:
            for j in range(hidden.shape[0]):
                hidden[j] = mid[j]
    return len(tensors), clock


def decode_step_for(layers, moe: dict[int, MoELayer], store: ExpertStore | None, threads: int) -> DecodeStep | None:
    """A `DecodeStep` for a loaded model when it can take one: numba decode layers (`DecodeLayers`), experts with
    no budget."""
    if not isinstance(layers, DecodeLayers) or not moe or store.budget_bytes is not None:
        return None
    return DecodeStep(layers, moe, store, threads)


class DecodeStep:
    """`decode_layers` for a loaded model: its typed lists (made at the first step) and the store it counts in."""

    def __init__(self, layers: DecodeLayers, moe: dict[int, MoELayer], store: ExpertStore, threads: int):
        self.layers, self.store = layers, store
        spec = layers.spec
        self.routing = r = spec.routing
        # `_route`'s arguments, as `routing.route` passes them
        self.route_args = (int(r.top_k), r.score_func == "sigmoid", bool(r.normalize_top_k), float(r.scaling_factor))
        self.residual = np.float32(spec.residual_multiplier)
        any_moe = next(iter(moe.values()))
        self.views = [(moe.get(i) or any_moe).bytes for i in range(spec.n_layers)]  # a dense layer's is never read
        self.parallel = (np.array([i in moe and moe[i].decode_kernel is moe_decode_parallel
                                   for i in range(spec.n_layers)]) if threads > 1 else None)
        self.expert_quantized = any_moe.quantized
        self._lists = None

    def _typed(self) -> tuple[List, List, List]:
        if self._lists is None:
            self._lists = (typed_list(self.layers.tensors), typed_list(self.layers.configs), typed_list(self.views))
        return self._lists

    def __call__(self, hidden: np.ndarray, tables: tuple[np.ndarray, np.ndarray], cache: KVCache,
                 scratch: np.ndarray) -> None:
        """Every layer on one token hidden [1, D] (in place); writes the layers' k/v rows into the cache.
        `scratch`: the session's expert scratch [k, I]."""
        tensors, configs, views = self._typed()
        store, r = self.store, self.routing
        d = hidden.shape[1]
        mid, ffn_in, out = (np.empty(d, np.float32) for _ in range(3))
        logits = np.empty((1, r.n_experts), np.float32)
        ids, gates = np.empty((1, r.top_k), np.int64), np.empty((1, r.top_k), np.float32)
        first, resume = 0, False
        while True:
            with store.counting():
                first, store.clock = decode_layers(
                    hidden[0], first, resume, tensors, configs, cache.k, cache.v, cache.length, *tables, views,
                    self.parallel, *self.route_args, self.residual, store.hits, store.touched, store.guessed,
                    store.last_use, store.mapped, store.verified, store.checksums is not None, store.clock, mid,
                    ffn_in, logits, ids, gates, scratch, out, self.layers.quantized, self.expert_quantized)
            if first == self.layers.spec.n_layers:  # (`len` of a typed list from Python costs ~20 µs)
                return
            store.touch(first, ids)  # maps and checks the experts routed to for the first time
            resume = True
