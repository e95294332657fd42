"""Fresh PostgreSQL schemas for tests: one store per schema on the server every session and CI run provides.

    require_postgres()                       # skip (fail under TRACERL_REQUIRE_POSTGRES=1) when it is unreachable
    with fresh_schema("tracerl_runner") as (url, schema): ...   # a store URL on a new schema, dropped after
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_URL = os.environ.get("TRACERL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pg_url(schema: str) -> str:
    """The store URL of ``schema`` on the test server."""
    return f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}"


def require_postgres() -> None:
    """Skip the test when the server is unreachable; fail instead when ``TRACERL_REQUIRE_POSTGRES=1`` (CI)."""
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as e:
        if os.environ.get("TRACERL_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL at {PG_URL} is required (TRACERL_REQUIRE_POSTGRES=1) but unreachable: {e}")
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {e}")


def drop_schemas(*schemas: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def fresh_schema(prefix: str = "tracerl_test") -> Iterator[tuple[str, str]]:
    """``(store URL, schema name)`` of a new schema, dropped when the block ends."""
    require_postgres()
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        yield pg_url(schema), schema
    finally:
        drop_schemas(schema)
