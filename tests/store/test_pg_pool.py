"""The postgres store under pressure: its connection pool waits a bounded time and closes what is checked
out, and a heartbeat that waited for row locks reads its time after them (one rule with ``finish``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

psycopg = pytest.importorskip("psycopg")

from tracerl.errors import AttemptFinished, StoreUnavailable  # noqa: E402
from tracerl.store.pg_pool import Pool  # noqa: E402
from tracerl.store.postgres import PostgresStore, parse_url  # noqa: E402
from tracerl.types import RolloutSpec  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def test_an_exhausted_pool_waits_a_bounded_time_then_says_what_to_change(pg_schema: Callable[[], str]) -> None:
    conninfo, _ = parse_url(pg_schema())
    pool = Pool(lambda: psycopg.connect(conninfo, autocommit=True), 1, timeout_s=0.3, name="test pool")
    with pool.connection():
        start = time.monotonic()
        exhausted = r"all 1 connections of the test pool stayed in use for 0.3 s"
        with pytest.raises(StoreUnavailable, match=exhausted), pool.connection():
            pass
        assert 0.25 <= time.monotonic() - start < 5.0
    with pool.connection() as conn:  # freed: usable again
        assert conn.execute("SELECT 1").fetchone() == (1,)
    pool.close()


def test_close_closes_checked_out_connections_when_they_come_back(pg_schema: Callable[[], str]) -> None:
    conninfo, _ = parse_url(pg_schema())
    pool = Pool(lambda: psycopg.connect(conninfo, autocommit=True), 2, timeout_s=5.0)
    waiter_error: list[BaseException] = []
    with pool.connection() as busy, pool.connection() as idle_later:
        pass
    assert pool.in_use == 0
    with pool.connection() as busy:

        def wait_for_one() -> None:
            try:
                with pool.connection(), pool.connection():  # needs both: waits
                    pass
            except BaseException as e:
                waiter_error.append(e)

        waiter = threading.Thread(target=wait_for_one)
        waiter.start()
        time.sleep(0.2)
        pool.close()  # the waiter holds the other connection and waits for a second one
        waiter.join(5.0)
        assert idle_later.closed and not busy.closed  # the waiter's, given back; this one is still in use
    assert busy.closed and pool.in_use == 0  # closed when it came back
    assert len(waiter_error) == 1 and isinstance(waiter_error[0], StoreUnavailable)  # woken, not left hanging
    with pytest.raises(StoreUnavailable, match="is closed"), pool.connection():
        pass


def test_a_heartbeat_that_waited_for_the_row_locks_reads_its_time_after_them(pg_schema: Callable[[], str]) -> None:
    url = pg_schema()
    with PostgresStore(url) as store:
        [r] = store.enqueue([RolloutSpec(task={})])
        claim = store.claim("w", lease_s=1.0)
        assert claim is not None
        conninfo, schema = parse_url(url)
        with psycopg.connect(conninfo) as other:  # a concurrent finish/cancel holds the rollout's row lock
            other.execute(psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(schema)))
            other.execute("SELECT 1 FROM rollouts WHERE rollout_id = %s FOR UPDATE", (r.rollout_id,))
            threading.Timer(1.5, other.commit).start()
            with pytest.raises(AttemptFinished, match="unresponsive"):  # sent in time, served after the lease
                store.heartbeat(claim.attempt.attempt_id, lease_s=30.0)
        assert store.get_attempts(r.rollout_id)[0].error == "lease expired"
