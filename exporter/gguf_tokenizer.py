"""The tokenizer, bos/eos ids and chat template a GGUF file carries in its metadata, both ways.

A GGUF holds no `tokenizer.json`: its vocabulary, merges and token types are `tokenizer.ggml.*` keys.
Reading, transformers' GGUF converter (`transformers.integrations.gguf`) builds the fast tokenizer they
describe (byte-level BPE, sentencepiece, ...); its `tokenizer.json` goes into the bundle. Writing
(`add_tokenizer`), a byte-level BPE `tokenizer.json` becomes llama.cpp's "gpt2" vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .adapters.generation import GENERATION_IDS, SPECIAL_TOKENS
from .source import ExportError

TOKENIZER_MODEL = "tokenizer.ggml.model"


def gguf_tokenizer_json(path: Path, metadata: dict[str, Any]) -> str | None:
    """The `tokenizer.json` text of the file's tokenizer; None when it has none."""
    if TOKENIZER_MODEL not in metadata:
        return None
    try:
        from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer
    except ImportError:
        raise ExportError("a GGUF file's tokenizer is built by transformers: pip install 'moedge[hf]'") from None
    try:
        architecture, tokenizer, _ = get_gguf_tokenizer(str(path))
        fast, _ = convert_gguf_tokenizer(architecture, tokenizer)
    except Exception as exc:  # metadata of any shape; `tokenizers` raises a plain Exception
        raise ExportError(f"{path}: cannot build its tokenizer ({metadata[TOKENIZER_MODEL]!r}): {exc}") from None
    return fast.to_str()


def gguf_generation(metadata: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `generation` object: bos/eos ids, chat template and its special tokens' text."""
    out: dict[str, Any] = {}
    for key in GENERATION_IDS:
        if f"tokenizer.ggml.{key}" in metadata:
            out[key] = int(metadata[f"tokenizer.ggml.{key}"])
    template = metadata.get("tokenizer.chat_template")
    if isinstance(template, str):
        out["chat_template"] = template
        tokens = metadata.get("tokenizer.ggml.tokens") or []
        ids = {name: metadata.get(f"tokenizer.ggml.{key}_token_id")
               for name, key in zip(SPECIAL_TOKENS, ("bos", "eos", "unknown", "padding"), strict=True)}
        out["special_tokens"] = {name: tokens[i] for name, i in ids.items() if i is not None and 0 <= i < len(tokens)}
    return out


def add_tokenizer(writer, tokenizer_json: str, generation: dict[str, Any]) -> bool:
    """Write a byte-level BPE `tokenizer.json` (and the bos/eos ids and chat template of `generation`) as
    GGUF tokenizer metadata; False, writing nothing, for another kind of tokenizer."""
    import gguf

    data = json.loads(tokenizer_json)
    if data.get("model", {}).get("type") != "BPE" or (data.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        return False
    vocab = data["model"]["vocab"]
    special = {t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(sorted(vocab, key=vocab.get))
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                            for i in range(len(vocab))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id)):
        if isinstance(generation.get(key), int):
            add(generation[key])
    if generation.get("chat_template"):
        writer.add_chat_template(generation["chat_template"])
    return True
