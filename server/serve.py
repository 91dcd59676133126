"""`moedge serve`: bind the address, warm the model up, run the app under uvicorn until Ctrl-C."""

from __future__ import annotations

import copy
import os
import socket

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from moedge.runtime import InputError, Model

from .app import Server

DRAIN_SECONDS = 3  # at Ctrl-C, for requests to finish; then they are cancelled


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port` (0: a free port); `InputError` when the address cannot be used."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {os.strerror(exc.errno) if exc.errno else exc}") from None


def _log_config() -> dict:
    """uvicorn's logging, all on stderr (stdout has the one line saying where we serve), with our requests'."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    config["loggers"]["moedge.server"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def warm_up(model: Model) -> None:
    """Run a two-token prompt and one decode step, so the first request does not wait for the kernels."""
    session = model.session()
    session.prefill([0, 0], last_only=True)
    session.decode(0)


def serve(model: Model, sock: socket.socket, name: str, queue_size: int = 8) -> None:
    """Answer OpenAI-style requests for `model` (called `name`) on the listening `sock` until interrupted."""
    if model.tokenizer is None:
        raise InputError("moedge serve needs a bundle with a tokenizer (this one has none)")
    warm_up(model)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
    print(f"serving {name!r} on {url} (GET /models, POST /completions and /chat/completions; "
          f"{queue_size} requests may wait); Ctrl-C stops", flush=True)
    config = uvicorn.Config(Server(model, name, queue_size).app(), log_config=_log_config(),
                            timeout_graceful_shutdown=DRAIN_SECONDS)
    uvicorn.Server(config).run(sockets=[sock])
