"""The gateway's HTTP surface: OpenAI-compatible routes that record every tracked call in the store.

Routes (``{r}`` = rollout id, ``{a}`` = attempt id; an agent gets ``base_url = http://HOST:PORT/r/{r}/{a}/v1``)::

    POST /r/{r}/{a}/v1/chat/completions     recorded as llm_call spans of attempt {a}
    POST /r/{r}/{a}/v1/completions          recorded
    GET  /r/{r}/{a}/v1/models
    POST /v1/chat/completions               served, NOT recorded (no attempt to attach it to)
    POST /v1/completions                    served, not recorded
    GET  /v1/models

Evaluation is greedy without agent changes: on a tracked call of a ``val`` or ``test`` rollout, a request that
sets no ``temperature`` is served with ``temperature=0``, or with the temperature the rollout's metadata asks
for (:data:`~tracerl.types.SAMPLING_KEY`, a sampled pass@k evaluation); an explicit value from the agent is kept.

Prompt optimization without agent changes: a tracked chat call of a rollout that runs with a version of the
``prompts`` resource is served with its system prompt substituted and demonstrations inserted
(:mod:`tracerl.prompts`); its spans record ``attributes["prompts"]``.

A tracked call first checks the attempt: unknown rollout, or an attempt that is not one of its attempts →
404; an attempt that is no longer running (finished, cancelled, expired) → 409, and nothing is generated.
The call's spans are written before the response is sent (streamed or not), so when the agent returns and
its runner finishes the attempt, every call is already in the store. A body that is not JSON, or nests
deeper than the store could record (:data:`MAX_BODY_DEPTH`), is a 400 before the attempt is looked up.
Errors use OpenAI's error JSON (:mod:`tracerl.gateway.errors`).

Usage, inside ``tracerl serve`` (``create_app(store, gateway_router=build_gateway_router(...))``) or
standalone in-process (the trainer)::

    gw = start_gateway(store, engine, model_name="tiny-random")     # uvicorn on 127.0.0.1, a free port
    client = openai.OpenAI(base_url=gw.base_url(rollout_id, attempt_id), api_key="unused")
    ...
    gw.stop()
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response, StreamingResponse

from tracerl.engines.base import TokenEngine
from tracerl.errors import AttemptFinished, ConfigError, InvalidInput
from tracerl.gateway.errors import GatewayError, error_body, to_openai_error
from tracerl.gateway.history import AttemptKey
from tracerl.gateway.recording import check_attempt, write_spans
from tracerl.gateway.service import DEFAULT_MAX_TOKENS, CallResult, TokenService
from tracerl.gateway.spans import build_spans
from tracerl.gateway.streaming import chat_events, completion_events, sse
from tracerl.prompts import PromptBook, PromptTable, apply_to_body
from tracerl.store.base import MAX_JSON_DEPTH, Store, validate_json_depth

log = logging.getLogger(__name__)

ENDPOINTS = ("chat/completions", "completions")


class Service(Protocol):
    """What the routes need from a backend: a token engine (:class:`TokenService`) or a frozen upstream."""

    async def models(self) -> dict[str, Any]: ...
    async def chat(self, body: Any, attempt: AttemptKey | None = None) -> CallResult: ...
    async def completion(self, body: Any) -> CallResult: ...
    def forget(self, attempt: AttemptKey) -> None: ...


def _json_response(payload: dict[str, Any], status: int = 200) -> Response:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(data, status_code=status, media_type="application/json")


def _error_response(exc: BaseException) -> Response:
    status, body = to_openai_error(exc)
    return _json_response(body, status)


MAX_BODY_DEPTH = MAX_JSON_DEPTH - 1
"""Deepest request body the gateway accepts: a tracked call stores the body as ``attributes["request"]`` of
its spans (one level down), and the store keeps JSON at most :data:`~tracerl.store.base.MAX_JSON_DEPTH`
levels deep. Deeper bodies get a 400 before the attempt is looked up or anything is generated."""


async def _body(request: Request) -> Any:
    """The request body as JSON; a :class:`GatewayError` (400) if it is malformed or nested too deep."""
    raw = await request.body()
    too_deep = GatewayError(
        f"the request body is nested more than {MAX_BODY_DEPTH} levels deep, more than the gateway can record; "
        "flatten it (for example, send a deep tool argument as a JSON string)",
        code="body_too_deep",
    )
    try:
        body = json.loads(raw)
    except RecursionError:  # deeper than the parser itself can go: far over the limit
        raise too_deep from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GatewayError(f"the request body is not valid JSON: {e}") from None
    if raw.count(b"{") + raw.count(b"[") > MAX_BODY_DEPTH:  # else it cannot nest that deep
        try:
            validate_json_depth(body, "request body", MAX_BODY_DEPTH)
        except InvalidInput:
            raise too_deep from None
    return body


async def _aiter(events: Iterator[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


def _deliver(result: CallResult) -> Response:
    if not result.stream:
        return _json_response(result.response)
    if result.raw_events is not None:
        events: Iterator[bytes] = iter([*(sse(e) for e in result.raw_events), sse("[DONE]")])
    elif result.endpoint == "chat.completions":
        events = chat_events(result.response, result.pieces, include_usage=result.include_usage)
    else:
        events = completion_events(result.response, result.pieces, include_usage=result.include_usage)
    return StreamingResponse(
        _aiter(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def make_service(engine: Any, *, model_name: str | None, default_max_tokens: int) -> Service:
    """The :class:`Service` for ``engine``: a :class:`TokenEngine` or an ``OpenAIUpstream``, or a dict of
    them by model name (several models behind one gateway: :mod:`tracerl.gateway.routing`)."""
    if isinstance(engine, dict):
        from tracerl.gateway.routing import RoutedService

        return RoutedService({
            str(name): make_service(e, model_name=str(name), default_max_tokens=default_max_tokens)
            for name, e in engine.items()
        })  # fmt: skip
    if isinstance(engine, TokenEngine):
        return TokenService(engine, model_name=model_name or engine.model_name, default_max_tokens=default_max_tokens)
    from tracerl.engines.openai import OpenAIUpstream
    from tracerl.gateway.upstream import UpstreamService

    if isinstance(engine, OpenAIUpstream):
        return UpstreamService(engine, model_name=model_name)
    raise ConfigError(f"the gateway needs a TokenEngine or an OpenAIUpstream, got {type(engine).__name__}")


def build_gateway_router(
    store: Store,
    engine: Any,
    *,
    model_name: str | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> APIRouter:
    """The gateway's routes for ``engine`` (a :class:`TokenEngine` or ``OpenAIUpstream``), recording into
    ``store``. ``model_name`` is the name clients must pass as ``model`` (default: the engine's)."""
    service = make_service(engine, model_name=model_name, default_max_tokens=default_max_tokens)
    router = APIRouter(tags=["gateway"])
    # rollout id -> (default temperature, prompts): immutable, cached
    modes: dict[str, tuple[float | None, PromptTable | None]] = {}
    book = PromptBook(store)

    def rollout_info(rollout_id: str) -> tuple[float | None, PromptTable | None]:
        info = modes.get(rollout_id)
        if info is None:
            if len(modes) >= 100_000:
                modes.clear()
            rollout = store.get_rollout(rollout_id)
            evaluation = rollout.eval_sampling()
            temperature = None if evaluation is None else evaluation["temperature"]
            info = modes[rollout_id] = (temperature, book.for_rollout(rollout))
        return info

    async def serve(endpoint: str, body: Any, attempt: AttemptKey | None = None) -> CallResult:
        if endpoint == "chat/completions":
            return await service.chat(body, attempt)
        return await service.completion(body)

    def handlers(endpoint: str) -> tuple[Any, Any]:
        async def tracked(request: Request, rollout_id: str, attempt_id: str) -> Response:
            try:
                body = await _body(request)  # a malformed or too deep body is refused before any store call
                await asyncio.to_thread(check_attempt, store, rollout_id, attempt_id)
                temperature, prompts = await asyncio.to_thread(rollout_info, rollout_id)
                if isinstance(body, dict) and "temperature" not in body and temperature is not None:
                    body["temperature"] = temperature  # evaluation rollouts decode greedily by default
                substituted = None
                if endpoint == "chat/completions":  # the rollout's prompts version (tracerl.prompts)
                    body, substituted = apply_to_body(body, prompts)
                result = await serve(endpoint, body, (rollout_id, attempt_id))
                spans = build_spans(result, rollout_id=rollout_id, attempt_id=attempt_id)
                if substituted is not None:
                    for span in spans:
                        span.attributes["prompts"] = substituted
                await asyncio.to_thread(write_spans, store, spans)
            except Exception as e:
                if isinstance(e, AttemptFinished):
                    service.forget((rollout_id, attempt_id))
                return _error_response(e)
            return _deliver(result)

        async def untracked(request: Request) -> Response:
            try:
                result = await serve(endpoint, await _body(request))
            except Exception as e:
                return _error_response(e)
            return _deliver(result)

        return tracked, untracked

    for endpoint in ENDPOINTS:
        tracked, untracked = handlers(endpoint)
        name = endpoint.replace("/", "_")
        router.add_api_route(
            f"/r/{{rollout_id}}/{{attempt_id}}/v1/{endpoint}",
            tracked,
            methods=["POST"],
            name=f"gateway_{name}",
            summary=f"OpenAI {endpoint}, recorded as llm_call spans of the attempt",
        )
        router.add_api_route(
            f"/v1/{endpoint}",
            untracked,
            methods=["POST"],
            name=f"gateway_{name}_untracked",
            summary=f"OpenAI {endpoint}, served but not recorded",
        )

    @router.get("/r/{rollout_id}/{attempt_id}/v1/models", summary="the served model (attempt checked)")
    async def models_tracked(rollout_id: str, attempt_id: str) -> Response:
        try:
            await asyncio.to_thread(check_attempt, store, rollout_id, attempt_id)
            return _json_response(await service.models())
        except Exception as e:
            return _error_response(e)

    @router.get("/v1/models", summary="the served model")
    async def models() -> Response:
        try:
            return _json_response(await service.models())
        except Exception as e:
            return _error_response(e)

    return router


def create_gateway_app(
    store: Store,
    engine: Any,
    *,
    model_name: str | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> FastAPI:
    """A standalone app serving only the gateway (unknown routes get an OpenAI-format 404)."""
    app = FastAPI(title="tracerl gateway", description="OpenAI-compatible front door that records LLM calls.")
    app.include_router(
        build_gateway_router(store, engine, model_name=model_name, default_max_tokens=default_max_tokens)
    )

    @app.exception_handler(404)
    async def not_found(request: Request, _: Exception) -> Response:
        msg = f"no route {request.method} {request.url.path}; use base_url http://HOST:PORT/r/<rollout>/<attempt>/v1"
        return _json_response(error_body(msg, 404), 404)

    @app.exception_handler(405)
    async def wrong_method(request: Request, _: Exception) -> Response:
        return _json_response(error_body(f"{request.method} is not allowed on {request.url.path}", 405), 405)

    return app


@dataclass
class RunningGateway:
    """A gateway served by uvicorn in a background thread; ``url`` is ``http://127.0.0.1:PORT``."""

    url: str
    _server: Any
    _thread: threading.Thread

    def base_url(self, rollout_id: str, attempt_id: str) -> str:
        """The OpenAI ``base_url`` that records calls into this attempt."""
        return f"{self.url}/r/{rollout_id}/{attempt_id}/v1"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving (requests in flight finish first) and join the thread."""
        self._server.should_exit = True
        self._thread.join(timeout_s)


def start_gateway(
    store: Store,
    engine: Any,
    *,
    model_name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> RunningGateway:
    """Serve :func:`create_gateway_app` with uvicorn in a daemon thread on ``host:port`` (0: a free port);
    returns once it accepts connections."""
    app = create_gateway_app(store, engine, model_name=model_name, default_max_tokens=default_max_tokens)
    gateway = serve_in_thread(app, host=host, port=port)
    log.info("gateway for %s serving at %s", model_name or getattr(engine, "model_name", "?"), gateway.url)
    return gateway


def serve_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 30.0
) -> RunningGateway:
    """Serve any ASGI ``app`` with uvicorn in a daemon thread (the gateway alone, or ``tracerl serve``'s app
    with the gateway router mounted); returns once it accepts connections."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot bind the gateway to {host}:{port}: {e}; pick another port (0 = any free)") from e
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="tracerl-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        raise ConfigError(f"the gateway did not start on {host}:{bound_port} within {startup_timeout_s} s")
    return RunningGateway(url=f"http://{host}:{bound_port}", _server=server, _thread=thread)
