"""Tiny GGUF files written with the `gguf` package from tiny random Hugging Face models (no downloads).

The tensors are named by gguf's own Hugging Face -> GGUF name map (`gguf.get_tensor_name_map`, what
llama.cpp's converter uses), q/k rows of llama-style architectures are permuted as llama.cpp's
converter permutes them, and matrices are quantized by `gguf.quants` (F32, F16, BF16, Q8_0, Q4_0,
Q4_1, Q5_0, Q5_1; rows whose width is not a multiple of the type's block stay F32, as in llama.cpp).
K-quants have no quantizer in gguf-py: `k_quant_blocks` writes valid random blocks instead.
`model_from_gguf` loads a file's dequantized tensors back into the Hugging Face model: the reference
for the architectures transformers' `gguf_file=` loading does not cover.
The tokenizer is the default sample's byte-level BPE, written as `tokenizer.ggml.*` metadata by the
exporter's own `add_tokenizer` (what the llama.cpp peer's files carry).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np
import torch

from hf_tiny import COMMON, FAMILIES
from moedge.exporter.gguf_tokenizer import add_tokenizer

SAMPLE_TOKENIZER = Path(__file__).resolve().parents[1] / "samples" / "default-moe" / "tokenizer.json"
VOCAB = 2048  # the sample tokenizer's
CHAT_TEMPLATE = "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
ARCH = {"mixtral": "llama", "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen2_moe": "qwen2moe",
        "qwen3_moe": "qwen3moe", "olmoe": "olmoe", "granitemoe": "granitemoe"}
PERMUTED = ("llama", "granitemoe")  # llama.cpp's converter permutes q/k rows of these
F16_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}  # d, dmin bytes


# transformers 5.24's `gguf_file=` loading reads no head_dim for qwen3 and no expert width for qwen3moe (it
# takes its config defaults, 128 and 768): the tiny models use those. llama.cpp's qwen2moe has no dense layers.
GGUF_OVERRIDES = {"qwen3": dict(head_dim=128), "qwen3_moe": dict(moe_intermediate_size=768),
                  "qwen2_moe": dict(mlp_only_layers=[])}
TRANSFORMERS_LOADS = ("llama", "qwen2", "qwen3", "qwen3_moe")  # families whose GGUF transformers loads right


def gguf_family(family: str, **overrides) -> tuple[str, dict]:
    """`hf_tiny`'s (model_type, config) of `family`, as a GGUF file can hold it, with the sample tokenizer."""
    model_type, config = FAMILIES[family]
    return model_type, {**COMMON, **config, **GGUF_OVERRIDES.get(family, {}), "vocab_size": VOCAB, **overrides}


def llama_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py): rotate-half pairs to interleaved rows."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def quantizable(tensor: np.ndarray, qtype: gguf.GGMLQuantizationType) -> bool:
    """Whether llama.cpp would store `tensor` as `qtype` (a matrix whose rows fit the blocks)."""
    return tensor.ndim >= 2 and tensor.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0


def k_quant_blocks(rows: tuple[int, ...], cols: int, qtype: gguf.GGMLQuantizationType, scale: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Random valid K-quant blocks for a [*rows, cols] tensor, their super-block scales set to `scale`."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (int(np.prod(rows)) * cols // block, size), dtype=np.uint8)
    for offset in F16_FIELDS[qtype.name]:
        blocks[:, offset:offset + 2] = np.full((len(blocks), 1), scale, np.float16).view(np.uint8)
    return blocks.reshape(*rows, cols // block * size)


def _gguf_tensors(model, arch: str) -> list[tuple[str, str, np.ndarray]]:
    """(HF name, GGUF name, tensor) for every tensor of the model, q/k permuted as llama.cpp permutes them."""
    config = model.config
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch),
                                     config.num_hidden_layers)
    out = []
    for name, tensor in model.state_dict().items():
        w = tensor.detach().float().numpy()
        layer = name.split(".")[2] if ".layers." in name else None
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if name.endswith("experts.gate_up_proj"):
            half = w.shape[1] // 2
            out += [(name, f"blk.{layer}.ffn_gate_exps.weight", w[:, :half]),
                    (name, f"blk.{layer}.ffn_up_exps.weight", w[:, half:])]
            continue
        if name.endswith("experts.down_proj"):
            out.append((name, f"blk.{layer}.ffn_down_exps.weight", w))
            continue
        gguf_name = names.get_name(name.replace(".router.weight", ".router.layer.weight"),
                                   try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise KeyError(f"gguf has no name for {name}")
        if arch in PERMUTED and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            w = llama_permute(w, _heads(config, gguf_name))
        if gguf_name.endswith("ffn_gate_inp_shexp.weight"):
            w = w[0]  # llama.cpp stores the shared expert's gate as a vector
        out.append((name, gguf_name, np.ascontiguousarray(w)))
    return out


def _heads(config, gguf_name: str) -> int:
    return config.num_attention_heads if "attn_q" in gguf_name else config.num_key_value_heads


def _metadata(writer: gguf.GGUFWriter, config, arch: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    if experts:
        writer.add_expert_count(experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
        writer.add_expert_feed_forward_length(getattr(config, "moe_intermediate_size", config.intermediate_size))
    if getattr(config, "shared_expert_intermediate_size", 0):
        writer.add_expert_shared_feed_forward_length(config.shared_expert_intermediate_size)
    if arch == "granitemoe":
        writer.add_attention_scale(config.attention_multiplier)
        writer.add_embedding_scale(config.embedding_multiplier)
        writer.add_residual_scale(config.residual_multiplier)
        writer.add_logit_scale(config.logits_scaling)


def write_gguf_model(model, path: Path, qtype: gguf.GGMLQuantizationType,
                     k_quants: Sequence[gguf.GGMLQuantizationType] = (), extra=None, seed: int = 0) -> Path:
    """Write `model` (a tiny HF model) as the GGUF file `path`, its matrices in `qtype`.

    `k_quants`: matrices whose rows are multiples of 256 get random blocks of these K-quant types instead,
    one type after the other (their weights are then the file's, not the model's). `extra(writer)` adds
    metadata.
    """
    arch = ARCH[model.config.model_type]
    writer = gguf.GGUFWriter(str(path), arch)
    _metadata(writer, model.config, arch)
    add_tokenizer(writer, SAMPLE_TOKENIZER.read_text(), {"bos_token_id": 0, "eos_token_id": 0,
                                                         "chat_template": CHAT_TEMPLATE})
    if extra:
        extra(writer)
    rng, k_types = np.random.default_rng(seed), itertools.cycle(k_quants)
    for _, name, w in _gguf_tensors(model, arch):
        router = name.endswith(("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight"))
        if k_quants and not router and quantizable(w, k_quants[0]):
            k_quant = next(k_types)
            writer.add_tensor(name, k_quant_blocks(w.shape[:-1], w.shape[-1], k_quant, 1 / (512 * w.shape[-1] ** 0.5),
                                                   rng), raw_dtype=k_quant)
        elif not router and quantizable(w, qtype) and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, w.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def model_from_gguf(model, path: Path):
    """`model` with every tensor replaced by the GGUF file's, dequantized by gguf and un-permuted
    (what transformers' `gguf_file=` loading does, for the architectures it does not load)."""
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    arch = ARCH[model.config.model_type]
    parts: dict[str, list[np.ndarray]] = {}
    for hf_name, gguf_name, w in _gguf_tensors(model, arch):
        t = tensors[gguf_name]
        value = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        if arch in PERMUTED and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = _heads(model.config, gguf_name)
            value = value.reshape(heads, value.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
        parts.setdefault(hf_name, []).append(value)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in parts:
                p.copy_(torch.from_numpy(np.concatenate(parts[name], axis=1 if len(parts[name]) > 1 else 0)
                                         .reshape(p.shape)))
    return model
