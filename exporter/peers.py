"""Peers for `moedge bench --peers`: the same bundle's weights run by other engines, same token stream.

- `onnxruntime-full-graph`: one ONNX graph of the whole model, every expert computed
  (see `full_graph.py`), with onnxruntime's default session options.
- `pytorch-eager`: the canonical PyTorch model in float32 with a KV cache, its expert weights
  the bundle's int8 experts dequantized.
- `llama.cpp-q8_0`: llama.cpp (the optional `llama-cpp-python`, `make peers`) on the bundle's weights
  written as GGUF Q8_0 (`gguf_writer.py`); its prefill speed is measured too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
import onnxruntime as ort
import torch

from ..runtime.bundle import Manifest, read_manifest
from ..runtime.rope import rope_rotation
from ..runtime.tools.bench import PEERS, WARMUP_TOKENS
from .bundle_weights import bundle_float_tensors
from .full_graph import write_full_graph
from .gguf_writer import gguf_architecture, write_gguf
from .model import Transformer
from .source import ExportError


def _token_stream(vocab: int, prompt_tokens: int, new_tokens: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, prompt_tokens), rng.integers(0, vocab, new_tokens)


def _median_ms(step, tokens) -> float:
    times = []
    for i, token in enumerate(tokens):
        start = time.perf_counter()
        step(int(token))
        if i >= WARMUP_TOKENS:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def ort_full_graph_ms(root: Path, manifest: Manifest, threads: int, prompt, tokens) -> float:
    """Median decode ms/token of the full graph in onnxruntime (built in a temp folder if needed)."""
    spec = manifest.spec
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".peer-") as tmp:
        if manifest.full_graph:
            path = root / manifest.full_graph
        else:  # build it beside hard links to the bundle's weight files (ORT refuses symbolic links)
            for name in {manifest.dense_file, *([manifest.experts.file] if manifest.experts else [])}:
                os.link(root / name, Path(tmp) / name)
            path = write_full_graph(manifest, Path(tmp), check=False)  # checked when exported with --full-graph
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    empty = np.zeros((0, spec.n_kv_heads, spec.head_dim), np.float32)
    state = {"pos": 0, "kv": [empty] * (2 * spec.n_layers)}

    def step(ids) -> None:
        ids = np.atleast_1d(np.asarray(ids, np.int64))
        feeds = {"tokens": ids, "rope": rope_rotation(spec, state["pos"], len(ids))}
        for i in range(spec.n_layers):
            feeds[f"past_k_{i}"], feeds[f"past_v_{i}"] = state["kv"][2 * i], state["kv"][2 * i + 1]
        out = session.run(None, feeds)
        state["kv"], state["pos"] = out[1:], state["pos"] + len(ids)

    step(prompt)
    return _median_ms(step, tokens)


def torch_model_from_bundle(root: Path, manifest: Manifest) -> Transformer:
    """The canonical float32 PyTorch model holding the bundle's weights (experts dequantized)."""
    model = Transformer(manifest.spec)
    model.lm_head = torch.nn.Linear(manifest.spec.hidden_size, manifest.spec.vocab_size, bias=False)
    state = {name: torch.from_numpy(tensor) for name, tensor in bundle_float_tensors(root, manifest)}
    missing = model.load_state_dict(state, strict=False).missing_keys
    if missing:
        raise ValueError(f"the bundle lacks tensors the model needs: {sorted(missing)}")
    return model.eval()


def torch_eager_ms(root: Path, manifest: Manifest, threads: int, prompt, tokens) -> float:
    """Median decode ms/token of PyTorch eager float32 with a KV cache."""
    torch.set_num_threads(threads)
    model = torch_model_from_bundle(root, manifest)
    cache = model.new_cache()
    with torch.inference_mode():
        model(torch.from_numpy(prompt)[None], cache)
        return _median_ms(lambda t: model(torch.tensor([[t]]), cache), tokens)


def run_apart(argv: list[str], job: dict, what: str) -> dict:
    """`argv` run with `job` as JSON on its stdin: its last line of output as JSON, or {"skipped": why} when it
    fails or dies (`llama_peer`: native code that crashes takes only its own process)."""
    done = subprocess.run(argv, input=json.dumps(job), capture_output=True, text=True)
    if done.returncode < 0:
        return {"skipped": f"{what} died of {signal.Signals(-done.returncode).name}"}
    if done.returncode:
        return {"skipped": f"{what} failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def llama_cpp_runs(root: Path, manifest: Manifest, threads: list[int], prompt, tokens) -> list[dict]:
    """llama.cpp on the bundle's weights as GGUF (Q8_0; Q4_0 for int4 and mixed bundles), at each thread
    count in a process of its own (`llama_peer`): decode ms/token (median) and prefill tokens/s; a row saying
    why not when llama-cpp-python is missing, the model has no GGUF form, or llama.cpp failed or died."""
    qtype = gguf.GGMLQuantizationType.Q8_0 if manifest.quant_scheme in ("int8", "float32") else \
        gguf.GGMLQuantizationType.Q4_0
    name = f"llama.cpp-{qtype.name.lower()}"
    try:
        if importlib.util.find_spec("llama_cpp") is None:
            raise ExportError("llama-cpp-python is not installed (make peers)")
        gguf_architecture(manifest.spec)
    except ExportError as exc:
        return [{"name": name, "threads": n, "skipped": str(exc)} for n in threads]
    runs = []
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".peer-") as tmp:
        path = write_gguf(root, manifest, Path(tmp) / "model.gguf", qtype)
        for n in threads:
            job = {"path": str(path), "threads": n, "prompt": prompt.tolist(), "tokens": tokens.tolist()}
            result = run_apart([sys.executable, "-m", "moedge.exporter.llama_peer"], job, "llama.cpp")
            runs.append({"name": name, "threads": n, **result})
    return runs


def measure_peers(bundle: str | Path, threads: list[int], prompt_tokens: int, new_tokens: int, seed: int,
                  ours: dict, names: list[str] | None = None) -> list[dict]:
    """Each peer of `names` (default: all of `PEERS`) at each thread count, as ms/token and the ratio to our
    median at that count (and, for llama.cpp, prefill tokens/s and its ratio to ours)."""
    root = Path(bundle)
    manifest = read_manifest(root)
    prompt, tokens = _token_stream(manifest.spec.vocab_size, prompt_tokens, new_tokens, seed)
    our = {r["threads"]: r for r in ours["results"]}
    peers = []
    names = names or PEERS
    for name, run in (("onnxruntime-full-graph", ort_full_graph_ms), ("pytorch-eager", torch_eager_ms)):
        for n in threads if name in names else ():
            try:
                peers.append({"name": name, "threads": n, "decode_ms_median": run(root, manifest, n, prompt, tokens)})
            except ExportError as exc:  # e.g. no full graph of int4 experts
                peers.append({"name": name, "threads": n, "skipped": str(exc)})
    if "llama.cpp" in names:
        peers += llama_cpp_runs(root, manifest, threads, prompt, tokens)
    for peer in peers:
        if "decode_ms_median" in peer:
            peer["ratio_to_ours"] = peer["decode_ms_median"] / our[peer["threads"]]["decode_ms_median"]
        if "prefill_tokens_per_s" in peer:
            peer["prefill_ratio_to_ours"] = peer["prefill_tokens_per_s"] / our[peer["threads"]]["prefill_tokens_per_s"]
    return peers
