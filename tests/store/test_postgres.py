"""What only the postgres backend promises: schema isolation and migration, clear connection errors."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import psycopg.sql
import pytest

from tracerl.errors import ConfigError, StoreUnavailable
from tracerl.store import connect
from tracerl.store.postgres import MIGRATIONS, PostgresStore, redact
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
        conn.execute(psycopg.sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(table), (len(MIGRATIONS) + 1,))
    with pytest.raises(ConfigError, match="newer"):
        PostgresStore(url)
