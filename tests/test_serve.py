"""`moedge serve` as apps use it: a real server process on 127.0.0.1 and the official `openai` client.

The bundle is the default sample model with a chat template and a context of 2048 tokens (so a long
generation takes a while: the queue and disconnect tests need one running). Answers are compared
with `Model.generate` on the same bundle with the same settings. Also `moedge run --stop`.
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from fuzz_bundles import edit_manifest
from helpers import CLI_MAIN, INTERRUPTIBLE, ROOT, run_cli
from moedge.runtime import Model, Token
from moedge.runtime.chat import chat_prompt
from moedge.server.errors import ApiError
from moedge.server.schema import Generation
from moedge.server.worker import Delta, Finished, Job, Worker

CONTEXT = 2048
LONG = 2000  # tokens: a generation that is still running while the test does a few requests
QUEUE = 3
TEMPLATE = ("{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}### assistant:\n{% endif %}")
PROMPT = "def __init__(self"
STARTUP_SECONDS = 300  # a first run compiles the kernels


class ServerProcess:
    """`moedge serve BUNDLE --port 0` in a subprocess; `url` once it says where it listens."""

    def __init__(self, bundle: Path, log: Path, *args: str):
        self.log = log
        with log.open("w") as stderr:
            self.proc = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE + CLI_MAIN, "serve", str(bundle),
                                          "--port", "0", "--threads", "1", *args], stdout=subprocess.PIPE,
                                         stderr=stderr, text=True)
        ready = select.select([self.proc.stdout], [], [], STARTUP_SECONDS)[0]  # it says where it serves, or exits
        line = self.proc.stdout.readline() if ready else ""
        found = re.search(r"on (http://\S+/v1)", line)
        if not found:
            self.stop()
            raise AssertionError(f"no address in {line!r}; log:\n{log.read_text()}")
        self.url = found.group(1)

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key="unused", max_retries=0, **kwargs)

    def wait_for_log(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log.read_text())
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in the server log:\n{self.log.read_text()}")

    def stop(self) -> int:
        """Ctrl-C, and its exit code (killed if it has not ended within 30 s)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from moedge.exporter import export

    root = tmp_path_factory.mktemp("serve")
    checkpoint = Path(shutil.copytree(ROOT / "samples" / "default-moe", root / "ckpt"))
    generation = json.loads((checkpoint / "generation.json").read_text())
    (checkpoint / "generation.json").write_text(json.dumps({**generation, "chat_template": TEMPLATE}))
    spec = json.loads((checkpoint / "moedge_spec.json").read_text())
    (checkpoint / "moedge_spec.json").write_text(json.dumps({**spec, "max_seq_len": CONTEXT}))
    export(checkpoint, root / "chat.moedge", show_progress=False)
    return root / "chat.moedge"


@pytest.fixture(scope="module")
def model(bundle) -> Model:
    return Model.load(bundle, threads=1)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    process = ServerProcess(bundle, tmp_path_factory.mktemp("log") / "server.log", "--queue", str(QUEUE))
    yield process
    assert process.stop() == 130, process.log.read_text()  # Ctrl-C: shut down cleanly, "moedge: interrupted"


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server.client(timeout=120)


def _reference(model: Model, prompt, **settings) -> tuple[str, int]:
    tokens = list(model.generate(prompt, **settings))
    return "".join(t.text for t in tokens), len(tokens)


# -- answers -------------------------------------------------------------------------------------------

def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["chat"]
    assert client.models.retrieve("chat").owned_by == "moedge"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_completion_is_what_generate_gives(client, model):
    text, count = _reference(model, PROMPT, max_new_tokens=40)
    answer = client.completions.create(model="chat", prompt=PROMPT, max_tokens=40, temperature=0)
    assert answer.choices[0].text == text and answer.choices[0].finish_reason == "length"
    assert answer.object == "text_completion" and answer.model == "chat"
    usage = answer.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        len(model.encode(PROMPT)), count, len(model.encode(PROMPT)) + count)


def test_sampling_fields_reach_the_sampler(client, model):
    settings = dict(temperature=0.9, top_p=0.9, seed=5)
    text, _ = _reference(model, PROMPT, max_new_tokens=30, top_k=20, **settings)
    answer = client.completions.create(model="chat", prompt=PROMPT, max_tokens=30, extra_body={"top_k": 20},
                                       **settings)
    assert answer.choices[0].text == text
    other = client.completions.create(model="chat", prompt=PROMPT, max_tokens=30, extra_body={"top_k": 20},
                                      **{**settings, "seed": 6})
    assert other.choices[0].text != text


def test_streamed_completion_joins_to_the_same_text(client, model):
    text, count = _reference(model, PROMPT, max_new_tokens=40)
    chunks = list(client.completions.create(model="chat", prompt=PROMPT, max_tokens=40, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    *pieces, end, usage = chunks
    assert "".join(c.choices[0].text for c in pieces) == text and len(pieces) > 5
    assert all(c.choices[0].finish_reason is None for c in pieces) and end.choices[0].finish_reason == "length"
    assert usage.choices == [] and usage.usage.completion_tokens == count
    assert len({c.id for c in chunks}) == 1


def test_echo_puts_the_prompt_first(client, model):
    text, _ = _reference(model, "café ünïcode", max_new_tokens=8)
    answer = client.completions.create(model="chat", prompt="café ünïcode", max_tokens=8, temperature=0, echo=True)
    assert answer.choices[0].text == "café ünïcode" + text


def test_token_id_prompts(client, model):
    ids = model.encode(PROMPT)
    text, _ = _reference(model, ids, max_new_tokens=12)
    assert client.completions.create(model="chat", prompt=ids, max_tokens=12, temperature=0).choices[0].text == text


def test_chat_uses_the_template_streamed_or_not(client, model):
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "A class, please."}]
    ids = chat_prompt(model, messages)
    text, count = _reference(model, ids, max_new_tokens=30)
    answer = client.chat.completions.create(model="chat", messages=messages, max_completion_tokens=30, temperature=0)
    assert answer.choices[0].message.content == text and answer.choices[0].message.role == "assistant"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(ids), count)
    chunks = list(client.chat.completions.create(model="chat", messages=messages, max_tokens=30, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[0].object == "chat.completion.chunk"


def test_chat_without_max_tokens_fills_the_context(client, model):
    messages = [{"role": "user", "content": "x"}]
    answer = client.chat.completions.create(model="chat", messages=messages, temperature=0)
    assert answer.usage.prompt_tokens + answer.usage.completion_tokens == CONTEXT
    assert answer.choices[0].finish_reason == "length"


# -- stop strings --------------------------------------------------------------------------------------

def _spanning_stop(model: Model, prompt: str, n: int) -> tuple[str, str, int]:
    """A stop string made of the end of one token's text and the start of the next, first seen there;
    the text before it and the tokens generated up to it."""
    pieces = [t.text for t in model.generate(prompt, max_new_tokens=n)]
    for i in range(3, n - 1):
        before = "".join(pieces[:i])
        if len(pieces[i - 1]) >= 2 and len(pieces[i]) >= 2:
            stop = pieces[i - 1][-2:] + pieces[i][:2]
            if (before + pieces[i]).find(stop) == len(before) - 2:
                return stop, before[:-2], i + 1
    raise AssertionError(f"no stop string spans two tokens in {pieces}")


def test_stop_string_ends_the_text_before_it(client, model):
    stop, before, count = _spanning_stop(model, PROMPT, 60)
    for stream in (False, True):
        answer = client.completions.create(model="chat", prompt=PROMPT, max_tokens=60, temperature=0,
                                           stop=["no such text", stop], stream=stream,
                                           **({"stream_options": {"include_usage": True}} if stream else {}))
        if stream:
            chunks = list(answer)
            text = "".join(c.choices[0].text for c in chunks[:-1])
            reason, usage = chunks[-2].choices[0].finish_reason, chunks[-1].usage
        else:
            text, reason, usage = answer.choices[0].text, answer.choices[0].finish_reason, answer.usage
        assert (text, reason, usage.completion_tokens) == (before, "stop", count)


def test_run_stop_prints_the_text_before_it(bundle, model, capsys):
    from moedge.cli.main import main

    stop, before, count = _spanning_stop(model, PROMPT, 60)
    assert main(["run", str(bundle), "--prompt", PROMPT, "-n", "60", "--threads", "1", "--stop", "zzz",
                 "--stop", stop]) == 0
    captured = capsys.readouterr()
    assert captured.out == before + "\n"  # the generated text alone, ended before the stop string
    assert f"{count} tokens (ended at the stop string {stop!r})" in captured.err


def test_run_refuses_an_empty_stop_string(bundle):
    result = run_cli("run", bundle, "--prompt", "x", "--stop", "")
    assert result.returncode == 2
    assert result.stderr.strip() == "moedge: error: stop strings must be a list of non-empty strings"


# -- errors --------------------------------------------------------------------------------------------

def _post(server: ServerProcess, path: str, data: bytes, method: str = "POST") -> tuple[int, dict]:
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("path, data, status, message", [
    ("/completions", b'{"model": "chat", "prompt": ', 400, "the body is not valid JSON: Expecting value"),
    ("/completions", b'["chat"]', 400, "the body must be a JSON object, got list"),
    ("/completions", b'{"model": "chat"}', 400, "prompt is required"),
    ("/completions", b'{"prompt": "x"}', 400, "model is required"),
    ("/completions", b'{"model": "chat", "prompt": "x", "max_tokens": NaN}', 400, "max_tokens must be an integer"),
    ("/completions", b'"' + b"x" * (9 << 20) + b'"', 413, "the request body is larger than 8 MB"),
    ("/nowhere", b"{}", 404, "Not Found: POST /v1/nowhere"),
    ("/models", b"{}", 405, "Method Not Allowed: POST /v1/models"),
])
def test_malformed_requests_get_openai_errors(server, path, data, status, message):
    code, body = _post(server, path, data)
    assert code == status and set(body) == {"error"}
    assert body["error"]["message"].startswith(message) and body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("fields, param, message", [
    ({"temperature": "hot"}, "temperature", "temperature must be a number, got a string 'hot'"),
    ({"temperature": 3}, "temperature", "temperature must be in [0, 2], got 3"),
    ({"top_p": 0}, "top_p", "top_p must be in (0, 1], got 0"),
    ({"max_tokens": 2.5}, "max_tokens", "max_tokens must be an integer, got a number 2.5"),
    ({"max_tokens": 0}, "max_tokens", "max_tokens must be >= 1, got 0"),
    ({"seed": -1}, "seed", "seed must be >= 0, got -1"),
    ({"stop": 7}, "stop", "stop must be a string or an array of strings, got a number 7"),
    ({"stop": [""]}, "stop", "stop must hold 1 to 16 non-empty strings"),
    ({"stream": "yes"}, "stream", "stream must be a boolean, got a string 'yes'"),
    ({"n": 2}, "n", "n must be 1: this server generates one choice per request, got a number 2"),
    ({"logprobs": 3}, "logprobs", "logprobs are not supported"),
    ({"prompt": ["a", "b"]}, "prompt", "one prompt per request, got 2"),
    ({"prompt": [1, 99999]}, "prompt", "prompt: token id 99999 is outside the vocabulary [0, 2048)"),
    ({"prompt": ""}, "prompt", "prompt is empty"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "stream_options needs stream: true"),
])
def test_bad_fields_are_named(client, fields, param, message):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**{"model": "chat", "prompt": PROMPT, **fields})
    assert caught.value.status_code == 400 and caught.value.param == param
    assert caught.value.body["message"].startswith(message), caught.value.body


def test_bad_max_completion_tokens_is_named(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}],
                                       max_completion_tokens=-3)
    assert caught.value.param == "max_completion_tokens"
    assert caught.value.body["message"] == "max_completion_tokens must be >= 1, got -3"


@pytest.mark.parametrize("messages, message", [
    ([], "messages must be a non-empty array"),
    ([{"role": "robot", "content": "hi"}], "messages[0].role must be one of system, developer, user, assistant"),
    ([{"role": "user", "content": 5}], "messages[0].content must be a string or an array of text parts"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[0].content must be a string or an array of text parts"),
])
def test_bad_messages_are_named(client, messages, message):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="chat", messages=messages)
    assert caught.value.param == "messages" and caught.value.body["message"].startswith(message)


def test_too_long_a_prompt_says_the_token_counts(client, model):
    prompt = "x = 1\n" * 100
    n, asked = len(model.encode(prompt)), CONTEXT - 300
    assert n < CONTEXT < n + asked
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="chat", prompt=prompt, max_tokens=asked)
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "prompt"
    assert caught.value.body["message"] == (
        f"This model's maximum context length is {CONTEXT} tokens, however you requested {n + asked} tokens "
        f"({n} in the prompt, {asked} for the completion). Please reduce the prompt or max_tokens.")
    longer = [{"role": "user", "content": prompt * (CONTEXT // n + 1)}]
    with pytest.raises(openai.BadRequestError, match="leaves no room for a completion"):
        client.chat.completions.create(model="chat", messages=longer)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-4", prompt=PROMPT)
    assert caught.value.code == "model_not_found" and "this server serves 'chat'" in caught.value.body["message"]


# -- one at a time: concurrency, a full queue, clients that leave -------------------------------------

def test_concurrent_clients_all_get_their_own_answer(server, model):
    prompts = ["import os\n", "class Foo:", "def run(self):", "    return"]
    want = [_reference(model, p, max_new_tokens=24)[0] for p in prompts]

    def ask(i: int) -> str:
        client = server.client(timeout=120)
        if i % 2:
            stream = client.completions.create(model="chat", prompt=prompts[i], max_tokens=24, temperature=0,
                                               stream=True)
            return "".join(c.choices[0].text for c in stream)
        return client.completions.create(model="chat", prompt=prompts[i], max_tokens=24, temperature=0).choices[0].text

    with ThreadPoolExecutor(len(prompts)) as pool:
        assert list(pool.map(ask, range(len(prompts)))) == want


class _GatedModel:
    """A stand-in model whose tokens ("x") come only once `gate` is open."""

    threads = 1

    def __init__(self):
        self.gate = threading.Event()

    def generate(self, prompt, max_new_tokens, **settings):
        for i in range(max_new_tokens):
            self.gate.wait()
            yield Token(i, "x")


def test_with_no_queue_one_request_runs_and_the_next_is_refused_until_it_ends():
    async def scenario():
        model = _GatedModel()
        worker = Worker(model, queue_size=0)
        worker.start()
        try:
            first = Job("first", Generation([1], 3))
            worker.submit(first)
            with pytest.raises(ApiError) as caught:
                worker.submit(Job("second", Generation([1], 3)))
            assert caught.value.status == 503
            model.gate.set()
            assert [await first.events.get() for _ in range(4)] == [Delta("x")] * 3 + [Finished("length", 1, 3)]
            worker.submit(third := Job("third", Generation([1, 2], 3, stop=("xx",))))  # idle again: admitted
            assert await third.events.get() == Finished("stop", 2, 2)
        finally:
            worker.close()

    asyncio.run(scenario())


def _long_stream(client: openai.OpenAI):
    return client.completions.create(model="chat", prompt=PROMPT, max_tokens=LONG, temperature=0, stream=True)


def test_a_full_queue_answers_503_and_the_server_goes_on(server, client, model):
    running = _long_stream(client)
    first = next(iter(running))  # generating now: the next QUEUE requests wait, one more does not fit
    waiting = [_long_stream(client) for _ in range(QUEUE)]
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(model="chat", prompt=PROMPT, max_tokens=4)
    assert caught.value.status_code == 503 and caught.value.code == "queue_full"
    assert caught.value.body["type"] == "server_error"
    ids = [stream.response.headers["x-request-id"] for stream in waiting]
    for stream, rid in zip(waiting, ids, strict=True):  # the waiting clients leave: their requests leave the queue
        stream.close()
        server.wait_for_log(rf"{rid}: the client went away while waiting; dropped from the queue")
    running.close()
    server.wait_for_log(rf"{first.id}: the client went away; stopped after \d+ of {LONG} tokens")
    text, _ = _reference(model, PROMPT, max_new_tokens=10)
    assert client.completions.create(model="chat", prompt=PROMPT, max_tokens=10, temperature=0).choices[0].text == text
    assert not re.search("|".join(rf"{rid}: \d+ prompt" for rid in ids), server.log.read_text())


def test_a_client_that_drops_mid_stream_stops_its_generation(server, client, model):
    stream = _long_stream(client)
    chunks = iter(stream)
    rid = [next(chunks) for _ in range(3)][0].id
    stream.close()
    stopped = server.wait_for_log(rf"{rid}: the client went away; stopped after (\d+) of {LONG} tokens")
    assert int(stopped.group(1)) < LONG
    text, _ = _reference(model, "import sys", max_new_tokens=10)
    assert client.completions.create(model="chat", prompt="import sys", max_tokens=10,
                                     temperature=0).choices[0].text == text


def test_a_client_that_gives_up_waiting_stops_its_generation(server):
    impatient = server.client(timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.completions.create(model="chat", prompt=PROMPT, max_tokens=LONG - 1, temperature=0)
    stopped = server.wait_for_log(rf"the client went away; stopped after (\d+) of {LONG - 1} tokens")
    assert int(stopped.group(1)) < LONG - 1


# -- the command ---------------------------------------------------------------------------------------

def test_a_bundle_without_a_chat_template_still_serves_completions(bundle, model, tmp_path):
    plain = tmp_path / "plain.moedge"
    shutil.copytree(bundle, plain)
    eos = [t.id for t in model.generate(PROMPT, max_new_tokens=8)][5]
    edit_manifest(plain, lambda d: (d["generation"].pop("chat_template"), d["generation"].update(eos_token_id=eos)))
    process = ServerProcess(plain, tmp_path / "plain.log", "--name", "plain")
    try:
        client = process.client(timeout=60)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
        assert caught.value.body["message"] == "this bundle has no chat template (the source checkpoint had none)"
        answer = client.completions.create(model="plain", prompt=PROMPT, max_tokens=8, temperature=0)
        assert answer.choices[0].finish_reason == "stop" and answer.usage.completion_tokens == 5  # ended at EOS
    finally:
        assert process.stop() == 130


def test_ctrl_c_ends_open_streams_with_an_error(bundle, tmp_path):
    process = ServerProcess(bundle, tmp_path / "stopping.log")
    try:
        chunks = iter(_long_stream(process.client(timeout=60)))
        rid = next(chunks).id
        process.proc.send_signal(signal.SIGINT)
        with pytest.raises(openai.APIError, match="The server is shutting down"):
            list(chunks)
        assert process.proc.wait(timeout=30) == 130
        process.wait_for_log(rf"{rid}: the server is shutting down; stopped after \d+ of {LONG} tokens", timeout=1)
    finally:
        process.stop()


def test_a_busy_port_is_a_one_line_error(bundle):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_cli("serve", bundle, "--port", port, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"moedge: error: cannot listen on 127.0.0.1:{port}: Address already in use"


SERVE_WITHOUT_EXTRA = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('starlette', 'uvicorn', 'sse_starlette'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from moedge.cli.main import main
sys.exit(main(['serve', 'BUNDLE']))
"""


def test_serve_without_the_extra_names_it():
    result = subprocess.run([sys.executable, "-c", SERVE_WITHOUT_EXTRA], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("moedge: error: moedge serve needs starlette, uvicorn, sse_starlette: "
                                     "pip install 'moedge[serve]'")
