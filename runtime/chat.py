"""Chat prompts: a bundle's chat template (Jinja, from the source checkpoint) rendered to token ids.

Rendered as transformers does: a sandboxed Jinja environment with `trim_blocks`/`lstrip_blocks`,
the loop-controls extension, a `tojson` filter and `raise_exception`/`strftime_now` globals; the
special-token strings (`bos_token`, ...) are template variables. The rendered text already holds
its special tokens, so it is encoded without adding any.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import InputError

if TYPE_CHECKING:
    from .model import Model


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=4)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat(template: str, messages: list[dict[str, str]], special_tokens: dict[str, str] | None = None,
                add_generation_prompt: bool = True) -> str:
    """The text of `messages` ({"role", "content"} dicts) under a chat template."""
    try:
        return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **(special_tokens or {}))
    except jinja2.TemplateError as exc:
        raise InputError(f"the chat template failed: {exc}") from None


def chat_prompt(model: Model, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` rendered with the bundle's chat template, ready for `generate`."""
    generation = model.manifest.generation
    template = generation.get("chat_template")
    if not template:
        raise InputError("this bundle has no chat template (the source checkpoint had none)")
    if model.tokenizer is None:
        raise InputError("this bundle has no tokenizer")
    text = render_chat(template, messages, generation.get("special_tokens"), add_generation_prompt)
    return model.tokenizer.encode(text, add_special_tokens=False).ids
