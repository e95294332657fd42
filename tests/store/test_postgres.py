"""What only the postgres backend promises: schema isolation and migration, clear connection errors."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import psycopg
import psycopg.sql
import pytest

from postgres_schemas import PG_URL
from tracerl.errors import ConfigError, StoreUnavailable
from tracerl.store import connect
from tracerl.store.postgres import PostgresStore, redact
from tracerl.store.schema import SCHEMA_VERSION
from tracerl.types import RolloutQuery, RolloutSpec

pytestmark = pytest.mark.timeout(60)


def test_unreachable_server_names_the_url_without_password() -> None:
    with pytest.raises(StoreUnavailable) as e:
        connect("postgresql://alice:s3cret@127.0.0.1:1/test?connect_timeout=2")
    msg = str(e.value)
    assert "s3cret" not in msg and "alice:***@127.0.0.1:1" in msg and "running" in msg
    assert redact("postgresql://u:p@h/db") == "postgresql://u:***@h/db"


@pytest.mark.parametrize("schema", ['x";drop', "name%0A", "name%0D%0A", "%0Aname", "1abc", ""])
def test_schema_name_must_be_an_identifier(schema: str) -> None:
    with pytest.raises(ConfigError, match="identifier"):
        connect(f"postgresql://postgres@127.0.0.1:5432/test?schema={schema}")
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=3) as conn:
        made = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", ("name%",)).fetchall()
    assert [n for (n,) in made if not n.isidentifier()] == []  # no schema named "name\n" was created


def test_schemas_are_isolated_and_reopening_keeps_data(pg_schema: Callable[[], str]) -> None:
    url_a, url_b = pg_schema(), pg_schema()
    with connect(url_a) as a, connect(url_b) as b:
        a.enqueue([RolloutSpec(task={"i": 1})])
        assert b.query_rollouts(RolloutQuery()).total == 0
        assert b.claim("w") is None
    with connect(url_a) as again:
        assert again.query_rollouts(RolloutQuery()).total == 1


def test_a_schema_from_a_newer_tracerl_is_refused(pg_schema: Callable[[], str]) -> None:
    url = pg_schema()
    store = PostgresStore(url)
    store.close()
    with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
        table = psycopg.sql.Identifier(store.schema, "schema_version")
        conn.execute(psycopg.sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(table), (SCHEMA_VERSION + 1,))
    with pytest.raises(ConfigError, match="newer"):
        PostgresStore(url)


def test_postgres_errors_reach_api_clients_without_host_user_database_or_schema(
    pg_schema: Callable[[], str],
) -> None:
    from tracerl.errors import ExperimentConflict
    from tracerl.server.testing import start_server
    from tracerl.store.http import HttpStore
    from tracerl.store.wire import error_body

    url = pg_schema()
    schema = url.rsplit("schema=", 1)[1]
    secret_parts = ("127.0.0.1", "5432", "postgres@", "/test", schema)
    with start_server(url) as server:
        store = HttpStore(server.url)
        store.bind_experiment("first")
        conflict = httpx.post(f"{server.url}/api/v1/experiment", json={"name": "second"}, timeout=30)
        log = server.log_tail(20_000)
    assert conflict.status_code == 409 and "'first'" in conflict.json()["error"]["message"]
    assert not [p for p in secret_parts if p in conflict.text], conflict.text
    assert schema in log  # the detail went to the server's log
    with connect(url) as local:
        with pytest.raises(ExperimentConflict, match=schema):
            local.bind_experiment("second")  # in-process callers still get the full message
        # every driver error the backend translates (as a request would meet it) keeps its client message clean
        assert isinstance(local, PostgresStore)
        with psycopg.connect(PG_URL) as conn:
            for sql in ("SELECT 1/0", "SELECT 'x'::int", "SELECT * FROM no_such_table", "SELECT pg_sleep(-)"):
                with pytest.raises(psycopg.Error) as raised:
                    conn.execute(sql)
                conn.rollback()
                err = local._translate(raised.value)  # pyright: ignore[reportPrivateUsage]
                assert schema in str(err) and err.client_message is not None
                assert not [p for p in secret_parts if p in error_body(err).decode()], error_body(err)
