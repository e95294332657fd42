"""``tracerl.store.order``: positions in arrival order, the previous call for prefix reuse, seq collisions,
and the migration that gives spans of an existing sqlite/postgres store their positions (in seq order, the
order those stores used)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import LiteralString, cast

import pytest
from schema_v1 import POSTGRES_V1, SQLITE_V1

from tracerl.store import connect, order
from tracerl.store.memory import MemoryStore
from tracerl.types import RolloutSpec, Span, SpanKind

pytestmark = pytest.mark.timeout(60)


def test_positions_continue_each_attempt_in_list_order() -> None:
    spans = [Span("a", 9, SpanKind.MESSAGE), Span("b", 1, SpanKind.MESSAGE), Span("a", 2, SpanKind.MESSAGE)]
    asked: list[str] = []

    def next_free(aid: str) -> int:
        asked.append(aid)
        return {"a": 4, "b": 0}[aid]

    assert order.assign_positions(spans, next_free) == [4, 0, 5]
    assert asked == ["a", "b"]  # once per attempt


def test_the_previous_llm_call_is_the_last_one_before_in_the_batch_else_the_stored_one() -> None:
    batch = [Span("a", 5, SpanKind.LLM_CALL), Span("b", 6, SpanKind.LLM_CALL), Span("a", 7, SpanKind.REWARD),
             Span("a", 1, SpanKind.LLM_CALL)]  # fmt: skip
    assert order.previous_llm_call(42, batch, 0) == 42  # nothing before it in the batch: the stored one
    assert order.previous_llm_call(None, batch, 1) is None  # attempt b has no earlier call
    assert order.previous_llm_call(42, batch, 3) == 5  # seq 5 came earlier in the batch, whatever its number


def test_start_time_order_for_spans_reported_after_the_fact() -> None:
    spans = [Span("a", 3, SpanKind.LLM_CALL, start_time=2.0), Span("a", 1, SpanKind.REWARD, start_time=1.0),
             Span("a", 2, SpanKind.REWARD, start_time=2.0)]  # fmt: skip
    assert [s.seq for s in order.by_start_time(spans)] == [1, 2, 3]


def test_write_spans_gives_a_span_whose_seq_is_taken_a_fresh_one_and_ignores_retries() -> None:
    store = MemoryStore()
    store.enqueue([RolloutSpec(task={})])
    claim = store.claim("w")
    assert claim is not None
    aid = claim.attempt.attempt_id
    store.add_spans([Span(aid, 7, SpanKind.LLM_CALL, name="theirs")])

    def same(a: Span, b: Span) -> bool:
        return a.name == b.name

    def read(attempt_id: str) -> list[Span]:
        return store.get_spans(attempt_id=attempt_id)

    mine = [Span(aid, 7, SpanKind.REWARD, name="mine"), Span(aid, 8, SpanKind.MESSAGE, name="note")]
    assert order.write_spans(store.add_spans, read, mine, same) == 2
    assert mine[0].seq != 7  # moved
    assert order.write_spans(store.add_spans, read, mine, same) == 0  # a retry: nothing new, nothing moved
    assert [(s.name, s.position) for s in read(aid)] == [("theirs", 0), ("note", 1), ("mine", 2)]


# -- migration of stores written before positions existed -------------------------------------------------

V1_ROWS = [
    "INSERT INTO rollouts (rollout_id, task, mode, group_id, status, max_attempts, attempts, metadata, created_at, "
    "updated_at) VALUES ('ro-old', '{}', 'train', 'ro-old', 'running', 1, 1, '{}', 1, 1)",
    "INSERT INTO attempts (attempt_id, rollout_id, number, worker_id, status, lease_expires_at, heartbeat_at, "
    "started_at) VALUES ('at-old', 'ro-old', 1, 'w', 'running', 9e12, 1, 1)",
    *(
        f"INSERT INTO spans (attempt_id, seq, rollout_id, kind, name, start_time, attributes) "
        f"VALUES ('at-old', {seq}, 'ro-old', 'message', 's{seq}', 1, '{{}}')"
        for seq in (30, 10, 20)
    ),
    "INSERT INTO schema_version (version) VALUES (1)",
]


def check_migrated(url: str) -> None:
    with connect(url) as store:
        spans = store.get_spans(attempt_id="at-old")
        assert [(s.seq, s.position) for s in spans] == [(10, 0), (20, 1), (30, 2)]  # the old (seq) order
        assert store.add_spans([Span("at-old", 5, SpanKind.MESSAGE, name="new")]) == 1
        assert [(s.seq, s.position) for s in store.get_spans(attempt_id="at-old")][-1] == (5, 3)


def test_a_version_1_sqlite_store_gets_positions_in_seq_order(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as raw:
        for statement in [*SQLITE_V1, "CREATE TABLE schema_version (version INTEGER NOT NULL)", *V1_ROWS]:
            raw.execute(statement)
    check_migrated(f"sqlite:///{path}")


def test_a_version_1_postgres_store_gets_positions_in_seq_order(pg_schema: Callable[[], str]) -> None:
    psycopg = pytest.importorskip("psycopg")
    from tracerl.store.postgres import parse_url

    url = pg_schema()
    conninfo, schema = parse_url(url)
    with psycopg.connect(conninfo, autocommit=True) as raw, raw.transaction():
        raw.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(psycopg.sql.Identifier(schema)))
        raw.execute(psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(schema)))
        for statement in [*POSTGRES_V1, "CREATE TABLE schema_version (version INTEGER NOT NULL)", *V1_ROWS]:
            raw.execute(cast(LiteralString, statement))  # the shipped DDL, constants
    check_migrated(url)
