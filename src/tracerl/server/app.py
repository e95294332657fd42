"""The ASGI application of ``tracerl serve``: the store's REST API, OTLP ingest and (optionally) the gateway.

:func:`create_app` wraps one :class:`~tracerl.store.Store` and adds what every route shares:

* bearer-token auth when a token is set (``Authorization: Bearer <token>``, compared in constant time with
  :func:`hmac.compare_digest`; ``/healthz`` stays open so load balancers can probe it); the token is never
  logged;
* a request-size limit checked twice: the declared ``Content-Length`` before the app runs, and the bytes
  actually streamed (a chunked upload cannot sneak past it) → ``413``;
* JSON errors ``{"error": {"type": <tracerl.errors class>, "message": ...}}`` with the class's
  ``http_status``; unknown routes 404, wrong methods 405, anything unexpected 500 with the detail only in
  the server log (never a stack trace to the client);
* a background task that expires run-out leases every ``expire_interval_s`` seconds, so attempts of a
  crashed runner are requeued even when nobody claims;
* errors whose full message names the database (host, user, database, schema) send clients their
  ``client_message`` and log the full one.

Header size and count are bounded before the app runs, in the HTTP parser (431; see
:mod:`tracerl.server.limits`).

Usage::

    from tracerl.store import connect
    app = create_app(connect("sqlite:///runs/x.db"), token=None)   # then: uvicorn.run(app)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tracerl.errors import InvalidInput, NotFound, PayloadTooLarge, ServerError, TracerlError, Unauthorized
from tracerl.server import api, otlp
from tracerl.server.calls import close_read_process
from tracerl.server.dashboard import routes as dashboard
from tracerl.store.base import Store
from tracerl.store.wire import dumps, error_body

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
OPEN_PATHS = frozenset({"/healthz", *dashboard.PUBLIC_PATHS})  # the dashboard's page and code, never data
TITLE = "tracerl store server"


def create_app(
    store: Store,
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    gateway_router: APIRouter | None = None,
    expire_interval_s: float = 1.0,
    runs_dir: str | None = None,
    tokenizer: Any = None,
) -> Starlette:
    """The server app around ``store``. Routes: ``/api/v1/...`` (store), ``/v1/traces`` (OTLP),
    ``/healthz``, ``/openapi.json``, ``/docs``, plus ``gateway_router``'s routes when one is given, and the
    dashboard at ``/`` (:mod:`tracerl.server.dashboard`; ``runs_dir`` holds the runs whose metrics it charts,
    ``tokenizer`` decodes response tokens for its log-prob strip).

    The store API is served by the :class:`~tracerl.server.api.Api` ASGI layer (see that module for why);
    the gateway's FastAPI router runs in a FastAPI sub-app mounted behind the other routes, with its
    lifespan run by this app's.
    """
    if max_body_bytes < 1:
        raise InvalidInput(f"max_body_bytes must be ≥ 1, got {max_body_bytes}")
    handlers: dict[Any, Any] = {
        TracerlError: _tracerl_error,
        HTTPException: _http_error,
        RequestValidationError: _validation_error,
        Exception: _unexpected_error,
    }
    gateway: FastAPI | None = None
    if gateway_router is not None:
        gateway = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, exception_handlers=handlers)
        gateway.include_router(gateway_router)
    spec: dict[str, Any] = {}

    async def openapi(_: Request) -> Response:
        if not spec:
            documented = [*api.openapi_routes().routes, *otlp.openapi_routes().routes]
            if gateway_router is not None:
                documented += gateway_router.routes
            spec.update(get_openapi(title=TITLE, version="1", routes=documented, description=__doc__))
        return Response(dumps(spec), media_type="application/json")

    async def docs(_: Request) -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=TITLE)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(_expire_forever(store, expire_interval_s))
        try:
            if gateway is not None:
                async with gateway.router.lifespan_context(gateway):
                    yield
            else:
                yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            close_read_process(store)

    routes: list[Any] = [
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
        Route("/docs", docs, methods=["GET"], include_in_schema=False),
        *otlp.routes(store, max_body_bytes=max_body_bytes),
        *dashboard.routes(store, runs_dir=runs_dir, tokenizer=tokenizer),
    ]
    if gateway is not None:
        routes.append(Mount("", app=gateway))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(Guard, token=token, max_body_bytes=max_body_bytes),  # pyright: ignore[reportArgumentType]
            Middleware(api.Api, store=store),  # pyright: ignore[reportArgumentType]
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.store = store
    return app


async def _healthz(_: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def _expire_forever(store: Store, interval_s: float) -> None:
    """Expire run-out leases every ``interval_s`` seconds until cancelled; failures are logged, not fatal."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            expired = await anyio.to_thread.run_sync(store.expire_leases)
        except Exception:
            logger.exception("expiring leases failed; will retry in %.1f s", interval_s)
            continue
        for a in expired:
            logger.info("lease of attempt %s (rollout %s) ran out: requeued or failed", a.attempt_id, a.rollout_id)


# -- errors ----------------------------------------------------------------------------------------


def json_error(exc: TracerlError, status: int | None = None) -> Response:
    """``exc`` as the JSON error document with its class's HTTP status (or ``status``)."""
    return Response(error_body(exc), status_code=status or exc.http_status, media_type="application/json")


async def _tracerl_error(request: Request, exc: TracerlError) -> Response:
    if exc.http_status >= 500 or exc.client_message is not None:  # the client gets less than the log
        logger.warning("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return json_error(exc)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        err: TracerlError = NotFound(f"no route {request.method} {request.url.path}; see /docs for the API")
    else:
        err = InvalidInput(f"{request.method} {request.url.path}: {exc.detail}")
    headers = dict(exc.headers) if exc.headers else None
    return Response(error_body(err), status_code=exc.status_code, media_type="application/json", headers=headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()[:10]
    )
    return json_error(InvalidInput(f"invalid request: {problems}"), status=422)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return json_error(ServerError("internal server error; the details are in the server log"))


# -- auth and size limits --------------------------------------------------------------------------


class Guard:
    """Pure ASGI middleware: bearer-token check and request-size limit (cheap: no per-request objects)."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.expected is not None:
            auth = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(auth, self.expected):
                await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong bearer token"})
                return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        auth = b""
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"authorization":
                auth = value
        needs_token = self.expected is not None and scope["path"] not in OPEN_PATHS
        if needs_token and not hmac.compare_digest(auth, self.expected or b""):
            why = "no bearer token was sent" if not auth else "the bearer token is wrong"
            await _send_error(
                send,
                Unauthorized(f"{why}; send the server's token as 'Authorization: Bearer <token>'"),
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_error(send, InvalidInput(f"Content-Length {declared!r} is not a number"))
                return
            if size > self.max_body_bytes:
                await _send_error(send, self._too_large(size))
                return
            # The HTTP parser delivers exactly Content-Length bytes, so only bodies without one (chunked
            # uploads) need counting as they stream in.
            await self.app(scope, receive, send)
            return
        await self._limited(scope, receive, send)

    def _too_large(self, size: int | None) -> PayloadTooLarge:
        got = f"request body of {size} bytes is" if size is not None else "streamed request body grew"
        return PayloadTooLarge(
            f"{got} over the server's limit of {self.max_body_bytes} bytes; "
            "send smaller batches (or start the server with a larger --max-body-mb)"
        )

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a ``receive`` that stops a body growing past the limit while it streams."""
        seen = 0
        overflow: PayloadTooLarge | None = None
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, overflow
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    overflow = self._too_large(None)
                    raise overflow
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overflow is not None:  # whatever the app answers, the client gets the 413
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _send_error(send, overflow)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except PayloadTooLarge:
            if not started and overflow is not None:
                await _send_error(send, overflow)
            elif not started:
                raise


async def _send_error(send: Send, exc: TracerlError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = error_body(exc)
    await send(
        {
            "type": "http.response.start",
            "status": exc.http_status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

