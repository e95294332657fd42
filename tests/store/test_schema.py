"""``tracerl.store.schema``: the one definition of the tables, and what is derived from it.

The field columns are the dataclasses' fields; a database brought forward from the version 1 schema as it
was shipped ends up with the same tables as a new one (sqlite and postgres); each dialect's named queries use
only its own placeholder and row locks; the wire form is the dataclasses' ``to_json``."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, LiteralString, cast

import pytest
from schema_v1 import POSTGRES_V1, SQLITE_V1

from tracerl.store import connect, queries, schema
from tracerl.store.wire import attempt_to_wire, rollout_to_wire
from tracerl.types import Attempt, Resource, Rollout, RolloutSpec, Span

pytestmark = pytest.mark.timeout(60)


def names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_the_field_columns_are_the_dataclass_fields() -> None:
    """In field order, but for spans (whose columns keep the order they shipped in)."""
    assert [c.name for c in schema.ROLLOUTS.fields] == names(Rollout)
    assert [c.name for c in schema.ATTEMPTS.fields] == names(Attempt)
    assert [c.name for c in schema.RESOURCES.fields] == names(Resource)
    packed = {"prompt_ids", "response_ids", "logprobs"}  # stored in the packed token columns
    assert sorted(c.name for c in schema.SPANS.fields) == sorted(n for n in names(Span) if n not in packed)


def test_nullable_columns_are_the_optional_fields() -> None:
    for table, cls in ((schema.ROLLOUTS, Rollout), (schema.ATTEMPTS, Attempt), (schema.SPANS, Span)):
        hints = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        for c in table.fields:
            if (table.name, c.name) == ("spans", "position"):
                continue  # None only on a span not yet written; the store always gives one
            assert c.nullable == hints[c.name].endswith("| None"), (table.name, c.name)


def sqlite_layout(path: Path) -> dict[str, Any]:
    """Every table's columns (name, type, not null, default, primary key) and every index, of a sqlite file."""
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        columns = {t: sorted(conn.execute(f"PRAGMA table_info({t})").fetchall(), key=lambda c: c[1]) for t in tables}
        columns = {t: [c[1:] for c in cols] for t, cols in columns.items()}  # without the column's position
        indexes = sorted(
            (r[0], r[1], r[2]) for r in conn.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type='index'")
        )
    return {"columns": columns, "indexes": indexes}


def test_a_version_1_sqlite_file_is_brought_to_the_tables_of_a_new_one(tmp_path: Path) -> None:
    old, new = tmp_path / "v1.db", tmp_path / "new.db"
    with sqlite3.connect(old) as raw:
        for statement in SQLITE_V1:
            raw.execute(statement)
        raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        raw.execute("INSERT INTO schema_version (version) VALUES (1)")
    connect(f"sqlite:///{old}").close()
    connect(f"sqlite:///{new}").close()
    migrated, fresh = sqlite_layout(old), sqlite_layout(new)
    assert migrated["columns"] == fresh["columns"]
    assert [i[:2] for i in migrated["indexes"]] == [i[:2] for i in fresh["indexes"]]
    assert len(fresh["columns"]) == len(schema.TABLES) + 1  # and schema_version


def test_a_version_1_postgres_schema_is_brought_to_the_tables_of_a_new_one(pg_schema: Callable[[], str]) -> None:
    psycopg = pytest.importorskip("psycopg")
    from tracerl.store.postgres import parse_url

    old_url, new_url = pg_schema(), pg_schema()
    conninfo, old = parse_url(old_url)
    with psycopg.connect(conninfo, autocommit=True) as raw, raw.transaction():
        raw.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(psycopg.sql.Identifier(old)))
        raw.execute(psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(old)))
        for statement in [*POSTGRES_V1, "CREATE TABLE schema_version (version INTEGER NOT NULL)"]:
            raw.execute(cast(LiteralString, statement))  # the shipped DDL, constants
        raw.execute("INSERT INTO schema_version (version) VALUES (1)")
    connect(old_url).close()
    connect(new_url).close()
    new = parse_url(new_url)[1]

    def layout(name: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        with psycopg.connect(conninfo) as conn:
            cols = conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default FROM "
                "information_schema.columns WHERE table_schema = %s ORDER BY table_name, column_name",
                (name,),
            ).fetchall()
            idx = conn.execute(
                "SELECT indexname, replace(indexdef, schemaname || '.', '') FROM pg_indexes WHERE schemaname = %s "
                "ORDER BY indexname",
                (name,),
            ).fetchall()
        cols = [(*c[:4], None if c[4] is None else str(c[4]).replace(name, "S")) for c in cols]
        return cols, [(i[0], str(i[1]).replace(name, "S")) for i in idx]

    assert layout(old) == layout(new)


def statements(q: queries.Queries) -> list[str]:
    return [v for v in vars(q).values() if isinstance(v, str)] + [
        sql for used in ((), queries.QUERY_FILTERS) for sql in q.query_rollouts(used)
    ]


def test_each_dialect_s_queries_use_its_placeholder_and_locks_only() -> None:
    lite, pg = statements(queries.SQLITE_QUERIES), statements(queries.POSTGRES_QUERIES)
    assert len(lite) == len(pg) > 40
    assert not any("%s" in s or "FOR UPDATE" in s or "ANY(" in s for s in lite)
    assert not any("?" in s or "json_each" in s for s in pg)
    assert sum("SKIP LOCKED" in s for s in pg) == 3  # the claim heads (with and without modes) and lease expiry
    for a, b in zip(lite, pg, strict=True):  # the same statement, but for the dialect's parts
        assert a.count("?") == b.count("%s"), (a, b)


def test_the_wire_form_of_rollouts_and_attempts_is_their_to_json() -> None:
    with connect("sqlite:///:memory:") as store:
        store.enqueue([RolloutSpec(task={"q": [1, {"a": None}]}, metadata={"m": 1}, idempotency_key="k")])
        claim = store.claim("w")
        assert claim is not None
        assert rollout_to_wire(claim.rollout) == claim.rollout.to_json()
        assert attempt_to_wire(claim.attempt) == claim.attempt.to_json()
        assert list(rollout_to_wire(claim.rollout)) == names(Rollout)
