"""Spans, resources and the experiment binding over SQL: the data half of :class:`~tracerl.store.sql.SqlStore`.

Spans are keyed by ``(attempt_id, seq)`` and written with ``ON CONFLICT DO NOTHING`` after a check of which
keys exist, so a retried write never duplicates, changes or moves a span; new spans get the next positions of
their attempt (:mod:`tracerl.store.order`). Token ids are packed by ``codec``; an
``llm_call`` prompt that repeats the previous call's prompt+response is stored as a reference plus the new
suffix. The previous call's full context comes from this batch, from a small per-store cache, or is decoded
from the attempt's stored spans.
"""

from __future__ import annotations

import abc
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from tracerl.errors import ExperimentConflict, InvalidInput, NotFound
from tracerl.store import codec, order
from tracerl.store import status as sm
from tracerl.store.base import (
    validate_id,
    validate_resource_name,
    validate_resource_value,
    validate_span,
    validate_trace_ids,
)
from tracerl.store.sql_rows import (
    A_COLS,
    R_COLS,
    S_COLS,
    Row,
    Tx,
    decode_spans,
    dumps,
    row_attempt,
    row_packed,
    row_rollout,
)
from tracerl.types import Attempt, Resource, Rollout, RolloutTrace, Span, SpanKind

CONTEXT_CACHE_SIZE = 256  # llm_call contexts kept per store for prefix reuse (old ones are re-read from disk)


class SqlDataMixin(abc.ABC):
    """``add_spans``/``get_spans``, resources and ``bind_experiment`` on top of the backend's transactions."""

    url: str
    FOR_UPDATE: str
    _contexts: OrderedDict[tuple[str, int], list[int]]
    _contexts_lock: threading.Lock

    @abc.abstractmethod
    def _write(self) -> AbstractContextManager[Tx]: ...

    @abc.abstractmethod
    def _read(self) -> AbstractContextManager[Tx]: ...

    @abc.abstractmethod
    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, Any]: ...

    @abc.abstractmethod
    def _rollout_tx(self, tx: Tx, rollout_id: str, *, lock: bool = False) -> Rollout: ...

    # -- spans -------------------------------------------------------------------------------------
    def _lock_spans(self, tx: Tx, attempt_ids: Sequence[str]) -> None:  # noqa: B027 - a hook; sqlite needs nothing
        """Serialise position numbering of these attempts' spans (sqlite's write lock already does)."""

    def add_spans(self, spans: Sequence[Span]) -> int:
        spans = [validate_span(s) for s in spans]
        if not spans:
            return 0
        attrs = [dumps(s.attributes, "span attributes") for s in spans]
        attempt_ids = sorted({s.attempt_id for s in spans})
        new_contexts: dict[tuple[str, int], list[int]] = {}
        with self._write() as tx:
            self._lock_spans(tx, attempt_ids)
            cond, param = self._in("attempt_id", attempt_ids)
            rollout_of = {
                row[0]: row[1] for row in tx.all(f"SELECT attempt_id, rollout_id FROM attempts WHERE {cond}", (param,))
            }
            for aid in attempt_ids:
                if aid not in rollout_of:
                    raise NotFound(f"no attempt with id {aid!r}")
            seq_cond, seq_param = self._in("seq", sorted({s.seq for s in spans}))
            stored = set(tx.all(f"SELECT attempt_id, seq FROM spans WHERE {cond} AND {seq_cond}", (param, seq_param)))
            fresh: dict[tuple[str, int], tuple[Span, str]] = {}
            for s, a in zip(spans, attrs, strict=True):
                key = (s.attempt_id, s.seq)
                if key not in stored and key not in fresh:
                    fresh[key] = (s, a)
            if not fresh:
                return 0
            new = [s for s, _ in fresh.values()]
            last_sql = f"SELECT attempt_id, MAX(position) FROM spans WHERE {cond} GROUP BY attempt_id"
            last = dict(tx.all(last_sql, (param,)))
            positions = order.assign_positions(new, lambda aid: 0 if last.get(aid) is None else last[aid] + 1)
            rows: list[tuple[Any, ...]] = []
            for i, ((s, a), position) in enumerate(zip(fresh.values(), positions, strict=True)):
                previous = None
                if s.kind is SpanKind.LLM_CALL and s.prompt_ids is not None:
                    previous = self._previous_context(tx, new, i, new_contexts)
                packed = codec.encode_tokens(s.prompt_ids, s.response_ids, s.logprobs, previous)
                if s.kind is SpanKind.LLM_CALL:
                    new_contexts[(s.attempt_id, s.seq)] = codec.context_of(s.prompt_ids, s.response_ids)
                rows.append((s.attempt_id, s.seq, rollout_of[s.attempt_id], s.kind.value, s.name, s.parent_seq,
                             s.start_time, s.end_time, a, position, packed.prompt, packed.prompt_ref,
                             packed.prefix_len, packed.response, packed.logprobs))  # fmt: skip
            added = tx.many(f"INSERT INTO spans ({S_COLS}) VALUES ({', '.join('?' * 15)}) ON CONFLICT DO NOTHING", rows)
        with self._contexts_lock:
            for key, ctx in new_contexts.items():
                self._remember_context(key, ctx)
        return added

    def _remember_context(self, key: tuple[str, int], ctx: list[int]) -> None:
        self._contexts[key] = ctx
        self._contexts.move_to_end(key)
        while len(self._contexts) > CONTEXT_CACHE_SIZE:
            self._contexts.popitem(last=False)

    def _previous_context(
        self, tx: Tx, batch: list[Span], i: int, new: dict[tuple[str, int], list[int]]
    ) -> tuple[int, list[int]] | None:
        """``(seq, context)`` of the llm_call span just before ``batch[i]`` in store order, new or stored."""
        attempt_id = batch[i].attempt_id
        stored_last: int | None = None
        if not any(s.attempt_id == attempt_id and s.kind is SpanKind.LLM_CALL for s in batch[:i]):
            row = tx.one(
                "SELECT seq FROM spans WHERE attempt_id = ? AND kind = ? ORDER BY position DESC LIMIT 1",
                (attempt_id, SpanKind.LLM_CALL.value),
            )
            stored_last = None if row is None else row[0]
        prev = order.previous_llm_call(stored_last, batch, i)
        if prev is None:
            return None
        key = (attempt_id, prev)
        if key in new:
            return prev, new[key]
        with self._contexts_lock:
            ctx = self._contexts.get(key)
        if ctx is None:
            rows = tx.all(
                f"SELECT {S_COLS} FROM spans WHERE attempt_id = ? AND kind = ? ORDER BY position",
                (attempt_id, SpanKind.LLM_CALL.value),
            )
            tracker = codec.ContextTracker()
            for r in rows:
                tracker.decode(r[1], row_packed(r), True)
            ctx = tracker.contexts[prev]
            with self._contexts_lock:
                self._remember_context(key, ctx)
        return prev, ctx

    def get_spans(self, *, rollout_id: str | None = None, attempt_id: str | None = None) -> list[Span]:
        if (rollout_id is None) == (attempt_id is None):
            raise InvalidInput("get_spans needs exactly one of rollout_id or attempt_id")
        validate_id(rollout_id or attempt_id or "", "rollout_id" if rollout_id is not None else "attempt_id")
        with self._read() as tx:
            if attempt_id is not None:
                if tx.one("SELECT 1 FROM attempts WHERE attempt_id = ?", (attempt_id,)) is None:
                    raise NotFound(f"no attempt with id {attempt_id!r}")
                rows = tx.all(f"SELECT {S_COLS} FROM spans WHERE attempt_id = ? ORDER BY position", (attempt_id,))
            else:
                self._rollout_tx(tx, str(rollout_id))
                cols = ", ".join(f"s.{c.strip()}" for c in S_COLS.split(","))
                rows = tx.all(
                    f"SELECT {cols} FROM spans s JOIN attempts a ON a.attempt_id = s.attempt_id "
                    "WHERE a.rollout_id = ? ORDER BY a.number, s.position",
                    (rollout_id,),
                )
        return decode_spans(rows)

    def get_traces(self, rollout_ids: Sequence[str]) -> list[RolloutTrace]:
        ids = validate_trace_ids(rollout_ids)
        if not ids:
            return []
        cond, param = self._in("rollout_id", list(dict.fromkeys(ids)))
        with self._read() as tx:
            found_rows = tx.all(f"SELECT {R_COLS} FROM rollouts WHERE {cond}", (param,))
            rollouts = {row[0]: row_rollout(row) for row in found_rows}
            for rid in ids:
                if rid not in rollouts:
                    raise NotFound(f"no rollout with id {rid!r}")
            attempts: dict[str, list[Attempt]] = {rid: [] for rid in rollouts}
            for row in tx.all(f"SELECT {A_COLS} FROM attempts WHERE {cond} ORDER BY number", (param,)):
                attempts[row[1]].append(row_attempt(row))
            finals = [a.attempt_id for a in map(sm.final_attempt, attempts.values()) if a is not None]
            rows: list[Row] = []
            if finals:
                a_cond, a_param = self._in("attempt_id", finals)
                rows = tx.all(f"SELECT {S_COLS} FROM spans WHERE {a_cond} ORDER BY attempt_id, position", (a_param,))
        spans: dict[str, list[Span]] = {}
        for s in decode_spans(rows):
            spans.setdefault(s.attempt_id, []).append(s)
        out: list[RolloutTrace] = []
        for rid in ids:
            final = sm.final_attempt(attempts[rid])
            found = spans.get(final.attempt_id, []) if final is not None else []
            out.append(RolloutTrace(rollouts[rid], attempts[rid], found))  # a repeated id shares its objects
        return out

    # -- resources ---------------------------------------------------------------------------------
    def _lock_resource(self, tx: Tx, name: str) -> None:  # noqa: B027 - a hook; sqlite needs nothing
        """Serialise version numbering of ``name`` (sqlite's write lock already does)."""

    def put_resource(self, name: str, value: dict[str, Any]) -> Resource:
        validate_resource_name(name)
        validate_resource_value(value)
        text = dumps(value, "resource value")
        with self._write() as tx:
            self._lock_resource(tx, name)
            row = tx.one("SELECT MAX(version) FROM resources WHERE name = ?", (name,))
            version = (row[0] if row and row[0] is not None else 0) + 1
            res = Resource(name=name, version=version, value=json.loads(text))
            tx.run(
                "INSERT INTO resources (name, version, value, created_at) VALUES (?, ?, ?, ?)",
                (name, version, text, res.created_at),
            )
        return res

    def get_resource(self, name: str, version: int | None = None) -> Resource:
        validate_resource_name(name)
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise InvalidInput(f"resource version must be an integer or None, got {version!r}")
        with self._read() as tx:
            latest = tx.one("SELECT MAX(version) FROM resources WHERE name = ?", (name,))
            n = latest[0] if latest and latest[0] is not None else 0
            if n == 0:
                raise NotFound(f"no resource named {name!r}; write one with put_resource({name!r}, {{...}})")
            if version is not None and not 1 <= version <= n:
                raise NotFound(f"resource {name!r} has versions 1..{n}, not {version}")
            row = tx.one(
                "SELECT name, version, value, created_at FROM resources WHERE name = ? AND version = ?",
                (name, n if version is None else version),
            )
        assert row is not None
        return Resource(name=row[0], version=row[1], value=json.loads(row[2]), created_at=row[3])

    def bind_experiment(self, name: str) -> None:
        validate_id(name, "experiment name")
        with self._write() as tx:
            row = tx.one(f"SELECT value FROM meta WHERE key = ?{self.FOR_UPDATE}", ("experiment",))
            if row is not None and row[0] != name:
                advice = f"use another store URL for {name!r}, or the same experiment name to resume"
                raise ExperimentConflict(
                    f"store {self.url} is already used by experiment {row[0]!r}; {advice}"
                ).for_client(f"this store is already used by experiment {row[0]!r}; {advice}")
            if row is None:
                tx.run("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING", ("experiment", name))
                stored = tx.one("SELECT value FROM meta WHERE key = ?", ("experiment",))
                if stored is not None and stored[0] != name:
                    why = f"was just bound to experiment {stored[0]!r} by another process; use another store URL"
                    raise ExperimentConflict(f"store {self.url} {why} for {name!r}").for_client(
                        f"this store {why} for {name!r}"
                    )
