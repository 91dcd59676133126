"""The one table between canonical tensor names and GGUF ones, and llama.cpp's q/k row order.

Used both ways: `gguf_writer` writes a bundle for the llama.cpp peer, `gguf_source` imports a GGUF file.
GGUF names are the same in every architecture (`blk.{i}.attn_q.weight`, stacked experts
`blk.{i}.ffn_gate_exps.weight` [E, I, D], ...). Architectures whose llama.cpp RoPE is the interleaved
("normal") kind store q and k rows permuted from Hugging Face's rotate-half order.
"""

from __future__ import annotations

import numpy as np

from ..runtime.bundle import EMBEDDING, HEAD_NORM
from ..runtime.tensor_names import LM_HEAD, template

GGUF_NAMES = {  # canonical template -> GGUF tensor name
    EMBEDDING: "token_embd.weight", HEAD_NORM: "output_norm.weight", LM_HEAD: "output.weight",
    **{f"layers.{{i}}.{ours}": f"blk.{{i}}.{theirs}" for ours, theirs in (
        ("attn_norm.weight", "attn_norm.weight"), ("attn.wq.weight", "attn_q.weight"),
        ("attn.wk.weight", "attn_k.weight"), ("attn.wv.weight", "attn_v.weight"),
        ("attn.wo.weight", "attn_output.weight"), ("attn.q_norm.weight", "attn_q_norm.weight"),
        ("attn.k_norm.weight", "attn_k_norm.weight"), ("ffn_norm.weight", "ffn_norm.weight"),
        ("attn.wq.bias", "attn_q.bias"), ("attn.wk.bias", "attn_k.bias"), ("attn.wv.bias", "attn_v.bias"),
        ("ffn.gate.weight", "ffn_gate.weight"), ("ffn.up.weight", "ffn_up.weight"),
        ("ffn.down.weight", "ffn_down.weight"), ("ffn.router.weight", "ffn_gate_inp.weight"),
        ("ffn.experts.gate", "ffn_gate_exps.weight"), ("ffn.experts.up", "ffn_up_exps.weight"),
        ("ffn.experts.down", "ffn_down_exps.weight"), ("ffn.shared.gate.weight", "ffn_gate_shexp.weight"),
        ("ffn.shared.up.weight", "ffn_up_shexp.weight"), ("ffn.shared.down.weight", "ffn_down_shexp.weight"),
        ("ffn.shared_gate.weight", "ffn_gate_inp_shexp.weight"))}}
INTERLEAVED_ROPE = ("llama", "granite", "granitemoe")  # GGUF architectures whose q/k rows are permuted
ROPE_PERMUTED = ("attn.wq.weight", "attn.wk.weight")


def gguf_name(name: str) -> str:
    """The GGUF name of the canonical tensor `name`; KeyError if GGUF has none."""
    key, layer = template(name)
    return GGUF_NAMES[key].replace("{i}", str(layer))


def rope_interleaved(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of q or k reordered from rotate-half RoPE pairs (i, i + d/2) to interleaved ones (2i, 2i + 1)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def rope_rotate_half(weight: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of `rope_interleaved`: llama.cpp's stored q/k rows back in rotate-half order."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, -1).swapaxes(1, 2).reshape(weight.shape)
