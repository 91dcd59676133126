"""`moedge chat`: the turn logic (each turn feeds only what the KV cache lacks, and computes what a fresh
prefill of the whole conversation would), a full context, Ctrl-C mid-reply, plain continuation, and the
terminal loop through a subprocess with piped stdin."""

import select
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import INTERRUPTIBLE, ROOT, run_cli
from moedge.cli.chat_loop import COMMANDS
from moedge.exporter import export
from moedge.runtime import InputError, Model
from moedge.runtime.conversation import Conversation, common_prefix, plain_text

GREEDY = dict(temperature=0.0, top_k=0, top_p=1.0, seed=0)


@pytest.fixture(scope="module")
def model(chat_bundle):
    return Model.load(chat_bundle[0], threads=1)


def record_prefills(conversation: Conversation) -> list:
    """Make the conversation's session log every prefill: (tokens fed, last row of its logits)."""
    calls, prefill = [], conversation.session.prefill

    def logged(tokens, last_only=False):
        logits = prefill(tokens, last_only)
        calls.append((list(tokens), logits[-1].copy()))
        return logits
    conversation.session.prefill = logged
    return calls


def fresh_logits(model: Model, tokens: list[int]) -> np.ndarray:
    return model.session().prefill(tokens, last_only=True)[0]


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.abs(a - b).max() <= 1e-4 * np.abs(b).max())


def test_each_turn_feeds_only_the_new_turn_and_matches_a_fresh_prefill(model):
    chat = Conversation(model, max_new_tokens=6, **GREEDY)
    fed = record_prefills(chat)
    replies = []
    for message in ["hello how are you", "what is your name", "the cat sat"]:
        held = list(chat.tokens)
        turn = chat.say(message)
        replies.append("".join(t.text for t in turn))
        rendered = chat.render(chat.messages[:-1])  # what a fresh start would read (reply excluded)
        assert turn.prompt == rendered and fed[-1][0] == rendered[turn.kept:]
        assert turn.kept == common_prefix(held, rendered) and not turn.history_changed
        assert close(fed[-1][1], fresh_logits(model, rendered))  # the cached history computes the same
    # the second reply (greedy, seed 0) is all words, which re-encode to themselves: the third turn re-reads
    # nothing the cache holds
    assert turn.kept == len(held) and turn.rewound == 0 and turn.fed == len(rendered) - len(held)
    assert [m["content"] for m in chat.messages[1::2]] == replies and all(replies)


def test_a_reply_that_fills_the_context_is_cut_then_old_turns_are_dropped(model):
    chat = Conversation(model, max_new_tokens=1000, **GREEDY)
    first = chat.say("hello")
    list(first)
    assert first.cut and chat.session.remaining <= 1  # it ran to the end of the context
    second = chat.say("how are you")
    fed = record_prefills(chat)
    list(second)
    assert second.dropped == 1 and [m["content"] for m in chat.messages[:1]] == ["how are you"]
    assert close(fed[0][1], fresh_logits(model, chat.render(chat.messages[:-1])))


def test_a_message_longer_than_the_context_is_refused_and_forgotten(model):
    chat = Conversation(model, max_new_tokens=4, **GREEDY)
    list(chat.say("hello"))
    with pytest.raises(InputError, match="does not fit: alone it takes"):
        chat.say("cat " * 200)
    assert len(chat.messages) == 2
    turn = chat.say("the dog")
    list(turn)
    assert turn.rewound == 0 or not turn.history_changed


def test_ctrl_c_mid_reply_keeps_the_conversation_usable(model):
    chat = Conversation(model, max_new_tokens=20, **GREEDY)
    decode, steps = chat.session.decode, []

    def interrupted(token):
        steps.append(token)
        if len(steps) == 3:
            raise KeyboardInterrupt
        return decode(token)
    chat.session.decode = interrupted
    turn = chat.say("hello how are you")
    with pytest.raises(KeyboardInterrupt):
        for _ in turn:
            pass
    assert turn.generated == 3 and chat.messages[-1]["content"] == turn.text
    assert chat.tokens == turn.prompt + steps[:2] and chat.session.pos == len(chat.tokens)
    chat.session.decode = decode
    fed = record_prefills(chat)
    list(chat.say("fine thanks"))
    assert close(fed[0][1], fresh_logits(model, chat.render(chat.messages[:-1])))


def test_reset_forgets_all_but_the_system_message(model):
    chat = Conversation(model, system="you are a dog", max_new_tokens=3, **GREEDY)
    list(chat.say("hello"))
    chat.reset()
    assert chat.messages == [] and chat.session.pos == 0
    turn = chat.say("hello")
    assert turn.kept == 0 and turn.prompt[:3] == chat.render([])[:3]


@pytest.fixture(scope="module")
def plain_bundle(tmp_path_factory):
    bundle = tmp_path_factory.mktemp("plain") / "dense.moedge"
    export(ROOT / "samples" / "dense", bundle, show_progress=False, float_dense=True)  # decode = prefill
    return bundle


def test_plain_continuation_without_a_template(plain_bundle):
    model = Model.load(plain_bundle, threads=1)
    chat = Conversation(model, max_new_tokens=8, **GREEDY)
    assert chat.template is None
    fed = record_prefills(chat)
    first = "".join(t.text for t in chat.say("def __init__(self"))
    turn = chat.say("return")
    list(turn)
    text = plain_text(chat.messages[:-1])
    assert text == "def __init__(self" + first + ("" if first.endswith("\n") else "\n") + "return"
    assert turn.prompt == model.encode(text) and turn.kept > len(fed[0][0])  # the first turn stays cached
    assert close(fed[-1][1], fresh_logits(model, turn.prompt))


def test_a_bundle_without_a_tokenizer_cannot_chat(exported):
    from helpers import tiny_moe_spec

    with pytest.raises(InputError, match="no tokenizer"):
        Conversation(Model.load(exported("cli-compile", tiny_moe_spec()).bundle, threads=1))


def test_the_terminal_loop_through_piped_stdin(chat_bundle, model):
    """Replies go to stdout one per message (the same as the API's with the same seed), notes to stderr."""
    script = "hello how are you\n/help\n\nwhat is your name\n/reset\nhello how are you\n/nonsense\n/exit\nnever\n"
    result = run_cli("chat", chat_bundle[0], "-n", "6", "--seed", "5", "--threads", "1", input=script)
    assert result.returncode == 0, result.stderr
    chat = Conversation(model, max_new_tokens=6, seed=5)
    first, second = ("".join(t.text for t in chat.say(m)) for m in ["hello how are you", "what is your name"])
    chat.reset()
    third = "".join(t.text for t in chat.say("hello how are you"))
    assert result.stdout == f"{first}\n{second}\n{third}\n"
    err = result.stderr.splitlines()
    assert f"moedge: {COMMANDS}" in err and "moedge: conversation forgotten" in err
    assert err[-1] == f"moedge: unknown command /nonsense: {COMMANDS}"


SLOW_CHAT = INTERRUPTIBLE + """
import sys, time
from moedge.runtime.session import Session
decode = Session.decode
def slow(self, token):
    time.sleep(0.05)
    return decode(self, token)
Session.decode = slow
from moedge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_stops_the_reply_not_the_program(chat_bundle):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CHAT, "chat", str(chat_bundle[0]), "-n", "60",
                             "--temperature", "0", "--threads", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write("hello how are you\n")
    proc.stdin.flush()
    assert proc.stdout.read(1)  # the reply has started
    proc.send_signal(signal.SIGINT)
    ready, _, _ = select.select([proc.stderr], [], [], 60)  # a missed signal fails the test instead of hanging it
    if not ready:
        proc.kill()
    assert ready and proc.stderr.readline() == "moedge: reply stopped\n"
    out, err = proc.communicate("what is your name\n", timeout=120)
    assert proc.returncode == 0, err
    assert out.endswith("\n") and out.splitlines()[-1].strip()  # a whole second reply (read(1) buffered the first)


def test_the_terminal_loop_says_when_the_context_is_full(chat_bundle):
    result = run_cli("chat", chat_bundle[0], "-n", "500", "--temperature", "0", "--threads", "1",
                     input="hello\nhello\n")
    assert result.returncode == 0, result.stderr
    err = result.stderr.splitlines()
    cut = "moedge: the context (128 tokens) is full: the reply was cut; the oldest exchanges will be dropped"
    assert err[-3].startswith(cut) and err[-1].startswith(cut)
    assert err[-2].startswith("moedge: the context was full: dropped the oldest exchange; the conversation now holds")


def test_a_message_between_triple_quotes_spans_lines():
    import io

    from moedge.cli.chat_loop import _read

    stdin = io.StringIO('"""def f(x):\n    return x\n"""\n"""one line"""\nnext\n  """unclosed\nto the end\n')
    messages = [_read(stdin, interactive=False) for _ in range(5)]
    assert messages == ["def f(x):\n    return x\n", "one line", "next", "unclosed\nto the end", None]
