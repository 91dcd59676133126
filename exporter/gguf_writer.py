"""A bundle's weights as a GGUF file, so llama.cpp can run the very same model (`moedge bench --peers`).

Every tensor is the bundle's own (int8 experts, head and dense linears dequantized), re-quantized to
a GGUF type (Q8_0 by default: llama.cpp's int8, one scale per 32 weights; Q4_0 for 4-bit bundles:
the same grid as our int4 group 32, with a float16 scale). Two GGUF architectures
cover the canonical models this can express exactly: "llama" (dense or Mixtral-style MoE; q and k rows
permuted to llama.cpp's interleaved RoPE, as `convert_hf_to_gguf.py` does) and "olmoe" (q/k norm over
all heads, un-normalised top-k weights). The vocabulary is the bundle's byte-level BPE tokenizer when it has
one, else placeholder strings (peers are fed token ids).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from ..runtime.bundle import Manifest
from ..runtime.spec import ModelSpec
from ..runtime.tensor_names import template
from .bundle_weights import bundle_float_tensors
from .gguf_names import INTERLEAVED_ROPE, ROPE_PERMUTED, gguf_name, rope_interleaved
from .gguf_tokenizer import add_tokenizer
from .source import ExportError

FLOAT_ONLY = ("ffn_gate_inp.weight",)  # kept float32 like llama.cpp's converter (with every 1-D tensor)


def gguf_architecture(spec: ModelSpec) -> str:
    """The GGUF architecture that computes exactly what `spec` does; ExportError naming what it lacks."""
    routing = spec.routing
    unsupported = [name for name, present in (
        ("attention biases", spec.attention_bias), ("multipliers", (spec.embedding_multiplier, spec.residual_multiplier,
                                                                   spec.logits_divisor) != (1.0, 1.0, 1.0)),
        ("an attention scale", spec.attention_scale is not None), ("per-head q/k norm", spec.qk_norm == "head"),
        ("a shared expert", routing is not None and routing.shared_expert_size > 0),
        ("sigmoid routing or scaled weights", routing is not None and (routing.score_func != "softmax"
                                                                        or routing.scaling_factor != 1.0)),
        ("dense and MoE layers mixed", spec.is_moe and len(spec.moe_layers) != spec.n_layers)) if present]
    if spec.qk_norm == "full":
        if routing is None or routing.normalize_top_k or spec.n_kv_heads != spec.n_heads:
            unsupported.append("q/k norm without OLMoE's un-normalised top-k and as many k as q heads")
        arch = "olmoe"
    else:
        if routing is not None and not routing.normalize_top_k:
            unsupported.append("un-normalised top-k without OLMoE's q/k norm")
        arch = "llama"
    if unsupported:
        raise ExportError(f"no GGUF architecture runs this model as it is: {', '.join(unsupported)}")
    return arch


def _metadata(writer: gguf.GGUFWriter, spec: ModelSpec, file_type: int) -> None:
    writer.add_context_length(spec.max_seq_len)
    writer.add_embedding_length(spec.hidden_size)
    writer.add_block_count(spec.n_layers)
    writer.add_feed_forward_length(spec.expert_intermediate_size if spec.is_moe else spec.intermediate_size)
    writer.add_head_count(spec.n_heads)
    writer.add_head_count_kv(spec.n_kv_heads)
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_layer_norm_rms_eps(spec.norm_eps)
    writer.add_file_type(file_type)
    if spec.is_moe:
        writer.add_expert_count(spec.routing.n_experts)
        writer.add_expert_used_count(spec.routing.top_k)
        writer.add_expert_feed_forward_length(spec.expert_intermediate_size)


def _vocabulary(writer: gguf.GGUFWriter, root: Path, manifest: Manifest) -> None:
    """The bundle's own byte-level BPE tokenizer when it has one of the model's size, else placeholders."""
    if manifest.tokenizer is not None:
        text = (root / manifest.tokenizer).read_text()
        if len(json.loads(text).get("model", {}).get("vocab", {})) == manifest.spec.vocab_size and \
                add_tokenizer(writer, text, manifest.generation):
            return
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([f"<{i}>" for i in range(manifest.spec.vocab_size)])
    writer.add_token_types([gguf.TokenType.NORMAL] * manifest.spec.vocab_size)
    writer.add_token_merges(["< 0"])


def write_gguf(root: Path, manifest: Manifest, out: Path,
               qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.Q8_0) -> Path:
    """Write the bundle at `root` as the GGUF file `out` with its matrices in `qtype` (a type gguf-py
    quantizes: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1); returns `out`."""
    spec = manifest.spec
    arch = gguf_architecture(spec)
    f32 = qtype == gguf.GGMLQuantizationType.F32
    file_type = gguf.LlamaFileType.ALL_F32 if f32 else gguf.LlamaFileType[f"MOSTLY_{qtype.name}"]
    writer = gguf.GGUFWriter(str(out), arch)
    _metadata(writer, spec, file_type)
    _vocabulary(writer, root, manifest)
    for name, tensor in bundle_float_tensors(root, manifest):
        key, _ = template(name)
        if arch in INTERLEAVED_ROPE and key.endswith(ROPE_PERMUTED):
            tensor = rope_interleaved(tensor, spec.n_heads if "wq" in key else spec.n_kv_heads)
        if tensor.ndim == 1 or gguf_name(name).endswith(FLOAT_ONLY):
            writer.add_tensor(gguf_name(name), tensor)
        else:
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(tensor, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
