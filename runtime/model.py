"""`Model`: a loaded bundle — onnxruntime sessions for the dense graphs, lazy int8 experts.

Loading validates the manifest, maps the dense weights and the experts file read-only and
creates one onnxruntime session per layer graph; it reads no expert byte.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .bundle import BundleError, Manifest, read_manifest
from .errors import InputError
from .expert_store import ExpertStore
from .generate import generate
from .head import Head, tensor_view
from .moe import MoELayer
from .rope import rope_rotation
from .session import Session
from .spec import ModelSpec


@dataclass(frozen=True)
class LayerOutputs:
    hidden: np.ndarray  # [T, D]
    k: np.ndarray  # [T, K, Hd]
    v: np.ndarray
    ffn_in: np.ndarray | None = None  # [T, D], MoE layers only
    router_logits: np.ndarray | None = None  # [T, E]


def _session_options(threads: int, prepack: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Float weights stay in the memory-mapped external-data file instead of a prepacked private
    # copy (no slower, measured); int8 MatMulNBits needs its prepacked layout to be fast.
    options.add_session_config_entry("session.disable_prepacking", "0" if prepack else "1")
    # Idle ORT threads must not spin: the numba expert kernels need the cores between graphs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


LAYER_INPUTS = {"hidden", "rope", "causal_bias", "past_k", "past_v"}
LAYER_OUTPUTS = (["hidden_out", "k", "v"], ["hidden_out", "k", "v", "ffn_in", "router_logits"])


class DenseGraph:
    """One onnxruntime session over a layer graph, checked against the graph contract (FORMAT.md)."""

    def __init__(self, path: Path, options: ort.SessionOptions):
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{path.name}: onnxruntime cannot load this graph: {exc}") from None
        inputs = {i.name for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        if inputs != LAYER_INPUTS or self.outputs not in LAYER_OUTPUTS:
            raise BundleError(f"{path.name}: inputs {sorted(inputs)} / outputs {self.outputs} are not the layer "
                              "graph contract of this runtime; re-export the model")

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.outputs, feeds)


class Model:
    """A bundle ready to run. Use `Model.load(path)`, then `session()` or `generate(...)`."""

    def __init__(self, root: Path, manifest: Manifest, threads: int, expert_budget: int | None = None):
        self.root = root
        self.manifest = manifest
        self.spec: ModelSpec = manifest.spec
        self.threads = threads
        options = _session_options(threads, prepack=manifest.dense_linears == "int8")
        self.layers = [DenseGraph(root / name, options) for name in manifest.layer_graphs]
        with open(root / manifest.dense_file, "rb") as f:
            self._dense_map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        dense = np.frombuffer(self._dense_map, dtype=np.uint8)
        self.embedding = tensor_view(dense, manifest, "embed.weight")
        embed = manifest.dense_tensors["embed.weight"]  # page-aligned: a lookup reads its rows' pages only
        self._dense_map.madvise(mmap.MADV_RANDOM, embed.offset - embed.offset % mmap.PAGESIZE, embed.nbytes)
        self.head = Head(manifest, dense)
        self.experts: ExpertStore | None = None
        self.moe: dict[int, MoELayer] = {}
        if manifest.experts is not None:
            routing = self.spec.routing
            self.experts = ExpertStore(root / manifest.experts.file, manifest.experts,
                                       self.spec.n_layers, routing.n_experts, expert_budget)
            dequantized: dict[int, np.ndarray] = {}
            for i, kind in enumerate(self.spec.layer_kinds):
                if kind == "moe":
                    self.moe[i] = MoELayer(i, self.spec, manifest.experts.group_size, self.experts, threads,
                                           dequantized)
        self.tokenizer = None
        if manifest.tokenizer is not None:
            self.tokenizer = Tokenizer.from_file(str(root / manifest.tokenizer))

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None, expert_budget: int | None = None) -> Model:
        """Validate and open the bundle at `path`; `threads` defaults to the CPU count.

        `expert_budget` (bytes) caps the experts kept mapped: least recently used ones are released.
        """
        threads = threads or os.cpu_count() or 1
        if "NUMBA_THREADING_LAYER" not in os.environ:
            # OpenMP has the cheapest fork/join (~9 µs on 2 threads, workqueue ~50 µs), but its
            # spinning workers collapse when onnxruntime shares the cores: they must sleep.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            numba.config.THREADING_LAYER = "omp"
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        root = Path(path)
        manifest = read_manifest(root)
        if expert_budget is not None and manifest.experts is not None:
            needed = manifest.experts.span_bytes * manifest.spec.routing.top_k
            if expert_budget < needed:
                raise InputError(f"an expert budget of {expert_budget} bytes is below the {needed} bytes of the "
                                 f"top-{manifest.spec.routing.top_k} experts one layer needs at once")
        return cls(root, manifest, threads, expert_budget)

    def session(self, record_routing: bool = False) -> Session:
        """A decoding session with its own preallocated KV cache."""
        return Session(self, record_routing=record_routing)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """Embedding rows [T, D] for token ids, scaled by the spec's embedding multiplier."""
        rows = self.embedding[tokens]
        mult = self.spec.embedding_multiplier
        return rows if mult == 1.0 else rows * np.float32(mult)

    def step_tables(self, start: int, count: int) -> dict[str, np.ndarray]:
        """Inputs shared by every layer graph of one step: the RoPE rotation and the causal bias."""
        bias = np.triu(np.full((count, count), -np.inf, dtype=np.float32), 1)  # key after query: masked
        groups = self.spec.n_heads // self.spec.n_kv_heads
        return {"rope": rope_rotation(self.spec, start, count), "causal_bias": np.tile(bias, (groups, 1))}

    def run_layer(self, i: int, hidden: np.ndarray, tables: dict[str, np.ndarray], past_k: np.ndarray,
                  past_v: np.ndarray) -> LayerOutputs:
        """Layer graph i on hidden [T, D] with the step's tables and the cached rows [P, K, Hd]."""
        return LayerOutputs(*self.layers[i].run({"hidden": hidden, "past_k": past_k, "past_v": past_v, **tables}))

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        return self.head.run(hidden)

    def check_tokens(self, tokens) -> np.ndarray:
        """Token ids as int64 [T]; raise `InputError` if empty or out of the vocabulary."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise InputError("no tokens given")
        bad = ids[(ids < 0) | (ids >= self.spec.vocab_size)]
        if bad.size:
            raise InputError(f"token id {int(bad[0])} is outside the vocabulary [0, {self.spec.vocab_size})")
        return ids

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise InputError("this bundle has no tokenizer: pass token ids instead of text")
        return self.tokenizer.encode(text).ids

    def decode_text(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            raise InputError("this bundle has no tokenizer")
        return self.tokenizer.decode(ids)

    def generate(self, prompt: str | list[int], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                 stop: list[str] | None = None) -> Iterator:
        """Stream generated tokens (see `generate.generate`); greedy when temperature is 0."""
        return generate(self, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, seed=seed, stop=stop)
