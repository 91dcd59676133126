"""The OpenAI JSON shapes of answers: a whole completion, and the chunks of a streamed one."""

from __future__ import annotations

import secrets
import time
from typing import Any

from .worker import Finished


def usage(done: Finished) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


class TextReply:
    """Answers to /v1/completions (object "text_completion", a choice's `text`)."""

    prefix, whole_object, chunk_object = "cmpl", "text_completion", "text_completion"

    def __init__(self, model: str):
        self.id = f"{self.prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def choice(self, text: str, reason: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}

    def delta(self, text: str, reason: str | None) -> dict[str, Any]:
        return self.choice(text, reason)

    def opening(self) -> dict[str, Any] | None:
        """The first chunk of a stream, before any text (chat: the assistant role)."""
        return None

    def whole(self, text: str, done: Finished) -> dict[str, Any]:
        """The answer when not streaming."""
        return {**self._head(self.whole_object), "choices": [self.choice(text, done.reason)], "usage": usage(done)}

    def chunk(self, text: str, reason: str | None = None) -> dict[str, Any]:
        """One chunk of a stream: a piece of text, or (with `reason`) the end of the choice."""
        return {**self._head(self.chunk_object), "choices": [self.delta(text, reason)]}

    def usage_chunk(self, done: Finished) -> dict[str, Any]:
        """The last chunk when the client asked for `stream_options.include_usage`."""
        return {**self._head(self.chunk_object), "choices": [], "usage": usage(done)}


class ChatReply(TextReply):
    """Answers to /v1/chat/completions (a choice's `message`, a chunk's `delta`)."""

    prefix, whole_object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def choice(self, text: str, reason: str | None) -> dict[str, Any]:
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": reason}

    def delta(self, text: str, reason: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": {"content": text} if reason is None else {}, "logprobs": None,
                "finish_reason": reason}

    def opening(self) -> dict[str, Any] | None:
        return {**self._head(self.chunk_object),
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}]}
