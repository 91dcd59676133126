"""The tokenizer, bos/eos ids and chat template a GGUF file carries in its metadata.

A GGUF holds no `tokenizer.json`: its vocabulary, merges and token types are `tokenizer.ggml.*` keys.
transformers' GGUF converter (`transformers.integrations.gguf`) builds the fast tokenizer they
describe (byte-level BPE, sentencepiece, ...); its `tokenizer.json` goes into the bundle.
"""

from __future__ import annotations

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
    except (ValueError, KeyError, TypeError, IndexError) as exc:
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
