"""A multi-turn conversation kept in one session's KV cache: each turn feeds only what the cache lacks.

Every turn renders the whole conversation (through the bundle's chat template, or as plain text for a
bundle without one) and compares it with the tokens the cache holds: the common prefix stays, the rest
is fed. Normally that is just the new turn. Where the rendering differs from what the cache holds (a
template that rewrites earlier turns, a reply whose text re-tokenizes differently) the cache is rewound
to the first difference, and `Turn.rewound` says how many tokens were re-read. When the conversation
no longer fits the context, the oldest exchanges are dropped (`Turn.dropped`) and the rest re-read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from .chat import chat_prompt
from .errors import InputError
from .generate import Token, stream
from .inputs import check_sampling

if TYPE_CHECKING:
    from .model import Model

REPLY_SHARE = 4  # dropping old exchanges leaves at least 1/REPLY_SHARE of the context for the reply


def plain_text(messages: list[dict[str, str]]) -> str:
    """The conversation as one text (no template): a message the user typed starts on a new line."""
    text = ""
    for m in messages:
        if m["role"] == "user" and text and not text.endswith("\n"):
            text += "\n"
        text += m["content"]
    return text


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids `a` and `b` share."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


class Turn:
    """One exchange: iterate it for the reply's tokens (the prompt is fed on the first step).

    Before iterating, `kept`, `fed`, `rewound`, `history_changed` and `dropped` say what the turn does to the
    cache (a reply's last tokens often re-tokenize differently once the next message follows: that rewinds
    without changing the history). After iterating, or an interruption, `text` is the reply so far and `cut`
    says whether it hit the end of the context.
    """

    def __init__(self, conversation: Conversation, prompt: list[int], kept: int, rewound: int, dropped: int,
                 history_changed: bool):
        self.conversation = conversation
        self.prompt = prompt  # the whole rendered conversation, up to the reply
        self.kept, self.rewound, self.dropped = kept, rewound, dropped
        self.history_changed = history_changed  # rewound into what came before the last reply
        self.fed = len(prompt) - kept
        self.generated = 0
        self.cut = False
        self.text = ""
        self._started = False

    def __iter__(self) -> Iterator[Token]:
        if self._started:
            raise InputError("a turn's reply can be read only once")
        self._started = True
        c = self.conversation
        room = c.session.cache.capacity - len(self.prompt)  # every token yielded fits in the cache
        limit = min(c.max_new_tokens, room)
        c.tokens = list(self.prompt)
        reply = c.messages[-1]
        try:
            for token in stream(c.session, c.model.tokenizer, self.prompt[self.kept:], limit, c.model.eos_ids,
                                seed=int(c.rng.integers(2**63)), **c.sampling):
                c.tokens.append(token.id)
                self.generated += 1
                self.text += token.text
                reply["content"] = self.text
                yield token
            self.cut = self.generated == room
        finally:  # also on Ctrl-C or close(): the cache holds what was fed, nothing more
            del c.tokens[c.session.pos:]


class Conversation:
    """A chat with a bundle: `say(text)` returns the `Turn` whose iteration streams the reply.

    `system` is a system message (plain mode: text before the conversation). Sampling arguments are
    those of `Model.generate`; `seed` seeds the whole conversation.
    """

    def __init__(self, model: Model, system: str | None = None, max_new_tokens: int = 512, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, seed: int | None = None):
        check_sampling(max_new_tokens, temperature, top_k, top_p, seed, None)
        if model.tokenizer is None:
            raise InputError("this bundle has no tokenizer, so it cannot chat (moedge run --ids takes token ids)")
        self.model = model
        self.session = model.session()
        self.template = model.manifest.generation.get("chat_template")
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        self.rng = np.random.default_rng(seed)
        self.messages: list[dict[str, str]] = []  # user and assistant, alternating
        self.tokens: list[int] = []  # what the session's cache holds
        self.reply_start = 0  # where the last reply starts in `tokens`

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the system message and `messages`, ready for the assistant's reply."""
        full = ([{"role": "system", "content": self.system}] if self.system else []) + messages
        if self.template:
            return chat_prompt(self.model, full)
        return self.model.encode(plain_text(full))

    def say(self, text: str) -> Turn:
        """Add the user's message (and an empty reply that the returned `Turn` fills); rewind the cache to
        where it differs from the conversation rendered anew."""
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        prompt, dropped = self._fit()
        kept = min(common_prefix(self.tokens, prompt), len(prompt) - 1)  # at least one token to feed
        rewound, history_changed = self.session.pos - kept, kept < self.reply_start
        self.session.rewind(kept)
        del self.tokens[kept:]
        self.reply_start = len(prompt)
        return Turn(self, prompt, kept, rewound, dropped, history_changed)

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages.clear()
        self.tokens.clear()
        self.reply_start = 0
        self.session.reset()

    def _fit(self) -> tuple[list[int], int]:
        """The rendered conversation up to the new reply, after dropping the oldest exchanges that leave too
        little room for it; and how many were dropped."""
        capacity = self.session.cache.capacity
        alone = len(self.render(self.messages[-2:-1]))
        if alone >= capacity:
            del self.messages[-2:]
            raise InputError(f"the message does not fit: alone it takes {alone} tokens of the context's {capacity}")
        reserve = min(self.max_new_tokens, capacity // REPLY_SHARE)
        prompt, dropped = self.render(self.messages[:-1]), 0
        while len(prompt) + reserve > capacity and len(self.messages) > 2:
            del self.messages[:2]
            dropped += 1
            prompt = self.render(self.messages[:-1])
        return prompt, dropped
