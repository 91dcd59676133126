"""`Model`: a loaded bundle — onnxruntime sessions for the dense graphs, lazy int8 experts.

Loading validates the manifest, verifies the checksums of the dense files (unless told not
to), maps the dense weights and the experts file read-only and creates one onnxruntime session
per layer graph; it reads no expert byte. Every file is opened through one directory handle,
so a bundle replaced during the load is seen whole or refused.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .bundle import GRAPH_CONTRACT_KEY, GRAPH_LAYER_KEY, Manifest, graph_contract, read_manifest
from .bundle_dir import BundleDir
from .errors import BundleError, InputError
from .expert_store import ExpertStore
from .generate import generate
from .head import Head, tensor_view
from .moe import MoELayer
from .rope import rope_rotation
from .session import Session
from .spec import ModelSpec
from .verify import read_tokenizer, verified_load_files


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

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.outputs, feeds)


def _check_budget(manifest: Manifest, expert_budget: int | None) -> None:
    if expert_budget is not None and manifest.experts is not None:
        needed = manifest.experts.span_bytes * manifest.spec.routing.top_k
        if expert_budget < needed:
            raise InputError(f"an expert budget of {expert_budget} bytes is below the {needed} bytes of the "
                             f"top-{manifest.spec.routing.top_k} experts one layer needs at once")


class Model:
    """A bundle ready to run. Use `Model.load(path)`, then `session()` or `generate(...)`."""

    def __init__(self, bundle: BundleDir, manifest: Manifest, threads: int, expert_budget: int | None = None,
                 verify: bool = True):
        self.root = bundle.path
        self.manifest = manifest
        self.spec: ModelSpec = manifest.spec
        self.threads = threads
        tokenizer_json = verified_load_files(bundle, manifest) if verify else read_tokenizer(bundle, manifest)
        options = _session_options(threads, prepack=manifest.dense_linears == "int8")
        contract = graph_contract(self.spec, manifest.quantization_dict(), manifest.dense_dict())
        self.layers = [DenseGraph(bundle.graph_path(name), name, options, i, contract, self.spec)
                       for i, name in enumerate(manifest.layer_graphs)]
        self._dense_map = bundle.map(manifest.dense_file)
        dense = np.frombuffer(self._dense_map, dtype=np.uint8)
        self.embedding = tensor_view(dense, manifest, "embed.weight")
        embed = manifest.dense_tensors["embed.weight"]  # page-aligned: a lookup reads its rows' pages only
        self._dense_map.madvise(mmap.MADV_RANDOM, embed.offset - embed.offset % mmap.PAGESIZE, embed.nbytes)
        self.head = Head(manifest, dense)
        self.experts: ExpertStore | None = None
        self.moe: dict[int, MoELayer] = {}
        if manifest.experts is not None:
            routing = self.spec.routing
            name = manifest.experts.file
            self.experts = ExpertStore(bundle.map(name), bundle.path / name, manifest.experts, self.spec.n_layers,
                                       routing.n_experts, expert_budget, verify)
            for i in self.spec.moe_layers:
                self.moe[i] = MoELayer(i, self.spec, manifest.experts.group_size, self.experts, threads)
        self.tokenizer = None
        if tokenizer_json is not None:
            try:
                self.tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
            except Exception as exc:  # tokenizers raises a bare Exception
                raise BundleError(f"{manifest.tokenizer}: not a valid tokenizers file: "
                                  f"{' '.join(str(exc).split())[:200]}") from None

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None, expert_budget: int | None = None,
             verify: bool = True) -> Model:
        """Validate and open the bundle at `path`; `threads` defaults to the CPU count.

        `expert_budget` (bytes) caps the experts kept mapped: least recently used ones are released.
        `verify` checks the checksum of every byte before its first use: the dense files here, each
        expert when it is first routed to. Bad bundles raise `BundleError`, bad arguments `InputError`.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise InputError(f"the bundle path must be a string or a path, got {type(path).__name__}")
        if threads is not None and (type(threads) is not int or not 1 <= threads <= 1024):
            raise InputError(f"threads must be an integer in [1, 1024], got {threads!r}")
        if expert_budget is not None and (type(expert_budget) is not int or expert_budget < 0):
            raise InputError(f"expert_budget must be a whole number of bytes >= 0, got {expert_budget!r}")
        if type(verify) is not bool:
            raise InputError(f"verify must be True or False, got {verify!r}")
        threads = threads or os.cpu_count() or 1
        if "NUMBA_THREADING_LAYER" not in os.environ:
            # OpenMP has the cheapest fork/join (~9 µs on 2 threads, workqueue ~50 µs), but its
            # spinning workers collapse when onnxruntime shares the cores: they must sleep.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            numba.config.THREADING_LAYER = "omp"
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        with BundleDir(path) as bundle:
            manifest = read_manifest(bundle, verify)
            _check_budget(manifest, expert_budget)
            return cls(bundle, manifest, threads, expert_budget, verify)

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
        """Token ids (a list, tuple or 1-D integer array) as int64 [T]; raise `InputError` if they are not
        integers, empty, or outside the vocabulary."""
        vocab = self.spec.vocab_size
        if isinstance(tokens, np.ndarray):
            if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
                raise InputError(f"token ids must be a 1-D integer array, got {tokens.ndim}-D {tokens.dtype}")
            values = tokens
        elif isinstance(tokens, (list, tuple)):
            wrong = [t for t in tokens if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer))]
            if wrong:
                wrong = wrong[0]
                raise InputError(f"token ids must be integers, got {type(wrong).__name__} {_short(wrong)}")
            values = tokens
        else:
            raise InputError(f"token ids must be a list of integers, got {type(tokens).__name__}")
        if len(values) == 0:
            raise InputError("no tokens given")
        if isinstance(values, np.ndarray):
            outside = values[(values < 0) | (values >= vocab)]
            bad = int(outside[0]) if outside.size else None
        else:
            bad = next((int(t) for t in values if not 0 <= int(t) < vocab), None)
        if bad is not None:
            raise InputError(f"token id {_short(bad)} is outside the vocabulary [0, {vocab})")
        return np.asarray(values, dtype=np.int64)

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


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
