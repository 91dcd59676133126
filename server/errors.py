"""Errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}` with its HTTP status."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered to the client: HTTP `status` and the OpenAI error object."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI's clients parse."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """400: the request is malformed or asks for something this server does not do."""
    return ApiError(400, message, param=param, code=code)


def unknown_model(name: object, served: str) -> ApiError:
    """404: the request names a model this server does not serve."""
    return ApiError(404, f"The model {name!r} does not exist: this server serves {served!r}", param="model",
                    code="model_not_found")


def overloaded(queue: int) -> ApiError:
    """503: the queue of waiting requests is full."""
    return ApiError(503, f"The server is busy: {queue} requests are already waiting; retry later",
                    kind="server_error", code="queue_full")


def internal(message: str) -> ApiError:
    """500: generation failed for a reason that is not the request's."""
    return ApiError(500, message, kind="server_error")
