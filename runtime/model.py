"""`Model`: a bundle ready to run — load it, open sessions, generate text.

`Model.load` validates the bundle (reading every file through one directory handle, so a bundle
replaced meanwhile is seen whole or refused), verifies its dense files and loads its `Weights`; it
reads no expert byte. A `Session` holds one sequence; `generate` streams tokens from a prompt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from .bundle import Manifest, read_manifest
from .bundle_dir import BundleDir
from .errors import InputError
from .expert_store import ExpertStore
from .forward import SILENT, Probe
from .generate import Token, stream
from .inputs import check_sampling, check_tokens
from .jit_cache import compile_apart, compile_calls, missing
from .kernel_calls import model_calls
from .kv_cache import KV_DTYPES
from .memory import RUNTIME_GROWTH, automatic_budget, available_memory
from .moe import ACTIVATIONS
from .session import Session
from .spec import ModelSpec
from .storage import step_bytes
from .threads import use_threads
from .weights import Weights

SMALL_STEP_BYTES = 16 << 20  # below this a decode step takes well under a millisecond on one core


def _smallest_budget(manifest: Manifest) -> int:
    """The bytes of the top-k largest experts: what one layer needs mapped at once."""
    x = manifest.experts
    return max(x.span_bytes(layer, e) for layer in x.layers for e in range(len(x.layers[layer]))) * \
        manifest.spec.routing.top_k


def _check_budget(manifest: Manifest, expert_budget: int | None) -> None:
    if expert_budget is None or manifest.experts is None:
        return
    needed = _smallest_budget(manifest)
    if expert_budget < needed:
        raise InputError(f"an expert budget of {expert_budget} bytes is below the {needed} bytes of the "
                         f"top-{manifest.spec.routing.top_k} experts one layer needs at once")


def _check_room(budget: int, needed: int, where: str) -> None:
    """Refuse to run when what is left for experts is below what one layer needs at once: the experts' slots
    and the runtime would not fit beside each other, and the out-of-memory killer would end the run."""
    if budget < needed:
        raise InputError(f"not enough memory for this model: {where} leave {max(budget, 0) / 1e6:.1f} MB for "
                         f"experts, below the {needed / 1e6:.1f} MB one layer needs at once (free memory or raise "
                         "the limit; --expert-budget-mb sets a budget by hand)")


def _default_threads(manifest: Manifest) -> int:
    """The CPU count, or 1 when a decode step reads too little to pay for spreading it over threads."""
    return 1 if step_bytes(manifest)["total"] < SMALL_STEP_BYTES else os.cpu_count() or 1


def _budget_for_machine(manifest: Manifest) -> tuple[int | None, str | None]:
    """An expert budget when the experts do not fit in the memory available, and the sentence saying so."""
    if manifest.experts is None:
        return None, None
    experts = manifest.files[manifest.experts.file]["size"]
    resident = step_bytes(manifest)["dense"]  # every step reads them; the embedding: its tokens' rows only
    available = available_memory()
    budget = automatic_budget(experts, resident, available)
    if budget is None:
        return None, None
    _check_room(budget, _smallest_budget(manifest), f"the {available.bytes / 1e6:.0f} MB available "
                f"({available.source}) beside the dense weights ({resident / 1e6:.0f} MB)")
    return budget, (f"the experts ({experts / 1e6:.0f} MB) do not fit in the {available.bytes / 1e6:.0f} MB "
                    f"available ({available.source}) beside the dense weights ({resident / 1e6:.0f} MB): keeping "
                    f"at most {budget / 1e6:.1f} MB of experts in memory, less what the runtime's own memory grows "
                    "into (--expert-budget-mb overrides)")



class Model:
    """A bundle ready to run. Use `Model.load(path)`, then `session()` or `generate(...)`."""

    def __init__(self, weights: Weights, threads: int, budget_note: str | None = None):
        self.weights = weights
        self.budget_note = budget_note  # why the expert budget was set for this machine, if it was
        self.threads = threads
        self.root = weights.root
        self.manifest: Manifest = weights.manifest
        self.spec: ModelSpec = weights.spec
        self.experts: ExpertStore | None = weights.experts
        self.tokenizer = weights.tokenizer

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None, expert_budget: int | None = None,
             verify: bool = True, decode: str = "numba", read_ahead: bool | str = "auto",
             activations: str = "int8", kv_cache: str | None = None) -> Model:
        """Validate and open the bundle at `path` with `threads` threads (default: the CPU count, or one for a
        model whose decode step reads under 16 MB, which fork/joins would only slow down).

        `expert_budget` (bytes) caps the experts kept mapped: least recently used ones are released.
        Without one, a budget is set when the experts do not fit in the memory available to the process
        (its cgroup's limit, else MemAvailable; `budget_note` then says so).
        `verify` checks the checksum of every byte before its first use: the dense files here, each
        expert when it is first routed to. Bad bundles raise `BundleError`, bad arguments `InputError`.
        `decode` runs one-token steps' dense parts in "numba" (fast) or in the layer graphs ("onnx", the
        reference; prompts always run in the graphs). `read_ahead`: under an expert budget that holds two
        layers' experts, guess each next MoE layer's experts from the current hidden state and start reading
        them early (`runtime/prefetch.py`): True always, False never, "auto" (the default) while one-token steps
        measure faster with it than without (`runtime/read_ahead_governor.py`: on a disk-bound run its wrong
        guesses' reads cost more than it hides).
        `activations` "int8" quantizes the inputs of int8 and int4 experts, and of the int8 dense linears in
        one-token steps, to int8 blocks of 32 (fast integer kernels); "float" keeps them float32 (a float model
        with the dequantized weights up to rounding: the exact reference). numba has one thread pool per
        process: loading sets it up (see `threads.use_threads`).
        `kv_cache` is the sessions' KV cache dtype: "float16" (half the memory, and of what attention reads per
        token) or "float32"; by default float16 beside quantized dense linears with int8 activations, float32
        otherwise (`kv_cache.default_dtype`).
        """
        if not isinstance(path, (str, os.PathLike)):
            raise InputError(f"the bundle path must be a string or a path, got {type(path).__name__}")
        if threads is not None and (type(threads) is not int or not 1 <= threads <= 1024):
            raise InputError(f"threads must be an integer in [1, 1024], got {threads!r}")
        if expert_budget is not None and (type(expert_budget) is not int or expert_budget < 0):
            raise InputError(f"expert_budget must be a whole number of bytes >= 0, got {expert_budget!r}")
        if type(verify) is not bool:
            raise InputError(f"verify must be True or False, got {verify!r}")
        if type(read_ahead) is not bool and read_ahead != "auto":
            raise InputError(f"read_ahead must be True, False or 'auto', got {read_ahead!r}")
        if decode not in ("numba", "onnx"):
            raise InputError(f"decode must be 'numba' or 'onnx', got {decode!r}")
        if activations not in ACTIVATIONS:
            raise InputError(f"activations must be 'int8' or 'float', got {activations!r}")
        if kv_cache is not None and kv_cache not in KV_DTYPES:
            raise InputError(f"kv_cache must be 'float16' or 'float32', got {kv_cache!r}")
        with BundleDir(path) as bundle:
            manifest = read_manifest(bundle, verify)
            _check_budget(manifest, expert_budget)
            threads = threads or _default_threads(manifest)
            use_threads(threads)
            note = None
            if expert_budget is None:
                expert_budget, note = _budget_for_machine(manifest)
            # reading ahead needs room for two layers' experts: it must not release those being computed
            if expert_budget is None or expert_budget < 2 * _smallest_budget(manifest):
                read_ahead = False
            weights = Weights(bundle, manifest, threads, expert_budget, verify, decode, read_ahead=read_ahead,
                              activations=activations, budget_follows_growth=note is not None, kv_cache=kv_cache)
            if note is not None:  # the kernels' machine code now, before any expert takes memory: the budget
                calls = model_calls(weights)  # makes room for it, and the cap has no slack for both
                compile_apart(missing(calls))  # (LLVM's memory, if it compiles, leaves with the child)
                compile_calls(calls)  # loads them from the cache
                _check_room(expert_budget - max(weights.held_bytes() - RUNTIME_GROWTH, 0), _smallest_budget(manifest),
                            "the memory available, once the kernels are loaded,")
            return cls(weights, threads, note)

    def session(self, probe: Probe = SILENT) -> Session:
        """A new sequence with its own preallocated KV cache; `probe` watches its steps."""
        return Session(self.weights, probe)

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
                 stop: list[str] | None = None) -> Iterator[Token]:
        """Stream up to `max_new_tokens` tokens after `prompt` (text, or token ids); greedy at temperature 0,
        else top-k/top-p sampling; ends early at EOS or a `stop` string (the last token's text holds it:
        `stop_strings.StopStrings` gives the text without it). Bad arguments raise `InputError` naming the
        argument, before any work."""
        check_sampling(max_new_tokens, temperature, top_k, top_p, seed, stop)
        if isinstance(prompt, str):
            ids = self.encode(prompt)
        elif isinstance(prompt, (list, tuple, np.ndarray)):
            ids = check_tokens(prompt, self.spec.vocab_size).tolist()
        else:
            raise InputError(f"the prompt must be text or a list of token ids, got {type(prompt).__name__}")
        session = self.session()
        if len(ids) + max_new_tokens > session.remaining:
            raise InputError(f"prompt of {len(ids)} tokens plus {max_new_tokens} new tokens exceeds the "
                             f"context length {self.spec.max_seq_len}")
        return stream(session, self.tokenizer, ids, max_new_tokens, self.eos_ids, temperature, top_k, top_p, seed,
                      stop)

    @property
    def eos_ids(self) -> set[int]:
        """The token ids that end generation (from the source's generation config)."""
        eos = self.manifest.generation.get("eos_token_id")
        return set(eos if isinstance(eos, list) else [] if eos is None else [eos])
