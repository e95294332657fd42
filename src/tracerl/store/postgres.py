"""PostgreSQL store backend (``postgresql://user@host:5432/db``): one store shared by many machines.

Needs ``tracerl[postgres]`` (psycopg 3). The contract is implemented once in ``sql.py``; this module adds:

* **Schema.** Tables live in their own schema (``?schema=NAME`` in the URL, default ``tracerl``), created
  and migrated on connect under an advisory lock, so many processes may start at once. The schema version
  is kept in ``schema_version``; a schema written by a newer tracerl is refused.
* **Claims.** The queue head is taken with ``SELECT ... FOR UPDATE SKIP LOCKED``: concurrent claimers never
  block on or get the same rollout. Rows are always locked in the order queue → rollout → attempt.
* **Wake-ups.** Every enqueue, finish, cancel or lease expiry sends ``NOTIFY tracerl_<schema>``; a store
  that waits (``claim(wait_s=...)``, ``wait()``) keeps one extra connection on ``LISTEN`` and wakes at once,
  without polling. A slow re-check every ``poll_s`` seconds catches leases that run out.
* **Connections.** A small pool (``pool_size`` connections, opened on demand) shared by the threads; a
  thread that finds them all busy for ``pool_timeout_s`` gets ``StoreUnavailable`` (``pg_pool.py``).
* **Errors.** Driver errors become :mod:`tracerl.errors`; an unreachable server is ``StoreUnavailable``
  naming the URL without its password.

Lease times use the clock of the machine that calls the store: keep the machines' clocks in sync (NTP).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, LiteralString, cast
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from tracerl.errors import ConfigError, Conflict, InvalidInput, ServerError, StoreUnavailable, TracerlError
from tracerl.store.queries import POSTGRES_QUERIES
from tracerl.store.schema import POSTGRES, SCHEMA_VERSION, VERSION_TABLE, migration_plan
from tracerl.store.sql import SqlStore
from tracerl.store.sql_rows import Row, Tx
from tracerl.types import Attempt, Rollout, RolloutSpec

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg import sql as pgsql
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ConfigError("the postgres store needs psycopg 3: pip install 'tracerl[postgres]'") from e

from tracerl.store.pg_pool import DEFAULT_TIMEOUT_S, Pool

log = logging.getLogger(__name__)

SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")  # used with fullmatch: "$" would let "name\n" through
DEFAULT_SCHEMA = "tracerl"

def _sql(text: str) -> LiteralString:
    """A statement of ``queries.py`` or ``schema.py`` as psycopg's ``LiteralString``: each is assembled from
    constants there (values always travel as parameters), which the type checker cannot follow through
    their formatting."""
    return cast(LiteralString, text)


class _Tx:
    """A transaction in pipeline mode: ``send`` queues a statement; reading any result syncs the pipeline."""

    __slots__ = ("_conn", "_pipeline")

    def __init__(self, conn: psycopg.Connection[Any], pipeline: psycopg.Pipeline) -> None:
        self._conn, self._pipeline = conn, pipeline

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return self._conn.execute(_sql(sql), params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(_sql(sql), params).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = self._conn.execute(_sql(sql), params)
        self._pipeline.sync()
        return cur.rowcount

    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(_sql(sql), params)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        cur = self._conn.cursor()
        cur.executemany(_sql(sql), rows)
        self._pipeline.sync()
        return cur.rowcount


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to log and show)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def parse_url(url: str) -> tuple[str, str]:
    """``(conninfo for psycopg, schema)`` from a store URL; ``?schema=NAME`` picks the schema."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), DEFAULT_SCHEMA)
    if not SCHEMA_RE.fullmatch(schema):
        raise ConfigError(
            f"postgres schema {schema!r} in {redact(url)} must be a plain identifier "
            "(letters, digits, underscores; at most 41 characters)"
        )
    rest = [(k, v) for k, v in query if k != "schema"]
    if not any(k == "connect_timeout" for k, _ in rest):
        rest.append(("connect_timeout", "10"))
    scheme = "postgresql" if parts.scheme in ("postgres", "postgresql") else parts.scheme
    return urlunsplit(parts._replace(scheme=scheme, query=urlencode(rest, quote_via=quote))), schema


class PostgresStore(SqlStore):
    """The store in a PostgreSQL schema. See the module docstring."""

    q = POSTGRES_QUERIES

    def __init__(
        self, url: str, *, pool_size: int = 8, pool_timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = 1.0
    ) -> None:
        super().__init__()
        self.url = redact(url)
        self._conninfo, self.schema = parse_url(url)
        self._channel = f"tracerl_{self.schema}"
        self.poll_s = poll_s
        self._closed = False
        self._listener: threading.Thread | None = None
        self._listener_lock = threading.Lock()
        self._pool = Pool(self._connect, pool_size, timeout_s=pool_timeout_s, name=f"postgres store {self.url}")
        try:
            self._migrate()
        except psycopg.Error as e:
            raise self._translate(e) from e

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as e:
            raise self._translate(e) from e
        conn.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(self.schema)))
        return conn

    def _migrate(self) -> None:
        with self._pool.connection() as conn:
            if self._version(conn) == SCHEMA_VERSION:
                return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tracerl-migrate:{self.schema}",))
                conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(self.schema)))
                conn.execute(VERSION_TABLE)
                current = self._version(conn)
                if current > SCHEMA_VERSION:
                    raise ConfigError(
                        f"postgres schema {self.schema!r} at {self.url} has schema version {current}, newer than "
                        f"this tracerl understands ({SCHEMA_VERSION}); upgrade tracerl to use it"
                    )
                for version, statements in migration_plan(POSTGRES, current):
                    for statement in statements:
                        conn.execute(_sql(statement))
                    conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                    log.info("postgres store %s schema %s migrated to version %d", self.url, self.schema, version)

    def _version(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return 0
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0) if row else 0

    # -- transactions and dialect -----------------------------------------------------------------
    @contextmanager
    def _write(self) -> Generator[_Tx, None, None]:
        try:
            with self._pool.connection() as conn, conn.pipeline() as pipeline, conn.transaction():
                yield _Tx(conn, pipeline)
        except psycopg.Error as e:
            raise self._translate(e) from e

    def _read(self) -> AbstractContextManager[_Tx]:
        return self._write()  # a transaction gives the statements of a read one snapshot, too

    def _changed(self, tx: Tx) -> None:
        tx.send(self.q.notify, (self._channel,))

    def _lock_attempt(self, tx: Tx, attempt_id: str) -> tuple[Attempt, Rollout]:
        row = tx.one(self.q.rollout_of_attempt, (attempt_id,))
        if row is not None:
            self._rollout_tx(tx, row[0], lock=True)  # rollout before attempt: the lock order everywhere
        return super()._lock_attempt(tx, attempt_id)

    def _lock_spans(self, tx: Tx, attempt_ids: Sequence[str]) -> None:
        for aid in attempt_ids:  # sorted by the caller: one lock order, no deadlock between two writers
            tx.send(self.q.advisory_lock, (f"tracerl-spans:{self.schema}:{aid}",))

    def _lock_resource(self, tx: Tx, name: str) -> None:
        tx.one(self.q.advisory_lock, (f"tracerl-resource:{self.schema}:{name}",))

    def enqueue(self, specs: Sequence[RolloutSpec]) -> list[Rollout]:
        for _ in range(3):  # two processes enqueuing one idempotency key at once: the loser re-reads
            try:
                return super().enqueue(specs)
            except Conflict:
                continue
        return super().enqueue(specs)

    # -- wake-ups ---------------------------------------------------------------------------------
    def _wait_change(self, gen: int, timeout: float, peek: Callable[[], bool] | None) -> None:
        self._ensure_listener()
        super()._wait_change(gen, timeout, peek)

    def _ensure_listener(self) -> None:
        with self._listener_lock:
            if self._listener is not None and not self._listener.is_alive():
                self._listener = None  # inherited through fork: the thread does not exist in this process
            if self._listener is not None or self._closed:
                return
            ready = threading.Event()
            self._listener = threading.Thread(target=self._listen, args=(ready,), name="tracerl-pg-listen", daemon=True)
            self._listener.start()
        ready.wait(5.0)

    def _listen(self, ready: threading.Event) -> None:
        while not self._closed:
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(self._channel)))
                    ready.set()
                    self._signal()  # changes made before LISTEN took effect were not announced
                    while not self._closed:
                        for _ in conn.notifies(timeout=0.5):
                            self._signal()
            except psycopg.Error as e:
                if self._closed:
                    return
                ready.set()
                log.warning("postgres store %s lost its LISTEN connection (%s); retrying in 1 s", self.url, e)
                time.sleep(1.0)

    # -- errors -----------------------------------------------------------------------------------
    def _translate(self, e: psycopg.Error) -> TracerlError:
        """The tracerl error for a driver error. Its message names the store URL (for in-process callers and
        the server log); what a server sends its clients (``client_message``) names neither the URL nor the
        database's own text, which can quote schema and table names."""
        if isinstance(e, pg_errors.UniqueViolation):
            return Conflict(
                f"postgres store {self.url}: a concurrent write conflicted ({e}); retry the call"
            ).for_client("the store's database refused a concurrent write (unique key); retry the call")
        if isinstance(e, pg_errors.DataError):
            return InvalidInput(f"postgres store {self.url} refused a value: {e}").for_client(
                f"the store's database refused a value ({type(e).__name__}); check the request's strings and "
                "numbers (for example, text cannot hold NUL characters)"
            )
        if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
            detail = " ".join(str(e).split())
            return StoreUnavailable(
                f"cannot reach PostgreSQL at {self.url} ({detail}); check that the server is running and "
                "that host, port, user, password and database in the store URL are right "
                "(for example postgresql://postgres@127.0.0.1:5432/test)"
            ).for_client("the store server cannot reach its database; retry later (the details are in its log)")
        return ServerError(f"postgres store {self.url} failed: {e}").for_client(
            "the store's database failed on this request; the details are in the server log"
        )

    def close(self) -> None:
        self._closed = True
        listener = self._listener
        if listener is not None:
            listener.join(timeout=2.0)
        self._pool.close()
