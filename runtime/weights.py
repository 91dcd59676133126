"""Everything a forward pass reads, loaded from one bundle: layer graphs, embedding, head, experts, tokenizer.

Loading verifies the checksums of the dense files (unless told not to), creates one onnxruntime
session per layer graph, maps the dense weights and the experts file read-only, and reads no
expert byte. Every file is opened through the one directory handle it is given.
"""

from __future__ import annotations

import mmap
import weakref
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from .bundle import EMBEDDING, Manifest, graph_contract
from .bundle_dir import BundleDir
from .decode_step import decode_step_for
from .dense_decode import DecodeLayers
from .errors import BundleError
from .expert_store import ExpertStore
from .graphs import DenseGraph, GraphLayers, session_options, shared_initializers
from .head import Head, tensor_view
from .huge_pages import map_on_huge_pages
from .kv_cache import default_dtype
from .memory import RUNTIME_GROWTH, anonymous_bytes, release_free_heap
from .moe import MoELayer
from .prefetch import ExpertPredictor
from .read_ahead_governor import ReadAheadGovernor
from .verify import read_tokenizer, verified_load_files

if TYPE_CHECKING:
    from .forward import Probe
    from .kv_cache import KVCache


class Weights:
    """A loaded bundle: the layers' dense parts (`graph_layers` in onnxruntime, `decode_layers` for one
    token), `moe[i]` (layer i's routed experts), `decode_step` (all the layers for one token in one call; None
    under an expert budget), `embedding`, `head`, the `experts` store and the `tokenizer` (or None)."""

    def __init__(self, bundle: BundleDir, manifest: Manifest, threads: int, expert_budget: int | None = None,
                 verify: bool = True, decode: str = "numba", read_ahead: bool | str = False,
                 activations: str = "int8", budget_follows_growth: bool = False, kv_cache: str | None = None):
        """`budget_follows_growth`: the expert budget shrinks by what the runtime comes to hold after load beyond
        the `memory.RUNTIME_GROWTH` a budget set for the machine left room for (`held_bytes`). `kv_cache`: the
        sessions' KV cache dtype, "float16" or "float32" (None: `kv_cache.default_dtype`)."""
        self.root = bundle.path
        self._anonymous_at_load = anonymous_bytes()
        self._caches: weakref.WeakSet[KVCache] = weakref.WeakSet()
        self.manifest = manifest
        self.spec = spec = manifest.spec
        self.kv_dtype = kv_cache or default_dtype(activations, manifest.dense_linears)
        tokenizer_json = verified_load_files(bundle, manifest) if verify else read_tokenizer(bundle, manifest)
        self._dense_map = bundle.map(manifest.dense_file)
        dense = np.frombuffer(self._dense_map, dtype=np.uint8)
        # the graphs read their weights from this mapping too: every dense weight is held once
        self._initializers = shared_initializers({name: tensor_view(dense, manifest, name)
                                                  for name in manifest.dense_tensors})
        options = session_options(threads, self._initializers)
        contract = graph_contract(spec, manifest.quantization_dict(), manifest.dense_dict())
        self.graph_layers = GraphLayers([DenseGraph(bundle.graph_path(name), name, options, i, contract, spec)
                                         for i, name in enumerate(manifest.layer_graphs)], spec)
        # one token: numba over the same tensors (decode="onnx": the graphs, the reference)
        self.decode_layers = (DecodeLayers(manifest, dense, threads, activations) if decode == "numba"
                              else self.graph_layers)
        self.embedding = tensor_view(dense, manifest, EMBEDDING)  # [V, D]
        embed = manifest.dense_tensors[EMBEDDING]  # page-aligned: a lookup reads its rows' pages only
        self._dense_map.madvise(mmap.MADV_RANDOM, embed.offset - embed.offset % mmap.PAGESIZE, embed.nbytes)
        map_on_huge_pages(self._dense_map, 0, embed.offset)  # what every step reads, on 2 MiB pages
        map_on_huge_pages(self._dense_map, embed.offset + embed.nbytes)
        self.head = Head(manifest, dense, activations)
        self.experts: ExpertStore | None = None
        self.moe: dict[int, MoELayer] = {}
        self.predictor: ExpertPredictor | None = None
        if manifest.experts is not None:
            name = manifest.experts.file
            fd = bundle.open(name)[0] if expert_budget is not None else None  # to read experts into slots
            self.experts = ExpertStore(bundle.map(name), bundle.path / name, manifest.experts, spec, expert_budget,
                                       verify, fd, self._growth_beyond_reserve if budget_follows_growth else None)
            self.moe = {i: MoELayer(i, spec, self.experts, threads, activations) for i in spec.moe_layers}
            self.predictor = ExpertPredictor(spec, manifest, dense)
        self.decode_step = decode_step_for(self.decode_layers, self.moe, self.experts, threads)
        # Model.load: only under a budget; "auto": while it measures faster (`read_ahead_governor`)
        reading = read_ahead is not False and self.predictor is not None
        self.governor = ReadAheadGovernor() if reading and read_ahead == "auto" else None
        self._always_read_ahead = reading and read_ahead is True
        self.tokenizer = _tokenizer(tokenizer_json, manifest.tokenizer)

    @property
    def reading_ahead(self) -> bool:
        """Whether the next one-token step reads ahead: always, never, or as the governor measured."""
        return self._always_read_ahead or (self.governor is not None and self.governor.on)

    @property
    def may_read_ahead(self) -> bool:
        """Whether a one-token step may read ahead (always, or when the governor finds it faster)."""
        return self._always_read_ahead or self.governor is not None

    def decoded(self, seconds: float) -> None:
        """A one-token step took `seconds` (the governor, if any, weighs reading ahead by it)."""
        if self.governor is not None:
            self.governor.record(seconds)

    def prompted(self) -> None:
        """A prompt pass has run: under an expert budget, its freed scratch goes back to the system."""
        if self.experts is not None and self.experts.budget_bytes is not None:
            release_free_heap()

    def track(self, cache: KVCache) -> None:
        """Count a new session's KV cache in `kv_bytes` while it lives."""
        self._caches.add(cache)

    def kv_bytes(self) -> int:
        """Bytes the live sessions' KV caches hold."""
        return sum(cache.held_bytes for cache in list(self._caches))

    def held_bytes(self) -> int:
        """Bytes the runtime has come to hold since load beside the experts: the live KV caches, or the growth of
        the process's anonymous memory (which holds them, numba's machine code, scratch, allocator slack), less
        the experts' slots, when larger."""
        grown = anonymous_bytes() - self._anonymous_at_load - self.experts.slot_bytes_held
        return max(self.kv_bytes(), grown)

    def _growth_beyond_reserve(self) -> int:
        """What the runtime holds beyond the growth the automatic budget left room for at load."""
        return max(self.held_bytes() - RUNTIME_GROWTH, 0)

    def read_ahead(self, layer: int, hidden: np.ndarray, probe: Probe) -> None:
        """While decoding with read-ahead on (or for a probe that watches guesses): guess from hidden [T, D] the
        experts of the MoE layer after `layer`, and start reading those that are not mapped. A prompt routes
        to most experts anyway: its guesses are only shown to the probe."""
        reading = self.reading_ahead and hidden.shape[0] == 1
        if not (reading or probe.watches_guesses):  # the usual step: nothing to do
            return
        target = self.predictor.target(layer)
        if target is None:
            return
        ids = self.predictor.guess(layer, hidden)
        probe.guessed(target, ids)
        if reading:
            self.experts.read_ahead(target, ids)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """Embedding rows [T, D] for token ids, scaled by the spec's embedding multiplier."""
        rows = self.embedding[tokens]
        mult = self.spec.embedding_multiplier
        return rows if mult == 1.0 else rows * np.float32(mult)


def _tokenizer(data: bytes | None, name: str | None) -> Tokenizer | None:
    if data is None:
        return None
    try:
        return Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception
        raise BundleError(f"{name}: not a valid tokenizers file: {' '.join(str(exc).split())[:200]}") from None
