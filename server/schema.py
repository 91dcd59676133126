"""Requests to /v1/completions and /v1/chat/completions, validated and turned into token ids.

Unknown fields are ignored (as by other local servers); known ones are checked for type and range,
and fields this server does not implement are refused unless they hold their neutral value.
"""

from __future__ import annotations

from dataclasses import dataclass

from moedge.runtime import InputError, Model
from moedge.runtime.chat import chat_prompt
from moedge.runtime.inputs import check_tokens

from . import fields
from .errors import bad_request, unknown_model

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context
ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class Generation:
    """What the worker runs: prompt token ids and the sampling settings."""

    prompt: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ValidRequest:
    """A validated request: its generation, how to answer, and the text to echo before the completion."""

    generation: Generation
    stream: bool = False
    include_usage: bool = False
    echo: str = ""


def completion_request(body: dict, model: Model, name: str) -> ValidRequest:
    """Validate a /v1/completions body; the prompt is a string or token ids (or a one-element array of either)."""
    _check_model(body, name)
    prompt = _prompt_ids(body.get("prompt"), model)
    generation = _generation(body, model, prompt, "prompt", COMPLETION_DEFAULT_MAX_TOKENS)
    echo = model.decode_text(prompt) if fields.boolean(body, "echo") else ""
    return _request(body, generation, echo)


def chat_request(body: dict, model: Model, name: str) -> ValidRequest:
    """Validate a /v1/chat/completions body; the messages are rendered with the bundle's chat template."""
    _check_model(body, name)
    messages = _messages(body.get("messages"))
    try:
        prompt = chat_prompt(model, messages)
    except InputError as exc:
        raise bad_request(str(exc), "messages") from None
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return _request(body, _generation(body, model, prompt, "messages", None, limit), "")


def _check_model(body: dict, name: str) -> None:
    fields.refuse_unsupported(body)
    if fields.text(body, "model") != name:
        raise unknown_model(body["model"], name)


def _request(body: dict, generation: Generation, echo: str) -> ValidRequest:
    stream = fields.boolean(body, "stream")
    options = fields.obj(body, "stream_options")
    if options and not stream:
        raise bad_request("stream_options needs stream: true", "stream_options")
    return ValidRequest(generation, stream, fields.boolean(options, "include_usage"), echo)


def _generation(body: dict, model: Model, prompt: list[int], prompt_field: str, default_max: int | None,
                limit: str = "max_tokens") -> Generation:
    """The sampling fields, and the completion's length (the `limit` field) checked against the context."""
    context = model.spec.max_seq_len
    max_tokens = fields.integer(body, limit, default_max, 1)
    if max_tokens is None and len(prompt) >= context:
        raise bad_request(f"The prompt is {len(prompt)} tokens, which leaves no room for a completion in this "
                          f"model's context of {context} tokens", prompt_field, "context_length_exceeded")
    max_tokens = context - len(prompt) if max_tokens is None else max_tokens
    if len(prompt) + max_tokens > context:
        raise bad_request(f"This model's maximum context length is {context} tokens, however you requested "
                          f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the prompt, {max_tokens} for the "
                          f"completion). Please reduce the prompt or {limit}.", prompt_field,
                          "context_length_exceeded")
    return Generation(prompt, max_tokens, temperature=fields.number(body, "temperature", 1.0, 0.0, 2.0),
                      top_p=fields.number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
                      top_k=fields.integer(body, "top_k", 0, 0), seed=fields.integer(body, "seed", None, 0),
                      stop=fields.stop(body))


def _prompt_ids(prompt, model: Model) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        ids = model.encode(prompt)
        if not ids:
            raise bad_request("prompt is empty", "prompt")
        return ids
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        raise bad_request(f"one prompt per request, got {len(prompt)}", "prompt")
    if not isinstance(prompt, list):
        raise bad_request(f"prompt must be a string or an array of token ids, got {fields.describe(prompt)}"
                          if prompt is not None else "prompt is required", "prompt")
    try:
        return check_tokens(prompt, model.spec.vocab_size).tolist()
    except InputError as exc:
        raise bad_request(f"prompt: {exc}", "prompt") from None


def _messages(messages) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty array of {role, content} objects", "messages")
    return [_message(m, i) for i, m in enumerate(messages)]


def _message(message, i: int) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise bad_request(f"{where} must be an object with role and content", "messages")
    role = message.get("role")
    if role not in ROLES:
        raise bad_request(f"{where}.role must be one of {', '.join(ROLES)}, got {fields.describe(role)}", "messages")
    content = message.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        content = "\n".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise bad_request(f"{where}.content must be a string or an array of text parts, got "
                          f"{fields.describe(content)}", "messages")
    return {"role": "system" if role == "developer" else role, "content": content}
