"""REST routes for the whole store contract, under ``/api/v1`` (JSON in, JSON out).

=======  =========================================  ==================================================
method   path                                       store call
=======  =========================================  ==================================================
POST     /api/v1/rollouts                           ``enqueue`` — body ``{"specs": [spec, ...]}``
POST     /api/v1/claims                             ``claim`` — ``{"worker_id", "lease_s", "modes", "wait_s"}``
POST     /api/v1/attempts/{id}/heartbeat            ``heartbeat`` — ``{"lease_s"}`` (body optional)
POST     /api/v1/attempts/{id}/finish               ``finish`` — ``{"status", "reward", "error"}``
POST     /api/v1/attempts/{id}/release              ``release`` — no body
POST     /api/v1/rollouts/{id}/cancel               ``cancel``
GET      /api/v1/rollouts/{id}                      ``get_rollout``
GET      /api/v1/rollouts/{id}/attempts             ``get_attempts``
POST     /api/v1/rollouts/query                     ``query_rollouts`` — a RolloutQuery as JSON
POST     /api/v1/rollouts/wait                      ``wait`` — ``{"rollout_ids", "timeout_s"}``
POST     /api/v1/spans                              ``add_spans`` — ``{"spans": [span, ...]}``
GET      /api/v1/spans?rollout_id=|attempt_id=      ``get_spans`` (``&encoding=packed`` for base64 ids)
POST     /api/v1/rollouts/traces                    ``get_traces`` — ``{"rollout_ids": [...], "encoding"?}``
PUT      /api/v1/resources/{name}                   ``put_resource`` — ``{"value": {...}}``
GET      /api/v1/resources/{name}[?version=N]       ``get_resource``
POST     /api/v1/experiment                         ``bind_experiment`` — ``{"name"}``
POST     /api/v1/leases/expire                      ``expire_leases`` — no body (the server's clock)
=======  =========================================  ==================================================

Resource names may contain ``/`` (the route takes the rest of the path), which is why the version is a
query parameter rather than a path segment. Long polls (``claim`` with ``wait_s``, ``wait``) wait at most
:data:`MAX_WAIT_S` per request (more is refused with a 400, not silently cut);
:class:`~tracerl.store.http.HttpStore` loops for longer waits. Request bodies nested deeper than
:data:`MAX_BODY_DEPTH` are refused before any field is read, and the store refuses stored values deeper than
:data:`~tracerl.store.base.MAX_JSON_DEPTH`. A 405 names the allowed methods in ``Allow``; the OpenAPI
document lists the JSON error responses and the exact ranges the handlers accept.

Speed (the HTTP store must sustain ≥ 800 rollout lifecycles/s on 2 cores): :class:`Api` is a pure ASGI
layer that serves ``/api/v1/*`` itself — a dict/regex route table, the raw body parsed by hand (orjson
and the strict field readers of :mod:`tracerl.store.wire`), the answer sent as two ASGI messages — and
passes every other path on to the Starlette app (OTLP, docs, gateway). Starlette's Request/Response and
exception layers measured ~50 µs per request on this machine and FastAPI/pydantic routes ~3× that, which
is most of the budget; every bad field still gets a 400 naming it. The OpenAPI document is generated from
the same route table (:func:`openapi_routes`). Store calls never run on the event loop (a sqlite write
can wait seconds for another process's lock): :class:`~tracerl.server.calls.Calls` runs them in threads, and
bulk reads of a sqlite file in a child process (:mod:`tracerl.server.reads`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter
from starlette.types import ASGIApp, Receive, Scope, Send

from tracerl.errors import InvalidInput, NotFound, ServerError, TracerlError
from tracerl.server import reads
from tracerl.server.calls import Calls
from tracerl.store.base import (
    DEFAULT_LEASE_S,
    INT32_MAX,
    INT32_MIN,
    MAX_ID_CHARS,
    MAX_JSON_DEPTH,
    MAX_LEASE_S,
    MAX_QUERY_LIMIT,
    Store,
    validate_json_depth,
)
from tracerl.store.wire import (
    attempt_to_wire,
    dumps,
    enum_value,
    error_body,
    loads,
    opt_num,
    opt_str,
    query_from_wire,
    req_str,
    rollout_to_wire,
    span_from_wire,
    spec_from_wire,
)
from tracerl.types import JSON, AttemptStatus, Mode, RolloutStatus, SpanKind

logger = logging.getLogger(__name__)

PREFIX = "/api/v1/"
MAX_WAIT_S = 30.0
MAX_BODY_DEPTH = MAX_JSON_DEPTH + 3
"""Deepest request body accepted (checked before any field is read): the stored JSON limit plus the
wrapping levels of the deepest route, ``{"specs": [{"task": ...}]}``. Deeper bodies get a 400."""


LIGHT_ROWS = 200
"""A rollouts query of at most this many rows is answered on the normal lane; larger pages, and every
``get_spans``/``get_traces``, are read and encoded on the heavy-reads lane (:meth:`Calls.heavy`)."""


class Encoded:
    """A response body already encoded as JSON (heavy reads are encoded off the event loop), sent as is."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class ApiRequest:
    """What a handler sees of one request: path parameters, query parameters and the JSON body."""

    __slots__ = ("body", "method", "params", "path", "query_string")

    def __init__(self, method: str, path: str, params: dict[str, str], query_string: bytes, body: bytes) -> None:
        self.method, self.path, self.params, self.query_string, self.body = method, path, params, query_string, body

    def json(self, *, optional: bool = False) -> JSON:
        """The body as a JSON object; ``InvalidInput`` (400) if it is empty, malformed or not an object."""
        if not self.body.strip():
            if optional:
                return {}
            raise InvalidInput(f"{self.method} {self.path} needs a JSON object body")
        try:
            body = loads(self.body)
        except ValueError as e:
            raise InvalidInput(f"request body is not valid JSON ({e}); send a JSON object") from None
        if not isinstance(body, dict):
            raise InvalidInput(f"request body must be a JSON object, got {type(body).__name__}")
        if self.body.count(b"{") + self.body.count(b"[") > MAX_BODY_DEPTH:  # else it cannot nest that deep
            validate_json_depth(body, "request body", MAX_BODY_DEPTH)
        return body

    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string.decode("latin-1")))


Handler = Callable[[ApiRequest], Awaitable[Any]]


def _list(body: JSON, key: str) -> list[Any]:
    value = body.get(key)
    if not isinstance(value, list):
        raise InvalidInput(f"body.{key} must be a list, got {type(value).__name__}")
    return value


def _lease(body: JSON) -> float:
    value = opt_num(body, "lease_s", "body")
    return DEFAULT_LEASE_S if value is None else value


def _wait(body: JSON, key: str) -> float:
    value = opt_num(body, key, "body") or 0.0
    if not 0 <= value <= MAX_WAIT_S:
        raise InvalidInput(
            f"body.{key} must be in [0, {MAX_WAIT_S:g}] seconds, got {value:g}; wait longer by repeating the "
            "request (HttpStore does)"
        )
    return value


def _version(request: ApiRequest) -> int | None:
    raw = request.query().get("version")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"version {raw!r} must be an integer") from None


# -- the route table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One REST route: served by :class:`Api`, documented in the OpenAPI spec."""

    method: str
    path: str
    name: str
    summary: str
    body: JSON | None = None  # JSON schema of the request body, for the docs
    body_required: bool = True
    query: tuple[str, ...] = ()  # query parameters, for the docs


# The request schemas below are what the handlers accept, field for field: optional fields may be null
# (HttpStore sends nulls), ids are non-empty and bounded, numbers carry the ranges the store enforces.
_OBJ: JSON = {"type": "object"}
_STR: JSON = {"type": "string"}
_ID: JSON = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": "^[^\\u0000]*$"}
_INT64: JSON = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}


def _opt(schema: JSON) -> JSON:
    """``schema``, or null (an optional field the handlers treat as absent when it is null)."""
    return {"anyOf": [schema, {"type": "null"}]}


def _enum(cls: Any) -> JSON:
    return {"type": "string", "enum": [m.value for m in cls]}


_LEASE: JSON = _opt({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_LEASE_S})
_WAIT: JSON = _opt({"type": "number", "minimum": 0, "maximum": MAX_WAIT_S})
_NUMBERS: JSON = {"type": "array", "items": {"type": "number"}}
_INTS: JSON = {"type": "array", "items": {"type": "integer", "minimum": INT32_MIN, "maximum": INT32_MAX}}
_DEEP = f"; JSON values nest at most {MAX_JSON_DEPTH} levels"
_SPEC: JSON = {
    "type": "object",
    "required": ["task"],
    "properties": {
        "task": {**_OBJ, "description": "the task" + _DEEP}, "mode": _opt(_enum(Mode)), "group_id": _opt(_ID),
        "idempotency_key": _opt(_ID), "max_attempts": _opt({"type": "integer", "minimum": 1}),
        "resources_version": _opt(_INT64), "metadata": _opt(_OBJ),
    },
}  # fmt: skip
_SPAN: JSON = {
    "type": "object",
    "required": ["attempt_id", "seq", "kind"],
    "additionalProperties": False,
    "description": "token ids as JSON lists, or packed: prompt_ids_b64 = base64(int32 LE), logprobs_b64 = "
    "base64(float64 LE)" + _DEEP,
    "properties": {
        "attempt_id": _ID, "seq": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}, "kind": _enum(SpanKind),
        "position": _opt({**_INT64, "description": "assigned by the store (ignored on writes)"}),
        "name": _opt(_STR), "rollout_id": _opt(_STR), "parent_seq": _opt(_INT64),
        "start_time": _opt({"type": "number"}), "end_time": _opt({"type": "number"}), "attributes": _opt(_OBJ),
        "prompt_ids": _opt(_INTS), "response_ids": _opt(_INTS), "logprobs": _opt(_NUMBERS),
        "prompt_ids_b64": _opt(_STR), "response_ids_b64": _opt(_STR), "logprobs_b64": _opt(_STR),
    },
}  # fmt: skip
_QUERY: JSON = {
    "type": "object",
    "properties": {
        "status": _opt({"type": "array", "items": _enum(RolloutStatus)}), "mode": _opt(_enum(Mode)),
        "group_id": _opt(_ID), "resources_version": _opt(_INT64), "created_after": _opt({"type": "number"}),
        "created_before": _opt({"type": "number"}), "rollout_ids": _opt({"type": "array", "items": _ID}),
        "limit": _opt({"type": "integer", "minimum": 1, "maximum": MAX_QUERY_LIMIT}),
        "offset": _opt({"type": "integer", "minimum": 0}),
    },
}  # fmt: skip
ERROR_SCHEMA: JSON = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["type", "message"], "properties": {
        "type": {"type": "string", "description": "the tracerl.errors class, e.g. InvalidInput, NotFound"},
        "message": {"type": "string", "description": "what was wrong and how to fix it"}}}},
}  # fmt: skip
ERROR_RESPONSES: dict[int | str, Any] = {
    code: {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for code, text in (
        (400, "invalid input: a field's type, range or nesting, named in the message"),
        (401, "no bearer token, or a wrong one (when the server has a token)"),
        (404, "unknown id, resource or route"),
        (405, "method not allowed on this path; the Allow header lists the right ones"),
        (409, "illegal status change, finished attempt, or conflicting write"),
        (413, "request body over the server's limit"),
        (431, "request header section too large"),
        (500, "internal error; the details are in the server log"),
        (503, "the store backend is unavailable"),
    )
}


def _obj(required: list[str], **props: JSON) -> JSON:
    return {"type": "object", "required": required, "properties": props}


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("POST", "/api/v1/rollouts", "enqueue", "enqueue rollouts",
             _obj(["specs"], specs={"type": "array", "items": _SPEC})),
    Endpoint("POST", "/api/v1/claims", "claim", "claim the oldest queued rollout as a new attempt",
             _obj(["worker_id"], worker_id=_ID, lease_s=_LEASE, modes=_opt({"type": "array", "items": _enum(Mode)}),
                  wait_s=_WAIT)),
    Endpoint("POST", "/api/v1/attempts/{attempt_id}/heartbeat", "heartbeat", "extend a running attempt's lease",
             _obj([], lease_s=_LEASE), body_required=False),
    Endpoint("POST", "/api/v1/attempts/{attempt_id}/finish", "finish", "end a running attempt",
             _obj(["status"], status={"type": "string", "enum": [s.value for s in AttemptStatus][1:]},
                  reward=_opt({"type": "number"}), error=_opt(_STR))),
    Endpoint("POST", "/api/v1/attempts/{attempt_id}/release", "release",
             "hand back a running attempt that never started (its rollout is queued again)"),
    Endpoint("POST", "/api/v1/rollouts/query", "query", "query rollouts (filters and pagination)", _QUERY,
             body_required=False),
    Endpoint("POST", "/api/v1/rollouts/wait", "wait", "wait until rollouts are final",
             _obj(["rollout_ids"], rollout_ids={"type": "array", "items": _ID}, timeout_s=_WAIT)),
    Endpoint("POST", "/api/v1/rollouts/{rollout_id}/cancel", "cancel", "cancel a queued or running rollout"),
    Endpoint("POST", "/api/v1/rollouts/traces", "get_traces",
             "rollouts with their attempts and their final attempt's spans, in one call",
             _obj(["rollout_ids"], rollout_ids={"type": "array", "items": _ID, "maxItems": MAX_QUERY_LIMIT},
                  encoding=_opt({"type": "string", "enum": ["json", "packed"]}))),
    Endpoint("GET", "/api/v1/rollouts/{rollout_id}", "get_rollout", "one rollout"),
    Endpoint("GET", "/api/v1/rollouts/{rollout_id}/attempts", "get_attempts", "a rollout's attempts, oldest first"),
    Endpoint("POST", "/api/v1/spans", "add_spans", "record spans (idempotent on (attempt_id, seq))",
             _obj(["spans"], spans={"type": "array", "items": _SPAN})),
    Endpoint("GET", "/api/v1/spans", "get_spans", "spans of one attempt, or of every attempt of a rollout",
             query=("rollout_id", "attempt_id", "encoding")),
    Endpoint("PUT", "/api/v1/resources/{name:path}", "put_resource", "store the next version of a resource",
             _obj(["value"], value={**_OBJ, "description": "the resource" + _DEEP})),
    Endpoint("GET", "/api/v1/resources/{name:path}", "get_resource", "a resource's latest (or given) version",
             query=("version",)),
    Endpoint("POST", "/api/v1/experiment", "bind_experiment", "bind the store to an experiment name",
             _obj(["name"], name=_ID)),
    Endpoint("POST", "/api/v1/leases/expire", "expire_leases",
             "expire leases that ran out by the server's clock (a body with 'now' is refused)"),
)  # fmt: skip


def handlers(store: Store) -> dict[str, Handler]:
    """The request handlers bound to ``store``, by :attr:`Endpoint.name`; each returns the JSON payload."""
    call = Calls(store)

    async def enqueue(request: ApiRequest) -> Any:
        body = request.json()
        specs = [spec_from_wire(s, f"specs[{i}]") for i, s in enumerate(_list(body, "specs"))]
        return {"rollouts": [rollout_to_wire(x) for x in await call(store.enqueue, specs)]}

    async def claim(request: ApiRequest) -> Any:
        body = request.json()
        worker_id = req_str(body, "worker_id", "body")
        modes = body.get("modes")
        if modes is not None:
            modes = [enum_value(Mode, m, "body.modes") for m in _list(body, "modes")]
        wait_s = _wait(body, "wait_s")
        runner = call.long if wait_s > 0 else call
        got = await runner(store.claim, worker_id, lease_s=_lease(body), modes=modes, wait_s=wait_s)
        if got is None:
            return {"claim": None}
        return {"claim": {"rollout": rollout_to_wire(got.rollout), "attempt": attempt_to_wire(got.attempt)}}

    async def heartbeat(request: ApiRequest) -> Any:
        lease_s = _lease(request.json(optional=True))
        return attempt_to_wire(await call(store.heartbeat, request.params["attempt_id"], lease_s=lease_s))

    async def finish(request: ApiRequest) -> Any:
        body = request.json()
        status = enum_value(AttemptStatus, body.get("status"), "body.status")
        reward, error = opt_num(body, "reward", "body"), opt_str(body, "error", "body")
        attempt_id = request.params["attempt_id"]
        return rollout_to_wire(await call(store.finish, attempt_id, status, reward=reward, error=error))

    async def release(request: ApiRequest) -> Any:
        return rollout_to_wire(await call(store.release, request.params["attempt_id"]))

    async def query(request: ApiRequest) -> Any:
        q = query_from_wire(request.json(optional=True))
        if q.limit <= LIGHT_ROWS:
            return Encoded(await call(reads.page, store, q))
        return Encoded(await call.heavy(reads.page, q))

    async def wait(request: ApiRequest) -> Any:
        body = request.json()
        ids = _list(body, "rollout_ids")
        if not all(isinstance(i, str) for i in ids):
            raise InvalidInput("body.rollout_ids must be a list of strings")
        done = await call.long(store.wait, ids, timeout_s=_wait(body, "timeout_s"))
        return {"rollouts": [rollout_to_wire(x) for x in done]}

    async def cancel(request: ApiRequest) -> Any:
        return rollout_to_wire(await call(store.cancel, request.params["rollout_id"]))

    async def get_rollout(request: ApiRequest) -> Any:
        return rollout_to_wire(await call(store.get_rollout, request.params["rollout_id"]))

    async def get_attempts(request: ApiRequest) -> Any:
        return {"attempts": [attempt_to_wire(a) for a in await call(store.get_attempts, request.params["rollout_id"])]}

    async def add_spans(request: ApiRequest) -> Any:
        spans = [span_from_wire(s, f"spans[{i}]") for i, s in enumerate(_list(request.json(), "spans"))]
        return {"added": await call(store.add_spans, spans)}

    async def get_spans(request: ApiRequest) -> Any:
        q = request.query()
        encoding = q.get("encoding", "json")
        if encoding not in ("json", "packed"):
            raise InvalidInput(f"encoding {encoding!r} is not one of ['json', 'packed']")
        packed = encoding == "packed"
        return Encoded(await call.heavy(reads.spans, q.get("rollout_id"), q.get("attempt_id"), packed, bulk=False))

    async def get_traces(request: ApiRequest) -> Any:
        body = request.json()
        ids = _list(body, "rollout_ids")
        if not all(isinstance(i, str) for i in ids):
            raise InvalidInput("body.rollout_ids must be a list of strings")
        encoding = body.get("encoding") or "json"
        if encoding not in ("json", "packed"):
            raise InvalidInput(f"body.encoding {encoding!r} is not one of ['json', 'packed']")
        return Encoded(await call.heavy(reads.traces, ids, encoding == "packed"))

    async def put_resource(request: ApiRequest) -> Any:
        value = request.json().get("value")
        if not isinstance(value, dict):
            raise InvalidInput(f"body.value must be a JSON object, got {type(value).__name__}")
        return (await call(store.put_resource, request.params["name"], value)).to_json()

    async def get_resource(request: ApiRequest) -> Any:
        return (await call(store.get_resource, request.params["name"], _version(request))).to_json()

    async def bind_experiment(request: ApiRequest) -> Any:
        name = req_str(request.json(), "name", "body")
        await call(store.bind_experiment, name)
        return {"name": name}

    async def expire_leases(request: ApiRequest) -> Any:
        if request.json(optional=True).get("now") is not None:
            raise InvalidInput(
                "body.now is not accepted: leases expire by the server's own clock, which a client must not "
                "move; send no body (or {})"
            )
        return {"attempts": [attempt_to_wire(a) for a in await call(store.expire_leases)]}

    handlers = (enqueue, claim, heartbeat, finish, release, query, wait, cancel, get_rollout, get_attempts, add_spans,
                get_spans, get_traces, put_resource, get_resource, bind_experiment, expire_leases)  # fmt: skip
    return {fn.__name__: fn for fn in handlers}


class Api:
    """Pure ASGI middleware serving ``/api/v1/*`` from :data:`ENDPOINTS`; other paths go on to ``app``.

    Unknown ``/api/v1`` paths get 404, a known path with another method 405, errors their JSON document;
    anything unexpected is logged here and answered 500 without details.
    """

    def __init__(self, app: ASGIApp, *, store: Store) -> None:
        self.app = app
        by_name = handlers(store)
        self.static: dict[tuple[str, str], Handler] = {}
        self.patterns: list[tuple[str, re.Pattern[str], Handler]] = []
        for e in ENDPOINTS:
            if "{" in e.path:
                self.patterns.append((e.method, _compile(e.path), by_name[e.name]))
            else:
                self.static[(e.method, e.path)] = by_name[e.name]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        status = 200
        extra: list[tuple[bytes, bytes]] = []
        try:
            handler, params = self._route(method, path)
            chunks: list[bytes] = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            request = ApiRequest(method, path, params, scope.get("query_string", b""), b"".join(chunks))
            result = await handler(request)
            data = result.data if isinstance(result, Encoded) else dumps(result)
        except TracerlError as e:
            status, data = e.http_status, error_body(e)
            if status >= 500 or e.client_message is not None:  # the client gets less than the log
                logger.warning("%s %s failed: %s: %s", method, path, type(e).__name__, e)
            if status == 405:
                extra = [(b"allow", ", ".join(self._allowed(path)).encode())]
        except Exception:
            logger.exception("unexpected error on %s %s", method, path)
            status, data = 500, error_body(ServerError("internal server error; the details are in the server log"))
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *extra]})  # fmt: skip
        await send({"type": "http.response.body", "body": data})

    def _route(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        handler = self.static.get((method, path))
        if handler is not None:
            return handler, {}
        for m, pattern, h in self.patterns:
            if m == method:
                match = pattern.fullmatch(path)
                if match is not None:
                    return h, match.groupdict()
        allowed = self._allowed(path)
        if allowed:
            wrong_method = InvalidInput(
                f"{method} is not allowed on {path}; use {' or '.join(allowed)} (see /docs for the API)"
            )
            wrong_method.http_status = 405  # sent with an Allow header listing ``allowed``
            raise wrong_method
        raise NotFound(f"no route {method} {path}; see /docs for the API")

    def _allowed(self, path: str) -> list[str]:
        """The methods served on ``path`` (empty for an unknown path)."""
        methods = {m for m, p in self.static if p == path}
        methods.update(m for m, pattern, _ in self.patterns if pattern.fullmatch(path))
        return sorted(methods)


def _compile(path: str) -> re.Pattern[str]:
    """``/a/{id}/b`` → a regex with named groups; ``{name:path}`` may span slashes."""
    regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", re.escape(path).replace(r"\{", "{").replace(r"\}", "}"))
    return re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex))


def openapi_routes() -> APIRouter:
    """Documentation-only FastAPI routes mirroring :data:`ENDPOINTS`, for generating ``/openapi.json``."""
    doc = APIRouter(tags=["store"])
    for e in ENDPOINTS:
        params = [
            {"name": p.split(":")[0], "in": "path", "required": True, "schema": _ID}
            for p in (seg[1:-1] for seg in e.path.split("/") if seg.startswith("{"))
        ] + [{"name": q, "in": "query", "required": False, "schema": _STR} for q in e.query]
        extra: dict[str, Any] = {"parameters": params}
        if e.body is not None:
            extra["requestBody"] = {"required": e.body_required, "content": {"application/json": {"schema": e.body}}}
        doc.add_api_route(e.path, _undocumented_stub, methods=[e.method], name=e.name, summary=e.summary,
                          openapi_extra=extra, responses=ERROR_RESPONSES)  # fmt: skip
    return doc


async def _undocumented_stub() -> None:  # pragma: no cover - never served, only documented
    raise AssertionError("documentation stub")
