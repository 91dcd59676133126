"""Per-expert bit widths for a mixed bundle: which experts stay int8 while the others are int4.

Each expert is scored on calibration tokens by how much its int4 round trip changes its layer's
output: the sum, over the (token, slot) pairs routed to it, of (routing weight · ‖expert₄(x) − expert(x)‖)².
Frequently chosen experts and fragile ones score high; the `int8_fraction` of all experts with the
highest scores stay int8. Calibration is a text file tokenized by the model's own tokenizer, or else a
seeded random token stream (which exercises the routers less like real text does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from ..quant import SCHEMES, dequantize
from .checkpoint import source_model
from .model import Transformer
from .source import ExportError, Source

CALIBRATION_TOKENS = 1024
SEED = 0


def calibration_tokens(source: Source, text_file: Path | None, count: int = CALIBRATION_TOKENS) -> np.ndarray:
    """Token ids to calibrate on: the first `count` of `text_file` tokenized, else a seeded random stream."""
    if text_file is None:
        return np.random.default_rng(SEED).integers(0, source.spec.vocab_size, count)
    if source.tokenizer_file is None:
        raise ExportError("--calibration needs the model's tokenizer (tokenizer.json), and this model has none")
    try:
        text = Path(text_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read the calibration text {text_file}: {exc}") from None
    ids = Tokenizer.from_file(str(source.tokenizer_file)).encode(text).ids[:count]
    if len(ids) < 2:
        raise ExportError(f"the calibration text {text_file} has fewer than 2 tokens")
    return np.array(ids)


def _swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    return (F.silu(x @ gate.T) * (x @ up.T)) @ down.T


def expert_scores(model: Transformer, tokens: np.ndarray, group_size: int) -> dict[int, np.ndarray]:
    """MoE layer index → [E] scores (see the module doc), from `tokens` run in windows of the context."""
    captured: dict[int, list] = {}
    hooks = [block.ffn.experts.register_forward_hook(
        lambda _m, args, _out, i=i: captured.setdefault(i, []).append(args))
        for i, block in enumerate(model.layers) if model.spec.layer_kinds[i] == "moe"]
    try:
        with torch.no_grad():
            for start in range(0, len(tokens), model.spec.max_seq_len):
                model(torch.from_numpy(np.asarray(tokens[start:start + model.spec.max_seq_len]))[None])
    finally:
        for hook in hooks:
            hook.remove()
    int4 = SCHEMES["int4"]
    scores = {}
    with torch.no_grad():
        for layer, calls in captured.items():
            experts = model.layers[layer].ffn.experts
            rounded = [torch.from_numpy(dequantize(int4.quantize(w.numpy(), group_size))) for w in
                       (experts.gate, experts.up, experts.down)]
            score = np.zeros(experts.gate.shape[0])
            for x, weights, idx in calls:
                for e in idx.unique().tolist():
                    rows, slot = (idx == e).nonzero(as_tuple=True)
                    exact = _swiglu(x[rows], experts.gate[e], experts.up[e], experts.down[e])
                    approx = _swiglu(x[rows], *(w[e] for w in rounded))
                    score[e] += float(((approx - exact) * weights[rows, slot, None]).square().sum())
            scores[layer] = score
    return scores


def choose_schemes(scores: dict[int, np.ndarray], int8_fraction: float) -> dict[int, list[str]]:
    """Each expert's scheme: int8 for the `int8_fraction` of all experts that score highest, int4 for the rest."""
    flat = np.concatenate([scores[layer] for layer in sorted(scores)])
    keep = round(int8_fraction * flat.size)
    chosen = np.zeros(flat.size, dtype=bool)
    chosen[np.argsort(-flat, kind="stable")[:keep]] = True
    out, start = {}, 0
    for layer in sorted(scores):
        n = scores[layer].size
        out[layer] = ["int8" if c else "int4" for c in chosen[start:start + n]]
        start += n
    return out


def mixed_schemes(source: Source, int8_fraction: float, group_size: int,
                  calibration: Path | None) -> dict[int, list[str]]:
    """The scheme of every expert of `source` for a mixed bundle (see the module doc)."""
    tokens = calibration_tokens(source, calibration)
    return choose_schemes(expert_scores(source_model(source), tokens, group_size), int8_fraction)
