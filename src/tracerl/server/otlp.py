"""OTLP/HTTP trace ingest at ``POST /v1/traces``: OpenTelemetry spans of an attempt become store spans.

An agent instrumented with OpenTelemetry points its OTLP/HTTP exporter at the server
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://HOST:PORT/v1/traces``) and names its attempt with the
resource (or span) attribute ``tracerl.attempt_id`` (``tracerl.rollout_id`` is optional and only
informative: the store knows each attempt's rollout). Both OTLP encodings are accepted:
``application/x-protobuf`` (the exporters' default) and ``application/json`` (OTLP's JSON: lowerCamelCase
keys, hex trace/span ids, 64-bit integers as strings); ``Content-Encoding: gzip`` too.

Mapping of one OTel span to a :class:`~tracerl.types.Span`:

* ``seq`` (the span's identity) comes from the 8-byte OTel span id, so a re-sent batch lands on the same
  keys and is ignored, and a parent's seq is computable from its span id alone (``parent_seq``) even when
  it arrives in another batch::

      seq = 2**62 + (int.from_bytes(span_id, "big") mod 2**62)

  The high range never meets the seqs other writers draw (below 2^53, :mod:`tracerl.store.order`).
* order: each batch is written sorted by start time, so the store gives an attempt's OTLP spans positions
  in start-time order (a batch that arrives later is placed after the spans already stored).
* ``kind``: the attribute ``tracerl.span.kind`` when it names a :class:`SpanKind`; otherwise
  ``tool`` for ``gen_ai.operation.name = execute_tool``, ``llm_call`` for any other ``gen_ai.*``
  attribute, else ``custom``.
* ``attributes``: the span's attributes flattened to JSON (arrays → lists, key-value lists → objects,
  bytes → base64), plus ``otel.trace_id``/``otel.span_id``/``otel.parent_span_id`` (hex),
  ``otel.kind``, ``otel.status``, ``otel.events``, ``otel.scope`` and ``otel.resource``.
* token ids: integer-array attributes ``tracerl.prompt_ids``/``tracerl.response_ids`` and the number
  array ``tracerl.logprobs`` move into the span's id fields.

The answer is OTLP's ``ExportTraceServiceResponse`` in the request's encoding; spans without an attempt
id, of an unknown attempt, or malformed are counted in ``partial_success.rejected_spans`` with a reason
(the other spans of the batch are stored). A body that does not parse at all is refused whole with the
server's JSON error document (400; 415 for another content type, 413 over the size limit, also after
gzip decompression).
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tracerl.errors import InvalidInput, NotFound, PayloadTooLarge, TracerlError
from tracerl.server.calls import Calls
from tracerl.store import order
from tracerl.store.base import MAX_JSON_DEPTH, Store, validate_span
from tracerl.store.wire import dumps, error_body, loads
from tracerl.types import JSON, Span, SpanKind

SEQ_BASE = 2**62
PROTOBUF = "application/x-protobuf"
OTEL_SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_CODES = ("UNSET", "OK", "ERROR")
_OBJ: JSON = {"type": "object"}


def seq_of(span_id: bytes) -> int:
    """The store seq of an OTel span id (see the module docstring)."""
    return SEQ_BASE + int.from_bytes(span_id, "big") % SEQ_BASE


@dataclass(slots=True)
class OtelSpan:
    """One OTel span, normalised from either encoding."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: JSON
    resource: JSON
    scope: str
    status: JSON = field(default_factory=dict)
    events: list[JSON] = field(default_factory=list)


# -- protobuf --------------------------------------------------------------------------------------


def parse_protobuf(body: bytes) -> list[OtelSpan]:
    """Spans of a protobuf ``ExportTraceServiceRequest``; ``InvalidInput`` if it does not parse."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(body)
    except DecodeError as e:
        raise InvalidInput(f"body is not a protobuf ExportTraceServiceRequest: {e}") from None
    out: list[OtelSpan] = []
    for rs in req.resource_spans:
        resource = _pb_attrs(rs.resource.attributes, 2)
        for ss in rs.scope_spans:
            for sp in ss.spans:
                out.append(
                    OtelSpan(
                        trace_id=sp.trace_id, span_id=sp.span_id, parent_span_id=sp.parent_span_id, name=sp.name,
                        kind=sp.kind, start_ns=sp.start_time_unix_nano, end_ns=sp.end_time_unix_nano,
                        attributes=_pb_attrs(sp.attributes, 1), resource=resource, scope=ss.scope.name,
                        status={"code": _enum(STATUS_CODES, sp.status.code), "message": sp.status.message},
                        events=[_pb_event(ev) for ev in sp.events],
                    )
                )  # fmt: skip
    return out


def _pb_event(ev: Any) -> JSON:
    return {"name": ev.name, "time": ev.time_unix_nano / 1e9, "attributes": _pb_attrs(ev.attributes, 4)}


def _pb_attrs(kvs: Any, level: int) -> JSON:
    """Attributes as a dict that will sit ``level`` levels deep in the stored span attributes."""
    return {kv.key: _pb_value(kv.value, level + 1) for kv in kvs}


def _pb_value(v: Any, level: int) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which in ("array_value", "kvlist_value"):
        _check_level(level, f"attribute {which}")
    if which == "array_value":
        return [_pb_value(x, level + 1) for x in v.array_value.values]
    if which == "kvlist_value":
        return _pb_attrs(v.kvlist_value.values, level)
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    return getattr(v, which)


def protobuf_response(rejected: int, message: str) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    resp = ExportTraceServiceResponse()
    if rejected or message:
        resp.partial_success.rejected_spans = rejected
        resp.partial_success.error_message = message
    return resp.SerializeToString()


# -- JSON ------------------------------------------------------------------------------------------


def parse_json(body: bytes) -> list[OtelSpan]:
    """Spans of an OTLP/JSON ``ExportTraceServiceRequest``; ``InvalidInput`` naming the bad field."""
    try:
        doc = loads(body)
    except ValueError as e:
        raise InvalidInput(f"body is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise InvalidInput("OTLP/JSON body must be an object with 'resourceSpans'")
    out: list[OtelSpan] = []
    for i, rs in enumerate(_jlist(doc, "resourceSpans", "resource_spans", where="body")):
        where = f"resourceSpans[{i}]"
        resource = _json_attrs(_jobj(_jget(rs, "resource"), where + ".resource"), where + ".resource", 2)
        for j, ss in enumerate(_jlist(rs, "scopeSpans", "scope_spans", where=where)):
            scope = _jobj(_jget(ss, "scope"), f"{where}.scope")
            for k, sp in enumerate(_jlist(ss, "spans", where=f"{where}.scopeSpans[{j}]")):
                w = f"{where}.scopeSpans[{j}].spans[{k}]"
                sp = _jobj(sp, w)
                status = _jobj(_jget(sp, "status"), w + ".status")
                out.append(
                    OtelSpan(
                        trace_id=_hex(_jget(sp, "traceId", "trace_id"), w + ".traceId"),
                        span_id=_hex(_jget(sp, "spanId", "span_id"), w + ".spanId"),
                        parent_span_id=_hex(_jget(sp, "parentSpanId", "parent_span_id"), w + ".parentSpanId"),
                        name=str(_jget(sp, "name") or ""),
                        kind=_int(_jget(sp, "kind"), w + ".kind"),
                        start_ns=_int(_jget(sp, "startTimeUnixNano", "start_time_unix_nano"), w + ".startTimeUnixNano"),
                        end_ns=_int(_jget(sp, "endTimeUnixNano", "end_time_unix_nano"), w + ".endTimeUnixNano"),
                        attributes=_json_attrs(sp, w, 1),
                        resource=resource,
                        scope=str(_jget(scope, "name") or ""),
                        status={"code": _enum(STATUS_CODES, _int(_jget(status, "code"), w + ".status.code")),
                                "message": str(_jget(status, "message") or "")},
                        events=[_json_event(_jobj(ev, f"{w}.events[{n}]"), f"{w}.events[{n}]")
                                for n, ev in enumerate(_jlist(sp, "events", where=w))],
                    )
                )  # fmt: skip
    return out


def _jget(d: JSON, *keys: str) -> Any:
    for key in keys:
        if key in d:
            return d[key]
    return None


def _jobj(v: Any, where: str) -> JSON:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise InvalidInput(f"{where} must be an object, got {type(v).__name__}")
    return v


def _jlist(d: Any, *keys: str, where: str) -> list[Any]:
    if not isinstance(d, dict):
        raise InvalidInput(f"{where} must be an object, got {type(d).__name__}")
    v = _jget(d, *keys)
    if v is None:
        return []
    if not isinstance(v, list):
        raise InvalidInput(f"{where}.{keys[0]} must be a list, got {type(v).__name__}")
    return v


def _hex(v: Any, where: str) -> bytes:
    if v in (None, ""):
        return b""
    try:
        return bytes.fromhex(v)
    except (TypeError, ValueError):
        raise InvalidInput(f"{where} must be a hex string (OTLP/JSON encodes ids as hex), got {v!r}") from None


def _int(v: Any, where: str) -> int:
    if v is None:
        return 0
    if isinstance(v, bool):
        raise InvalidInput(f"{where} must be an integer, got {v!r}")
    try:
        return int(v)  # OTLP/JSON sends 64-bit integers as decimal strings
    except (TypeError, ValueError):
        raise InvalidInput(f"{where} must be an integer, got {v!r}") from None


def _check_level(level: int, where: str) -> None:
    """Refuse an attribute value that would sit deeper than the store keeps JSON (the whole request 400s)."""
    if level > MAX_JSON_DEPTH:
        raise InvalidInput(
            f"{where} nests arrayValue/kvlistValue more than {MAX_JSON_DEPTH} levels deep (the limit for stored "
            "span attributes); flatten the attribute or send it as a JSON string"
        )


def _json_attrs(d: JSON, where: str, level: int) -> JSON:
    """Attributes as a dict that will sit ``level`` levels deep in the stored span attributes."""
    out: JSON = {}
    for i, kv in enumerate(_jlist(d, "attributes", "values", where=where)):
        kv = _jobj(kv, f"{where}.attributes[{i}]")
        key = kv.get("key")
        if not isinstance(key, str):
            raise InvalidInput(f"{where}.attributes[{i}].key must be a string")
        out[key] = _json_value(kv.get("value"), f"{where}.attributes[{i}].value", level + 1)
    return out


def _json_value(v: Any, where: str, level: int) -> Any:
    if v is None or v == {}:
        return None
    v = _jobj(v, where)
    if "stringValue" in v or "string_value" in v:
        return str(_jget(v, "stringValue", "string_value"))
    if "boolValue" in v or "bool_value" in v:
        return bool(_jget(v, "boolValue", "bool_value"))
    if "intValue" in v or "int_value" in v:
        return _int(_jget(v, "intValue", "int_value"), where)
    if "doubleValue" in v or "double_value" in v:
        try:
            return float(_jget(v, "doubleValue", "double_value"))
        except (TypeError, ValueError):
            raise InvalidInput(f"{where}.doubleValue must be a number") from None
    if "arrayValue" in v or "array_value" in v:
        _check_level(level, where)
        arr = _jobj(_jget(v, "arrayValue", "array_value"), where + ".arrayValue")
        values = _jlist(arr, "values", where=where)
        return [_json_value(x, f"{where}.arrayValue.values[{i}]", level + 1) for i, x in enumerate(values)]
    if "kvlistValue" in v or "kvlist_value" in v:
        _check_level(level, where)
        kvlist = _jobj(_jget(v, "kvlistValue", "kvlist_value"), where)
        return _json_attrs(kvlist, where + ".kvlistValue", level)
    if "bytesValue" in v or "bytes_value" in v:
        return str(_jget(v, "bytesValue", "bytes_value"))  # already base64 in OTLP/JSON
    raise InvalidInput(f"{where} has no known value type (stringValue, intValue, ...): {sorted(v)}")


def _json_event(ev: JSON, where: str) -> JSON:
    t = _int(_jget(ev, "timeUnixNano", "time_unix_nano"), where + ".timeUnixNano")
    return {"name": str(ev.get("name") or ""), "time": t / 1e9, "attributes": _json_attrs(ev, where, 4)}


def _enum(names: tuple[str, ...], value: int) -> str:
    return names[value] if 0 <= value < len(names) else str(value)


# -- mapping ---------------------------------------------------------------------------------------


def to_store_span(o: OtelSpan) -> Span:
    """The store span for one OTel span (``InvalidInput`` if it names no attempt or is malformed)."""
    attrs = dict(o.attributes)
    attempt_id = attrs.pop("tracerl.attempt_id", None) or o.resource.get("tracerl.attempt_id")
    if not isinstance(attempt_id, str) or not attempt_id:
        raise InvalidInput(f"span {o.name!r} has no tracerl.attempt_id attribute (on the span or its resource)")
    if len(o.span_id) != 8:
        raise InvalidInput(f"span {o.name!r} has a {len(o.span_id)}-byte span id; OTel span ids are 8 bytes")
    rollout_id = attrs.pop("tracerl.rollout_id", None) or o.resource.get("tracerl.rollout_id") or ""
    kind = _kind(attrs.pop("tracerl.span.kind", None), attrs)
    ids = {key: attrs.pop(f"tracerl.{key}", None) for key in ("prompt_ids", "response_ids", "logprobs")}
    attrs.update(
        {
            "otel.trace_id": o.trace_id.hex(), "otel.span_id": o.span_id.hex(),
            "otel.parent_span_id": o.parent_span_id.hex() or None, "otel.kind": _enum(OTEL_SPAN_KINDS, o.kind),
            "otel.status": o.status, "otel.events": o.events, "otel.scope": o.scope, "otel.resource": o.resource,
        }
    )  # fmt: skip
    span = Span(
        attempt_id=attempt_id,
        seq=seq_of(o.span_id),
        kind=kind,
        name=o.name,
        rollout_id=str(rollout_id),
        parent_seq=seq_of(o.parent_span_id) if len(o.parent_span_id) == 8 else None,
        start_time=o.start_ns / 1e9,
        end_time=o.end_ns / 1e9 if o.end_ns else None,
        attributes=attrs,
        prompt_ids=ids["prompt_ids"],
        response_ids=ids["response_ids"],
        logprobs=ids["logprobs"],
    )
    return validate_span(span)


def _kind(explicit: Any, attrs: JSON) -> SpanKind:
    if explicit is not None:
        try:
            return SpanKind(explicit)
        except ValueError:
            raise InvalidInput(
                f"tracerl.span.kind {explicit!r} is not one of {[k.value for k in SpanKind]}"
            ) from None
    if attrs.get("gen_ai.operation.name") == "execute_tool":
        return SpanKind.TOOL
    if any(k.startswith("gen_ai.") for k in attrs):
        return SpanKind.LLM_CALL
    return SpanKind.CUSTOM


def _by_attempt(spans: list[OtelSpan]) -> tuple[dict[str, list[Span]], int, list[str]]:
    """Store spans grouped by attempt, how many were rejected, and why (first few reasons)."""
    groups: dict[str, list[Span]] = {}
    rejected, reasons = 0, []
    for o in spans:
        try:
            s = to_store_span(o)
        except InvalidInput as e:
            rejected += 1
            reasons.append(str(e))
            continue
        groups.setdefault(s.attempt_id, []).append(s)
    return groups, rejected, reasons


# -- route -----------------------------------------------------------------------------------------


def routes(store: Store, *, max_body_bytes: int = 8 * 1024 * 1024) -> list[Route]:
    """``POST /v1/traces`` bound to ``store``."""
    call = Calls(store)

    async def traces(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype not in (PROTOBUF, "application/json"):
            return _unsupported(ctype)
        body = _decompress(await request.body(), request.headers.get("content-encoding", ""), max_body_bytes)
        spans = parse_protobuf(body) if ctype == PROTOBUF else parse_json(body)
        groups, rejected, reasons = _by_attempt(spans)
        for attempt_id, group in groups.items():
            try:
                await call(store.add_spans, order.by_start_time(group))
            except NotFound:
                rejected += len(group)
                reasons.append(f"unknown attempt {attempt_id!r} ({len(group)} spans)")
        message = "; ".join(reasons[:5]) + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "")
        if ctype == PROTOBUF:
            return Response(protobuf_response(rejected, message), media_type=PROTOBUF)
        partial = {"rejectedSpans": str(rejected), "errorMessage": message} if rejected or message else None
        return Response(dumps({"partialSuccess": partial} if partial else {}), media_type="application/json")

    return [Route("/v1/traces", traces, methods=["POST"], name="otlp_traces")]


def _unsupported(ctype: str) -> Response:
    err: TracerlError = InvalidInput(
        f"content type {ctype or '(none)'!r} is not supported; send OTLP as {PROTOBUF} or application/json"
    )
    return Response(error_body(err), status_code=415, media_type="application/json")


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidInput(f"content encoding {encoding!r} is not supported; use gzip or none")
    d = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidInput(f"body is not valid {encoding} data: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body is over the server's limit of {limit} bytes; send smaller batches")
    return out


def openapi_routes() -> APIRouter:
    """Documentation-only route for ``/v1/traces``."""
    doc = APIRouter(tags=["otlp"])
    content = {PROTOBUF: {"schema": {"type": "string", "format": "binary"}}, "application/json": {"schema": _OBJ}}

    async def stub() -> None:  # pragma: no cover - documentation only
        raise AssertionError

    doc.add_api_route("/v1/traces", stub, methods=["POST"], summary="OTLP/HTTP trace export (protobuf or JSON)",
                      openapi_extra={"requestBody": {"required": True, "content": content}})  # fmt: skip
    return doc

