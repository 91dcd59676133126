"""The HTTP app: OpenAI's /v1/models, /v1/completions and /v1/chat/completions over one model.

Each completion request is validated (400/404 before any work), queued on the `Worker` (503 when
the queue is full) and answered whole, or streamed as server-sent events ending in `data: [DONE]`.
A client that disconnects cancels its job, whether it streams or waits for the whole answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moedge.runtime import Model

from .errors import ApiError, bad_request, internal
from .responses import ChatReply, TextReply
from .schema import ValidRequest, chat_request, completion_request
from .worker import Delta, Failed, Finished, Job, Worker

MAX_BODY_BYTES = 8 << 20
SHUTDOWN_GRACE_SECONDS = 2  # for streams to send their last event when the server shuts down


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; 413 past MAX_BODY_BYTES, 400 when it is not a JSON object."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES >> 20} MB")
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request(f"the body must be a JSON object, got {type(value).__name__}")
    return value


def _event(data: dict[str, Any] | str) -> dict[str, str]:
    return {"data": data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}


class Server:
    """Routes for one model named `name`, generating on one `Worker` with `queue_size` waiting jobs."""

    def __init__(self, model: Model, name: str, queue_size: int):
        self.model, self.name = model, name
        self.worker = Worker(model, queue_size)
        self.created = int(os.stat(model.root / "manifest.json").st_mtime)

    def app(self) -> Starlette:
        routes = [Route("/v1/models", self.models, methods=["GET"]),
                  Route("/v1/models/{model:path}", self.one_model, methods=["GET"]),
                  Route("/v1/completions", self.completions, methods=["POST"]),
                  Route("/v1/chat/completions", self.chat_completions, methods=["POST"])]
        handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected_error}
        return Starlette(routes=routes, exception_handlers=handlers, lifespan=self._lifespan)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette):
        self.worker.start()
        yield
        self.worker.close()

    def _card(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "moedge"}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._card()]})

    async def one_model(self, request: Request) -> Response:
        if request.path_params["model"] != self.name:
            raise ApiError(404, f"The model {request.path_params['model']!r} does not exist", param="model",
                           code="model_not_found")
        return JSONResponse(self._card())

    async def completions(self, request: Request) -> Response:
        return await self._answer(request, completion_request, TextReply)

    async def chat_completions(self, request: Request) -> Response:
        return await self._answer(request, chat_request, ChatReply)

    async def _answer(self, request: Request, validate: Callable[..., ValidRequest], kind: type[TextReply]) -> Response:
        valid = validate(await _json_body(request), self.model, self.name)
        reply = kind(self.name)
        job = Job(reply.id, valid.generation)
        self.worker.submit(job)
        if valid.stream:
            stopping = anyio.Event()  # set by EventSourceResponse when the server shuts down
            return EventSourceResponse(self._stream(job, reply, valid), headers={"x-request-id": reply.id},
                                       shutdown_event=stopping, shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
                                       data_sender_callable=partial(self._end_at_shutdown, job, stopping))
        try:
            return await self._whole(request, job, reply, valid)
        finally:
            self.worker.cancel(job)

    async def _end_at_shutdown(self, job: Job, stopping: anyio.Event) -> None:
        """When the server shuts down, stop `job` and end its stream with a 503 error event."""
        await stopping.wait()
        self.worker.cancel(job, "the server is shutting down")
        job.events.put_nowait(Failed(ApiError(503, "The server is shutting down", kind="server_error")))

    async def _stream(self, job: Job, reply: TextReply, valid: ValidRequest) -> AsyncIterator[dict[str, str]]:
        """The events of a streamed answer; closing it (the client went away) cancels the job."""
        try:
            for first in (reply.opening(), valid.echo and reply.chunk(valid.echo)):
                if first:
                    yield _event(first)
            while True:
                event = await job.events.get()
                if isinstance(event, Delta):
                    yield _event(reply.chunk(event.text))
                elif isinstance(event, Failed):
                    yield _event(event.error.body())
                    return
                else:
                    yield _event(reply.chunk("", event.reason))
                    if valid.include_usage:
                        yield _event(reply.usage_chunk(event))
                    yield _event("[DONE]")
                    return
        finally:
            self.worker.cancel(job)

    async def _whole(self, request: Request, job: Job, reply: TextReply, valid: ValidRequest) -> Response:
        """The whole answer once the job finishes; stops waiting (and the job) if the client disconnects."""
        result: list[Delta | Finished | Failed] = []

        async def collect(scope: anyio.CancelScope) -> None:
            while not isinstance(event := await job.events.get(), (Finished, Failed)):
                result.append(event)
            result.append(event)
            scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(collect, group.cancel_scope)
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()  # the client disconnected: collect is cancelled, the job stopped
        if not result or not isinstance(result[-1], (Finished, Failed)):
            return Response(status_code=499)  # nobody is listening
        *deltas, end = result
        if isinstance(end, Failed):
            raise end.error
        return JSONResponse(reply.whole(valid.echo + "".join(d.text for d in deltas), end),
                            headers={"x-request-id": reply.id})


async def _api_error(request: Request, exc: ApiError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    error = ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    return JSONResponse(internal(f"internal error: {type(exc).__name__}: {exc}").body(), status_code=500)
