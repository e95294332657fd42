"""OpenAI-format errors for the gateway.

OpenAI clients (and every agent framework built on them) read an error body of the form::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

and raise by HTTP status (400 ``BadRequestError``, 404 ``NotFoundError``, 409 ``ConflictError``, ...).
The gateway raises :class:`GatewayError` (an :class:`~tracerl.errors.InvalidInput`, so code that only knows
tracerl's errors still sees a 400) with the offending ``param`` and a machine-readable ``code``, and maps
any other :class:`~tracerl.errors.TracerlError` by its ``http_status``. Unexpected exceptions become a 500
with a generic message: the stack trace goes to the log, never to the client.
"""

from __future__ import annotations

import logging
from typing import Any

from tracerl.errors import InvalidInput, TracerlError

log = logging.getLogger(__name__)

# HTTP status -> OpenAI error "type"
_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    503: "service_unavailable_error",
}


class GatewayError(InvalidInput):
    """A request the gateway refuses, with the OpenAI ``param`` it concerns and an error ``code``."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.code = code
        self.http_status = status


def error_body(message: str, status: int, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The JSON body of an OpenAI-format error response."""
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def to_openai_error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` for any exception raised while serving a request."""
    if isinstance(exc, GatewayError):
        return exc.http_status, error_body(str(exc), exc.http_status, param=exc.param, code=exc.code)
    if isinstance(exc, TracerlError):
        status = exc.http_status
        if status >= 500:
            log.error("gateway request failed: %s", exc)
        return status, error_body(str(exc), status, code=type(exc).__name__)
    log.exception("unexpected error while serving a gateway request", exc_info=exc)
    return 500, error_body("internal error in the tracerl gateway (see the server log)", 500)
