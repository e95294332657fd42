"""The wire format shared by ``tracerl serve`` and :class:`~tracerl.store.http.HttpStore`.

Bodies are JSON (serialised with orjson when it is installed, else the standard library). Token ids and
log-probs may travel packed, as base64 of little-endian arrays, so a 300-token span costs ~1.6 KB instead
of a long JSON list and parses in microseconds::

    prompt_ids_b64   = base64(int32 little-endian × n)      (4n bytes before base64)
    response_ids_b64 = base64(int32 little-endian × n)
    logprobs_b64     = base64(float64 little-endian × n)    (8n bytes; exact round trip)

The server accepts a span's ids either as plain JSON lists (``prompt_ids``) or packed (``*_b64``) and
answers packed only when asked (``?encoding=packed``), so the REST API stays readable by hand.

Decoders here are strict: every field is type-checked and a bad one raises :class:`InvalidInput` naming
it (``spans[2].seq must be an integer, got '3'``), which the server turns into a 400.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from array import array
from collections.abc import Sequence
from typing import Any, Literal, cast

from tracerl.errors import (
    ERRORS_BY_NAME,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServerError,
    StoreUnavailable,
    TracerlError,
    Unauthorized,
)
from tracerl.store.schema import ATTEMPTS, ROLLOUTS, Table
from tracerl.types import (
    JSON,
    Attempt,
    Mode,
    Rollout,
    RolloutQuery,
    RolloutSpec,
    RolloutStatus,
    RolloutTrace,
    Span,
    SpanKind,
)

try:  # orjson is ~5× faster on span-sized bodies; plain json keeps the core install light
    import orjson

    def dumps(obj: Any) -> bytes:
        """Serialise ``obj`` to compact UTF-8 JSON bytes."""
        return orjson.dumps(obj)

    def loads(data: bytes | str) -> Any:
        """Parse JSON; ``ValueError`` on malformed input (NaN/Infinity are refused)."""
        return orjson.loads(data)

except ImportError:  # pragma: no cover - exercised only without orjson

    def _no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()

    def loads(data: bytes | str) -> Any:
        return json.loads(data, parse_constant=_no_constants)


_BIG_ENDIAN = sys.byteorder == "big"


def pack_array(values: Sequence[int] | Sequence[float], typecode: str) -> str:
    """``values`` as base64 of little-endian ``int32`` (typecode ``"i"``) or ``float64`` (``"d"``)."""
    try:
        arr = array(typecode, values)
    except (OverflowError, TypeError) as e:
        kind = "int32 token ids" if typecode == "i" else "float64 numbers"
        raise InvalidInput(f"cannot pack {kind}: {e}") from None
    if _BIG_ENDIAN:  # pragma: no cover
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")


def unpack_array(text: object, typecode: Literal["i", "d"], where: str, key: str) -> list[int] | list[float]:
    """Inverse of :func:`pack_array`; ``InvalidInput`` naming ``where.key`` if ``text`` is not valid."""
    if type(text) is not str:
        raise InvalidInput(f"{where}.{key} must be a base64 string, got {type(text).__name__}")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise InvalidInput(f"{where}.{key} is not valid base64") from None
    arr: array[int] | array[float] = array("i") if typecode == "i" else array("d")
    if len(raw) % arr.itemsize:
        raise InvalidInput(f"{where}.{key} has {len(raw)} bytes, not a multiple of {arr.itemsize}")
    arr.frombytes(raw)
    if _BIG_ENDIAN:  # pragma: no cover
        arr.byteswap()
    return arr.tolist()


def span_to_wire(span: Span, *, packed: bool = True) -> JSON:
    """A span as a JSON-ready dict, with its id lists packed (``*_b64``) unless ``packed=False``."""
    d = span.to_json()
    if packed:
        for key, packed_key, code in _ARRAYS:
            values = d.pop(key)
            if values is not None:
                d[packed_key] = pack_array(values, code)
    return d


_ARRAYS: tuple[tuple[str, str, Literal["i", "d"]], ...] = (
    ("prompt_ids", "prompt_ids_b64", "i"), ("response_ids", "response_ids_b64", "i"), ("logprobs", "logprobs_b64", "d"),
)  # fmt: skip
_SPAN_FIELDS = frozenset(
    {
        "attempt_id", "seq", "position", "kind", "name", "rollout_id", "parent_seq", "start_time", "end_time",
        "attributes", "prompt_ids", "response_ids", "logprobs", "prompt_ids_b64", "response_ids_b64",
        "logprobs_b64",
    }
)  # fmt: skip


def span_from_wire(d: object, where: str = "span") -> Span:
    """Build a :class:`Span` from its wire dict, checking every field's type (``InvalidInput`` names it)."""
    d = as_object(d, where)
    if not d.keys() <= _SPAN_FIELDS:
        unknown = sorted(d.keys() - _SPAN_FIELDS)
        raise InvalidInput(f"{where} has unknown fields {unknown}; known: {sorted(_SPAN_FIELDS)}")
    arrays: dict[str, list[Any] | None] = {}
    for key, packed_key, code in _ARRAYS:
        packed = d.get(packed_key)
        arrays[key] = d.get(key) if packed is None else unpack_array(packed, code, where, packed_key)
    now = time.time()
    return Span(
        attempt_id=req_str(d, "attempt_id", where),
        seq=req_int(d, "seq", where),
        position=opt_int(d, "position", where),
        kind=enum_value(SpanKind, req(d, "kind", where), f"{where}.kind"),
        name=opt_str(d, "name", where) or "",
        rollout_id=opt_str(d, "rollout_id", where) or "",
        parent_seq=opt_int(d, "parent_seq", where),
        start_time=opt_num(d, "start_time", where) or now,
        end_time=opt_num(d, "end_time", where),
        attributes=opt_obj(d, "attributes", where) or {},
        prompt_ids=arrays["prompt_ids"],
        response_ids=arrays["response_ids"],
        logprobs=arrays["logprobs"],
    )


def spec_from_wire(d: object, where: str = "spec") -> RolloutSpec:
    """Build a :class:`RolloutSpec` from its wire dict with strict type checks."""
    d = as_object(d, where)
    task = as_object(req(d, "task", where), f"{where}.task")
    max_attempts = opt_int(d, "max_attempts", where)
    return RolloutSpec(
        task=task,
        mode=enum_value(Mode, "train" if d.get("mode") is None else d["mode"], f"{where}.mode"),
        group_id=opt_str(d, "group_id", where),
        idempotency_key=opt_str(d, "idempotency_key", where),
        max_attempts=3 if max_attempts is None else max_attempts,
        resources_version=opt_int(d, "resources_version", where),
        metadata=opt_obj(d, "metadata", where) or {},
    )


def query_from_wire(d: object) -> RolloutQuery:
    """Build a :class:`RolloutQuery` from its wire dict with strict type checks."""
    d = as_object(d, "query")
    statuses: object = d.get("status")
    if statuses is not None and not isinstance(statuses, list):
        raise InvalidInput(f"query.status must be a list of statuses, got {statuses!r}")
    ids: object = d.get("rollout_ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in cast(list[object], ids))):
        raise InvalidInput("query.rollout_ids must be a list of strings")
    limit, offset = opt_int(d, "limit", "query"), opt_int(d, "offset", "query")
    status_list = cast(list[object] | None, statuses)
    return RolloutQuery(
        status=[enum_value(RolloutStatus, s, "query.status") for s in status_list] if status_list else None,
        mode=enum_value(Mode, d["mode"], "query.mode") if d.get("mode") is not None else None,
        group_id=opt_str(d, "group_id", "query"),
        resources_version=opt_int(d, "resources_version", "query"),
        created_after=opt_num(d, "created_after", "query"),
        created_before=opt_num(d, "created_before", "query"),
        rollout_ids=cast(list[str] | None, ids),
        limit=100 if limit is None else limit,
        offset=0 if offset is None else offset,
    )


# Small strict field readers shared with the server. Each raises InvalidInput naming ``where.key``.


def as_object(d: object, where: str) -> JSON:
    """``d`` if it is a JSON object (a dict); ``InvalidInput`` naming ``where`` if not."""
    if not isinstance(d, dict):
        raise InvalidInput(f"{where} must be a JSON object, got {type(d).__name__}")
    return cast(JSON, d)


def req(d: JSON, key: str, where: str) -> Any:
    if key not in d or d[key] is None:
        raise InvalidInput(f"{where}.{key} is required")
    return d[key]


def req_str(d: JSON, key: str, where: str) -> str:
    v = req(d, key, where)
    if not isinstance(v, str) or not v:
        raise InvalidInput(f"{where}.{key} must be a non-empty string, got {v!r}")
    return v


def opt_str(d: JSON, key: str, where: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise InvalidInput(f"{where}.{key} must be a string, got {v!r}")
    return v


def req_int(d: JSON, key: str, where: str) -> int:
    v = opt_int(d, key, where)
    if v is None:
        raise InvalidInput(f"{where}.{key} is required")
    return v


def opt_int(d: JSON, key: str, where: str) -> int | None:
    """An optional integer that fits a signed 64-bit column (what every backend stores). A float with no
    fraction (``294.0``) counts, as in JSON Schema's ``integer``."""
    v = d.get(key)
    if type(v) is float and v.is_integer():
        v = int(v)
    if v is not None and (type(v) is not int or not -(2**63) <= v < 2**63):
        raise InvalidInput(f"{where}.{key} must be a 64-bit integer, got {v!r}")
    return v


def opt_num(d: JSON, key: str, where: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidInput(f"{where}.{key} must be a number, got {v!r}")
    return float(v)


def opt_obj(d: JSON, key: str, where: str) -> JSON | None:
    v = d.get(key)
    if v is not None and not isinstance(v, dict):
        raise InvalidInput(f"{where}.{key} must be a JSON object, got {type(v).__name__}")
    return cast(JSON | None, v)


def enum_value(cls: Any, value: object, where: str) -> Any:
    """``cls(value)`` for a str-valued enum, or ``InvalidInput`` listing the allowed values."""
    try:
        return cls(value)
    except ValueError:
        raise InvalidInput(f"{where} {value!r} is not one of {[m.value for m in cls]}") from None


def error_body(exc: TracerlError) -> bytes:
    """The JSON error document the server sends for ``exc`` (its ``client_message`` when it has one)."""
    return dumps({"error": {"type": type(exc).__name__, "message": exc.client_message or str(exc)}})


def error_from_response(status: int, body: bytes) -> TracerlError:
    """The :mod:`tracerl.errors` instance a server error response stands for."""
    try:
        err = loads(body)["error"]
        cls = ERRORS_BY_NAME.get(err["type"])
        message = str(err["message"])
    except (ValueError, KeyError, TypeError):
        cls, message = None, body[:500].decode("utf-8", "replace") or f"HTTP {status}"
    if cls is None:
        by_status: dict[int, type[TracerlError]] = {
            400: InvalidInput, 401: Unauthorized, 404: NotFound, 413: PayloadTooLarge, 503: StoreUnavailable,
        }  # fmt: skip
        cls = by_status.get(status, ServerError if status >= 500 else InvalidInput)
    return cls(message)


def _to_wire(table: Table, obj: object) -> JSON:
    """The field columns of ``table`` read off ``obj`` by name, enums as their values: the same dict as the
    dataclass's ``to_json``, built without ``dataclasses.asdict`` (which deep-copies the task: ~10× slower on
    the server's hot path)."""
    out: JSON = {}
    for name, is_enum in _WIRE_FIELDS[table.name]:
        v = getattr(obj, name)
        out[name] = v.value if is_enum else v
    return out


_WIRE_FIELDS = {t.name: tuple((c.name, c.enum is not None) for c in t.fields) for t in (ROLLOUTS, ATTEMPTS)}


def rollout_to_wire(r: Rollout) -> JSON:
    """A rollout as its wire dict (the same as :meth:`Rollout.to_json`)."""
    return _to_wire(ROLLOUTS, r)


def attempt_to_wire(a: Attempt) -> JSON:
    """An attempt as its wire dict (the same as :meth:`Attempt.to_json`)."""
    return _to_wire(ATTEMPTS, a)


def trace_to_wire(t: RolloutTrace, *, packed: bool = True) -> JSON:
    """A :class:`RolloutTrace` as a JSON-ready dict (spans' id lists packed unless ``packed=False``)."""
    return {
        "rollout": rollout_to_wire(t.rollout),
        "attempts": [attempt_to_wire(a) for a in t.attempts],
        "spans": [span_to_wire(s, packed=packed) for s in t.spans],
    }


def trace_from_wire(d: JSON) -> RolloutTrace:
    """The inverse of :func:`trace_to_wire` (for the HTTP client: the server's answer)."""
    return RolloutTrace(
        rollout=Rollout.from_json(d["rollout"]),
        attempts=[Attempt.from_json(a) for a in d["attempts"]],
        spans=[span_from_wire(s) for s in d["spans"]],
    )
