"""Tiny random Hugging Face models of every supported family, built with transformers (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=None, rms_norm_eps=1e-5)

# family → (model_type, config overrides). Vocab sizes are not multiples of 8.
FAMILIES: dict[str, tuple[str, dict]] = {
    "mixtral": ("mixtral", dict(vocab_size=203, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                                intermediate_size=32)),
    "qwen2_moe": ("qwen2_moe", dict(vocab_size=211, num_hidden_layers=3, num_key_value_heads=4, num_experts=6,
                                    num_experts_per_tok=3, moe_intermediate_size=24,
                                    shared_expert_intermediate_size=40, intermediate_size=64, mlp_only_layers=[1],
                                    norm_topk_prob=False)),
    "qwen3_moe": ("qwen3_moe", dict(vocab_size=157, head_dim=24, num_experts=8, num_experts_per_tok=4,
                                    moe_intermediate_size=32, intermediate_size=64, norm_topk_prob=True,
                                    tie_word_embeddings=True)),
    "olmoe": ("olmoe", dict(vocab_size=227, num_experts=4, num_experts_per_tok=1, intermediate_size=32,
                            norm_topk_prob=False)),
    "granitemoe": ("granitemoe", dict(vocab_size=199, num_key_value_heads=1, num_local_experts=4,
                                      num_experts_per_tok=2, intermediate_size=32, tie_word_embeddings=True,
                                      embedding_multiplier=12.0, residual_multiplier=0.22,
                                      attention_multiplier=0.0625, logits_scaling=6.0)),
    "llama": ("llama", dict(vocab_size=131, head_dim=16, intermediate_size=64)),
    "mistral": ("mistral", dict(vocab_size=173, num_key_value_heads=4, intermediate_size=64, sliding_window=64)),
    "qwen2": ("qwen2", dict(vocab_size=181, intermediate_size=64, tie_word_embeddings=True)),
    "qwen3": ("qwen3", dict(vocab_size=149, head_dim=24, intermediate_size=64)),
}


def build_hf_model(family: str, seed: int = 0, **config):
    """A seeded random model of `family` (`config` overrides its config): weights ~ N(0, 1/fan_in), norm weights
    in [0.5, 1.5], biases nonzero."""
    model_type, overrides = FAMILIES[family]
    config = AutoConfig.for_model(model_type, **{**COMMON, **overrides, **config})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5)
    return model.eval()


def save_hf_model(model, folder: Path, **kwargs) -> Path:
    model.save_pretrained(folder, **kwargs)
    return folder


CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}{{ eos_token }}"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "hello", "world", "how", "are", "you", "today", "fine",
         "thanks", "what", "is", "your", "name"]


CHAT_VOCAB = 6 + len(WORDS)  # the special tokens and WORDS


def chat_tokenizer():
    """A word-level tokenizer of WORDS with special tokens and CHAT_TEMPLATE (a transformers tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    hf.chat_template = CHAT_TEMPLATE
    return hf
