"""Peers for `moedge bench --peers`: the same bundle's weights run by other engines, same token stream.

- `onnxruntime-full-graph`: one ONNX graph of the whole model, every expert computed
  (see `full_graph.py`), with onnxruntime's default session options.
- `pytorch-eager`: the canonical PyTorch model in float32 with a KV cache, its expert weights
  the bundle's int8 experts dequantized.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ..quant import QuantizedTensor, dequantize, from_unsigned
from ..runtime import kernels
from ..runtime.bundle import Manifest, read_manifest
from ..runtime.expert_store import layer_bytes
from ..runtime.head import tensor_view
from ..runtime.rope import rope_rotation
from ..runtime.tensor_names import LM_HEAD, expert_names
from ..runtime.tools.bench import WARMUP_TOKENS
from .full_graph import write_full_graph
from .model import Transformer

EXPERT_MATRICES = {"gate": kernels.GATE, "up": kernels.UP, "down": kernels.DOWN}


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
    dense = np.fromfile(root / manifest.dense_file, dtype=np.uint8)
    head = {key: tensor_view(dense, manifest, name) for key, name in manifest.head.items()}
    state = {name: torch.from_numpy(_dense_float(dense, manifest, name))
             for name in model.state_dict() if name in manifest.dense_tensors}
    if manifest.experts is not None:
        index = manifest.experts
        experts = np.memmap(root / index.file, dtype=np.uint8, mode="r")
        for layer, offsets in index.layers.items():  # read as the runtime reads them
            record = layer_bytes(experts, index, np.array(offsets, dtype=np.int64), manifest.spec)
            for part, name in expert_names(layer).items():
                stacked = np.empty((len(offsets), *index.tensors[part].shape), dtype=np.float32)
                for e in range(len(offsets)):
                    kernels.dequantize(record, e, EXPERT_MATRICES[part], stacked[e])
                state[name] = torch.from_numpy(stacked)
    missing = set(model.load_state_dict(state, strict=False).missing_keys) - {LM_HEAD}
    if missing:
        raise ValueError(f"the bundle lacks tensors the model needs: {sorted(missing)}")
    model.lm_head = torch.nn.Linear(manifest.spec.hidden_size, manifest.spec.vocab_size, bias=False)
    with torch.no_grad():  # the bundle's head (quantized when the bundle is), untied from the embedding
        model.lm_head.weight.copy_(torch.from_numpy(dequantize(QuantizedTensor(
            q=head["weight"], scale=head["scale"], group_size=head["weight"].shape[1] // head["scale"].shape[1]))))
    return model.eval()


def _dense_float(dense: np.ndarray, manifest: Manifest, name: str) -> np.ndarray:
    """A dense tensor as float32; int8 linears (uint8 codes + scales) are dequantized."""
    tensor = tensor_view(dense, manifest, name)
    if tensor.dtype != np.uint8:
        return tensor.copy()
    scale = tensor_view(dense, manifest, f"{name}_scale")
    return (from_unsigned(tensor) * scale[:, :, None]).reshape(tensor.shape[0], -1)


def torch_eager_ms(root: Path, manifest: Manifest, threads: int, prompt, tokens) -> float:
    """Median decode ms/token of PyTorch eager float32 with a KV cache."""
    torch.set_num_threads(threads)
    model = torch_model_from_bundle(root, manifest)
    cache = model.new_cache()
    with torch.inference_mode():
        model(torch.from_numpy(prompt)[None], cache)
        return _median_ms(lambda t: model(torch.tensor([[t]]), cache), tokens)


def measure_peers(bundle: str | Path, threads: list[int], prompt_tokens: int, new_tokens: int, seed: int,
                  ours: dict) -> list[dict]:
    """Each peer at each thread count, as ms/token and the ratio to our median at that count."""
    root = Path(bundle)
    manifest = read_manifest(root)
    prompt, tokens = _token_stream(manifest.spec.vocab_size, prompt_tokens, new_tokens, seed)
    our_ms = {r["threads"]: r["decode_ms_median"] for r in ours["results"]}
    peers = []
    for name, run in (("onnxruntime-full-graph", ort_full_graph_ms), ("pytorch-eager", torch_eager_ms)):
        for n in threads:
            ms = run(root, manifest, n, prompt, tokens)
            peers.append({"name": name, "threads": n, "decode_ms_median": ms, "ratio_to_ours": ms / our_ms[n]})
    return peers
