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
from tracerl.store.schema import ATTEMPTS, RESOURCES, ROLLOUTS, SPANS, Column, Table
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


def _identity(value: Any) -> Any:
    return value


def _decoder(c: Column) -> Callable[[Any], Any]:
    if c.json:
        return json.loads
    if c.enum is not None:
        return c.enum
    return _identity


def selected(t: Table) -> tuple[Column, ...]:
    """The columns a query reading whole records of ``t`` selects, in this order (see ``queries.py``)."""
    return t.fields if t is not SPANS else t.columns


_DECODERS: dict[str, tuple[tuple[str, Callable[[Any], Any]], ...]] = {
    t.name: tuple((c.name, _decoder(c)) for c in selected(t)) for t in (ROLLOUTS, ATTEMPTS, SPANS, RESOURCES)
}


def record(t: Table, row: Sequence[Any]) -> dict[str, Any]:
    """A row of :func:`selected` columns of ``t`` as ``{name: value}``, JSON and enum columns decoded."""
    return {name: decode(value) for (name, decode), value in zip(_DECODERS[t.name], row, strict=True)}


def row_rollout(row: Sequence[Any]) -> Rollout:
    return Rollout(**record(ROLLOUTS, row))


def row_attempt(row: Sequence[Any]) -> Attempt:
    return Attempt(**record(ATTEMPTS, row))


def split_rollout_attempt(row: Sequence[Any]) -> tuple[Rollout, Attempt]:
    """A row of a query selecting a rollout's columns, then its attempt's (``queries.RA``)."""
    n = len(ROLLOUTS.fields)
    return row_rollout(row[:n]), row_attempt(row[n:])


def values(t: Table, columns: Mapping[str, Any]) -> Row:
    """The parameters of ``t``'s INSERT (its :attr:`Table.written` columns) from ``{name: stored value}``."""
    return tuple(columns[c.name] for c in t.written)


def stored(t: Table, obj: object, **given: Any) -> dict[str, Any]:
    """``{column: stored value}`` for the field columns of ``t`` read off ``obj`` by name: JSON columns
    dumped, enums as their value; ``given`` supplies columns already encoded."""
    out: dict[str, Any] = {}
    for c in t.fields:
        if c.name in given:
            out[c.name] = given[c.name]
            continue
        v = getattr(obj, c.name)
        out[c.name] = dumps(v, f"{t.name} {c.name}") if c.json else v.value if c.enum is not None else v
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
        fields = {c.name: rec[c.name] for c in SPANS.fields}
        out.append(Span(**fields, prompt_ids=prompt, response_ids=response, logprobs=logprobs))
    return out
