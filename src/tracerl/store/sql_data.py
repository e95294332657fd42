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
    validate_version,
)
from tracerl.store.queries import Queries
from tracerl.store.schema import RESOURCES, SPANS
from tracerl.store.sql_rows import (
    Row,
    Tx,
    decode_spans,
    dumps,
    packed_of,
    record,
    row_attempt,
    row_rollout,
    stored,
    values,
)
from tracerl.types import Attempt, Resource, Rollout, RolloutTrace, Span, SpanKind

CONTEXT_CACHE_SIZE = 256  # llm_call contexts kept per store for prefix reuse (old ones are re-read from disk)


class SqlDataMixin(abc.ABC):
    """``add_spans``/``get_spans``, resources and ``bind_experiment`` on top of the backend's transactions."""

    url: str
    q: Queries  # the named statements of the backend's dialect
    _contexts: OrderedDict[tuple[str, int], list[int]]
    _contexts_lock: threading.Lock

    @abc.abstractmethod
    def _write(self) -> AbstractContextManager[Tx]: ...

    @abc.abstractmethod
    def _read(self) -> AbstractContextManager[Tx]: ...

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
            q, param = self.q, self.q.dialect.list_param(attempt_ids)
            rollout_of: dict[str, str] = dict(tx.all(q.rollouts_of_attempts, (param,)))
            for aid in attempt_ids:
                if aid not in rollout_of:
                    raise NotFound(f"no attempt with id {aid!r}")
            seq_param = q.dialect.list_param(sorted({s.seq for s in spans}))
            existing = set(tx.all(q.stored_span_keys, (param, seq_param)))
            fresh: dict[tuple[str, int], tuple[Span, str]] = {}
            for s, a in zip(spans, attrs, strict=True):
                key = (s.attempt_id, s.seq)
                if key not in existing and key not in fresh:
                    fresh[key] = (s, a)
            if not fresh:
                return 0
            new = [s for s, _ in fresh.values()]
            last: dict[str, int | None] = dict(tx.all(q.last_positions, (param,)))
            positions = order.assign_positions(new, lambda aid: _after(last.get(aid)))
            rows: list[tuple[Any, ...]] = []
            for i, ((s, a), position) in enumerate(zip(fresh.values(), positions, strict=True)):
                previous = None
                if s.kind is SpanKind.LLM_CALL and s.prompt_ids is not None:
                    previous = self._previous_context(tx, new, i, new_contexts)
                packed = codec.encode_tokens(s.prompt_ids, s.response_ids, s.logprobs, previous)
                if s.kind is SpanKind.LLM_CALL:
                    new_contexts[(s.attempt_id, s.seq)] = codec.context_of(s.prompt_ids, s.response_ids)
                columns = {
                    "attempt_id": s.attempt_id, "seq": s.seq, "rollout_id": rollout_of[s.attempt_id],
                    "kind": s.kind.value, "name": s.name, "parent_seq": s.parent_seq, "start_time": s.start_time,
                    "end_time": s.end_time, "attributes": a, "position": position, "prompt": packed.prompt,
                    "prompt_ref": packed.prompt_ref, "prefix_len": packed.prefix_len, "response": packed.response,
                    "logprobs": packed.logprobs,
                }  # fmt: skip
                rows.append(values(SPANS, columns))
            added = tx.many(q.insert_spans, rows)
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
            row = tx.one(self.q.last_llm_call, (attempt_id,))
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
            tracker = codec.ContextTracker()
            for row in tx.all(self.q.llm_calls_of, (attempt_id,)):
                rec = record(SPANS, row)
                tracker.decode(rec["seq"], packed_of(rec), True)
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
                if tx.one(self.q.attempt_exists, (attempt_id,)) is None:
                    raise NotFound(f"no attempt with id {attempt_id!r}")
                rows = tx.all(self.q.spans_of_attempt, (attempt_id,))
            else:
                self._rollout_tx(tx, str(rollout_id))
                rows = tx.all(self.q.spans_of_rollout, (rollout_id,))
        return decode_spans(rows)

    def get_traces(self, rollout_ids: Sequence[str]) -> list[RolloutTrace]:
        ids = validate_trace_ids(rollout_ids)
        if not ids:
            return []
        q, param = self.q, self.q.dialect.list_param(list(dict.fromkeys(ids)))
        with self._read() as tx:
            rollouts = {r.rollout_id: r for r in map(row_rollout, tx.all(q.rollouts_in, (param,)))}
            for rid in ids:
                if rid not in rollouts:
                    raise NotFound(f"no rollout with id {rid!r}")
            attempts: dict[str, list[Attempt]] = {rid: [] for rid in rollouts}
            for a in map(row_attempt, tx.all(q.attempts_of_in, (param,))):
                attempts[a.rollout_id].append(a)
            finals = [a.attempt_id for a in map(sm.final_attempt, attempts.values()) if a is not None]
            rows: list[Row] = []
            if finals:
                rows = tx.all(q.spans_of_attempts, (q.dialect.list_param(finals),))
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
            row = tx.one(self.q.latest_version, (name,))
            version = (row[0] if row and row[0] is not None else 0) + 1
            res = Resource(name=name, version=version, value=json.loads(text))
            tx.run(self.q.insert_resource, values(RESOURCES, stored(RESOURCES, res, value=text)))
        return res

    def get_resource(self, name: str, version: int | None = None) -> Resource:
        validate_resource_name(name)
        validate_version(version)
        with self._read() as tx:
            latest = tx.one(self.q.latest_version, (name,))
            n = latest[0] if latest and latest[0] is not None else 0
            if n == 0:
                raise NotFound(f"no resource named {name!r}; write one with put_resource({name!r}, {{...}})")
            if version is not None and not 1 <= version <= n:
                raise NotFound(f"resource {name!r} has versions 1..{n}, not {version}")
            row = tx.one(self.q.resource, (name, n if version is None else version))
        assert row is not None
        return Resource(**record(RESOURCES, row))

    def bind_experiment(self, name: str) -> None:
        validate_id(name, "experiment name")
        with self._write() as tx:
            row = tx.one(self.q.meta_value_locked, ("experiment",))
            if row is not None and row[0] != name:
                advice = f"use another store URL for {name!r}, or the same experiment name to resume"
                raise ExperimentConflict(
                    f"store {self.url} is already used by experiment {row[0]!r}; {advice}"
                ).for_client(f"this store is already used by experiment {row[0]!r}; {advice}")
            if row is None:
                tx.run(self.q.insert_meta, ("experiment", name))
                bound = tx.one(self.q.meta_value, ("experiment",))
                if bound is not None and bound[0] != name:
                    why = f"was just bound to experiment {bound[0]!r} by another process; use another store URL"
                    raise ExperimentConflict(f"store {self.url} {why} for {name!r}").for_client(
                        f"this store {why} for {name!r}"
                    )


def _after(last: int | None) -> int:
    """The first free position after ``last`` (the highest stored one; ``None``: the attempt has none)."""
    return 0 if last is None else last + 1
