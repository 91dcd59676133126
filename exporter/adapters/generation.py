"""What travels with the weights: tokenizer file, generation ids, chat template and special tokens.

Ids come from `generation_config.json` when present (what `model.generate` uses), else from
`config.json`. The chat template is read from `chat_template.jinja`, `chat_template.json` or
`tokenizer_config.json` (newest convention first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..source import ExportError
from .config import HFConfig

GENERATION_IDS = ("bos_token_id", "eos_token_id")
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot read: {exc}") from None
    return data if isinstance(data, dict) else {}


def _chat_template(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = _read_json(folder / "chat_template.json").get("chat_template") or tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # an AddedToken written as a dict
        value = value.get("content")
    return value if isinstance(value, str) else None


def generation_defaults(folder: Path, config: HFConfig) -> dict[str, Any]:
    """The manifest's `generation` object for a Hugging Face checkpoint folder."""
    generation_config = _read_json(folder / "generation_config.json")
    out: dict[str, Any] = {}
    for key in GENERATION_IDS:
        value = generation_config.get(key, config.get(key))
        if value is not None:
            out[key] = value
    tokenizer_config = _read_json(folder / "tokenizer_config.json")
    template = _chat_template(folder, tokenizer_config)
    if template is not None:
        out["chat_template"] = template
        tokens = {key: _token_text(tokenizer_config.get(key)) for key in SPECIAL_TOKENS}
        out["special_tokens"] = {k: v for k, v in tokens.items() if v is not None}
    return out


def tokenizer_file(folder: Path) -> Path | None:
    path = folder / "tokenizer.json"
    return path if path.is_file() else None
