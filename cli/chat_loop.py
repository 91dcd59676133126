"""`moedge chat`: the terminal loop around a `Conversation` — commands, Ctrl-C, notes on stderr.

Replies stream to stdout, one per line-ended block; notes (context full, an interrupted reply) go to
stderr. On a terminal the prompt is `>>> ` with line editing; piped input is read line by line, one
message per line, without prompts. A message between a pair of \"\"\" may span lines.
"""

from __future__ import annotations

import sys
from typing import TextIO

from moedge.runtime.conversation import Conversation, Turn
from moedge.runtime.errors import InputError

COMMANDS = ('/reset forgets the conversation, /exit (or Ctrl-D) leaves, /help shows this; Ctrl-C stops a reply; '
            '"""text""" spans lines')
QUOTES = '"""'


def _note(text: str, err: TextIO) -> None:
    print(f"moedge: {text}", file=err, flush=True)


def _read_line(stdin: TextIO, interactive: bool, prompt: str) -> str | None:
    """One line, or None at the end of the input."""
    if interactive:
        try:
            return input(prompt)
        except EOFError:
            print()
            return None
    line = stdin.readline()
    return line.rstrip("\n") if line else None


def _read(stdin: TextIO, interactive: bool) -> str | None:
    """The next message: one line, or the lines between a pair of \"\"\" (the end of the input closes them)."""
    line = _read_line(stdin, interactive, ">>> ")
    if line is None or not line.lstrip().startswith(QUOTES):
        return line
    lines = [line.lstrip()[len(QUOTES):]]
    while not lines[-1].endswith(QUOTES):
        more = _read_line(stdin, interactive, "... ")
        if more is None:
            return "\n".join(lines)
        lines.append(more)
    lines[-1] = lines[-1][:-len(QUOTES)]
    return "\n".join(lines)


def _cache_notes(turn: Turn, err: TextIO) -> None:
    if turn.dropped:
        exchanges = "the oldest exchange" if turn.dropped == 1 else f"the {turn.dropped} oldest exchanges"
        _note(f"the context was full: dropped {exchanges}; the conversation now holds {len(turn.prompt)} tokens "
              f"({turn.fed} read anew)", err)
    elif turn.history_changed:
        _note(f"the template renders the earlier turns differently from what the cache held: re-read "
              f"{turn.fed} tokens", err)


def _stream(turn: Turn, out: TextIO, err: TextIO) -> None:
    """Write the reply as it comes; Ctrl-C stops it (what was said so far stays in the conversation)."""
    tokens = iter(turn)
    try:
        for token in tokens:
            out.write(token.text)
            out.flush()
    except KeyboardInterrupt:
        tokens.close()
        out.write("\n")
        _note("reply stopped", err)
        return
    out.write("\n")
    out.flush()
    if turn.cut:
        _note(f"the context ({turn.conversation.session.cache.capacity} tokens) is full: the reply was cut; the "
              "oldest exchanges will be dropped at your next message (/reset starts afresh)", err)


def chat_loop(conversation: Conversation, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout,
              err: TextIO = sys.stderr) -> None:
    """Read messages and commands until /exit or the end of the input; stream each reply."""
    interactive = stdin.isatty() and out.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())

        mode = "the bundle's chat template" if conversation.template else "no chat template: plain continuation"
        _note(f"chat ({mode}); {COMMANDS}", err)
    while True:
        try:
            text = _read(stdin, interactive)
        except KeyboardInterrupt:
            print(file=out)
            _note("/exit or Ctrl-D leaves", err)
            continue
        if text is None:
            return
        command = text.strip().split(maxsplit=1)[0] if text.strip().startswith("/") else None
        if command in ("/exit", "/quit", "/bye"):
            return
        if command == "/reset":
            conversation.reset()
            _note("conversation forgotten", err)
        elif command is not None:
            _note(COMMANDS if command == "/help" else f"unknown command {command}: {COMMANDS}", err)
        elif text.strip():
            try:
                turn = conversation.say(text)
            except InputError as exc:
                _note(f"error: {exc}", err)
                continue
            _cache_notes(turn, err)
            _stream(turn, out, err)
