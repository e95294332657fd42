"""Rows ↔ objects for the SQL backends, by column name, derived from the table definitions in ``schema.py``.

A SELECT of the named queries (``queries.py``) lists a table's columns in the order of its definition, so a
row is read as ``{column name: value}`` (:func:`record`) and becomes an object by field name; nothing here
knows a column's position. JSON columns (task, metadata, attributes, resource values) are stored as compact
text, enum columns as their value; token columns are packed by ``codec``.

Shared by ``sql.py`` (the contract over SQL), ``sql_data.py``, ``sqlite.py`` and ``postgres.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from tracerl.errors import InvalidInput
from tracerl.store import codec
from tracerl.store.schema import ATTEMPTS, RESOURCES, ROLLOUTS, SPANS, TABLES, Column, Table
from tracerl.types import Attempt, Rollout, Span, SpanKind

Row = tuple[Any, ...]


class Tx(Protocol):
    """One open transaction: run statements of ``queries.py`` (written for the backend's dialect)."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    def run(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run a statement whose result is not needed (postgres pipelines it: no round trip of its own)."""

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int: ...


def dumps(value: Any, what: str) -> str:
    """``value`` as compact JSON text; ``InvalidInput`` naming ``what`` if it is not JSON."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} must be JSON-serialisable: {e}") from None


def _decoder(c: Column) -> Callable[[Any], Any] | None:
    """What turns ``c``'s stored value back into the field's (``None``: the value as stored)."""
    if c.json:
        return json.loads
    return c.enum


def selected(t: Table) -> tuple[Column, ...]:
    """The columns a query reading whole records of ``t`` selects, in this order (see ``queries.py``)."""
    return t.fields if t is not SPANS else t.columns


# Per table, worked out once: the selected column names, and those whose stored value needs decoding.
_READ: dict[str, tuple[tuple[str, ...], tuple[tuple[str, Callable[[Any], Any]], ...]]] = {
    t.name: (
        tuple(c.name for c in selected(t)),
        tuple((c.name, d) for c in selected(t) if (d := _decoder(c)) is not None),
    )
    for t in (ROLLOUTS, ATTEMPTS, SPANS, RESOURCES)
}
_WRITTEN: dict[str, tuple[str, ...]] = {t.name: tuple(c.name for c in t.written) for t in TABLES}
_STORED: dict[str, tuple[tuple[str, bool, bool], ...]] = {
    t.name: tuple((c.name, c.json, c.enum is not None) for c in t.fields) for t in TABLES
}
_N_ROLLOUT = len(ROLLOUTS.fields)
_SPAN_FIELDS = tuple(c.name for c in SPANS.fields)


def record(t: Table, row: Sequence[Any]) -> dict[str, Any]:
    """A row of :func:`selected` columns of ``t`` as ``{name: value}``, JSON and enum columns decoded."""
    names, decoded = _READ[t.name]
    rec = dict(zip(names, row, strict=True))
    for name, decode in decoded:
        rec[name] = decode(rec[name])
    return rec


def row_rollout(row: Sequence[Any]) -> Rollout:
    return Rollout(**record(ROLLOUTS, row))


def row_attempt(row: Sequence[Any]) -> Attempt:
    return Attempt(**record(ATTEMPTS, row))


def split_rollout_attempt(row: Sequence[Any]) -> tuple[Rollout, Attempt]:
    """A row of a query selecting a rollout's columns, then its attempt's (``queries.RA``)."""
    return row_rollout(row[:_N_ROLLOUT]), row_attempt(row[_N_ROLLOUT:])


def values(t: Table, columns: Mapping[str, Any]) -> Row:
    """The parameters of ``t``'s INSERT (its :attr:`Table.written` columns) from ``{name: stored value}``."""
    return tuple(map(columns.__getitem__, _WRITTEN[t.name]))


def stored(t: Table, obj: object, **given: Any) -> dict[str, Any]:
    """``{column: stored value}`` for the field columns of ``t`` read off ``obj`` by name: JSON columns
    dumped, enums as their value; ``given`` supplies columns already encoded."""
    out: dict[str, Any] = {}
    for name, is_json, is_enum in _STORED[t.name]:
        if name in given:
            out[name] = given[name]
            continue
        v = getattr(obj, name)
        out[name] = dumps(v, f"{t.name} {name}") if is_json else v.value if is_enum else v
    return out


def packed_of(rec: Mapping[str, Any]) -> codec.PackedTokens:
    """The token columns of a span record."""
    prompt, response, logprobs = rec["prompt"], rec["response"], rec["logprobs"]
    return codec.PackedTokens(
        prompt=None if prompt is None else bytes(prompt),
        prompt_ref=rec["prompt_ref"],
        prefix_len=rec["prefix_len"] or 0,
        response=None if response is None else bytes(response),
        logprobs=None if logprobs is None else bytes(logprobs),
    )


def decode_spans(rows: Sequence[Sequence[Any]]) -> list[Span]:
    """Span rows (all columns of ``spans``, each attempt's rows in position order) → spans with full token lists."""
    trackers: dict[str, codec.ContextTracker] = {}
    out: list[Span] = []
    for row in rows:
        rec = record(SPANS, row)
        tracker = trackers.setdefault(rec["attempt_id"], codec.ContextTracker())
        prompt, response, logprobs = tracker.decode(rec["seq"], packed_of(rec), rec["kind"] is SpanKind.LLM_CALL)
        fields = {name: rec[name] for name in _SPAN_FIELDS}
        out.append(Span(**fields, prompt_ids=prompt, response_ids=response, logprobs=logprobs))
    return out
