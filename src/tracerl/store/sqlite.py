"""SQLite store backend (``sqlite:///path/to/file.db``): the embedded default, one file, no server.

* **Durability.** The database runs in WAL mode with ``synchronous=NORMAL``: every acknowledged write
  survives a crash of the process (it is in the WAL file the moment the transaction commits); only a power
  loss or OS crash can lose the last few transactions before a checkpoint. Use postgres if you need more.
* **Several processes on one machine.** Each process opens its own connection; every write is one
  ``BEGIN IMMEDIATE`` transaction, so claims are atomic (two claimers never get the same rollout) and
  writers queue behind each other for up to ``busy_timeout_s``. Readers never block writers (WAL). Network
  file systems are not supported (SQLite's locking does not work there).
* **Threads.** Writes go through one connection per store object, guarded by a lock (SQLite runs one writer
  at a time anyway). Reads of a file database use read connections of their own (one per thread reading
  at the moment, kept for reuse), so a long read — a 10,000-row query — never holds up a write or a short
  read, and writes never block readers (WAL). A ``:memory:`` database has only the one connection.
* **Waiting.** ``claim(wait_s=...)`` and ``wait()`` wake at once on changes made through the same store
  object and poll cheaply (an indexed ``EXISTS`` read every ``poll_s`` seconds) for changes made by
  other processes.
* **Schema.** Created on first connect and migrated forward through ``schema_version``; a file written by a
  newer tracerl is refused rather than damaged.

``sqlite:///runs/a.db`` is relative to the working directory, ``sqlite:////abs/a.db`` absolute, and
``sqlite:///:memory:`` a private in-memory database (gone when the store is closed).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tracerl.errors import ConfigError, StoreUnavailable, TracerlError
from tracerl.store.queries import SQLITE_QUERIES
from tracerl.store.schema import SCHEMA_VERSION, SQLITE, VERSION_TABLE, migration_plan
from tracerl.store.sql import SqlStore
from tracerl.store.sql_rows import Row

log = logging.getLogger(__name__)

class _Tx:
    """A transaction on the store's connection (the caller holds the connection lock)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return self._conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(sql, params)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return self._conn.executemany(sql, rows).rowcount


def parse_url(url: str) -> str:
    """``sqlite:///relative.db`` → ``relative.db``; ``sqlite:////abs.db`` → ``/abs.db``; ``:memory:`` kept."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigError(
            f"sqlite store URL {url!r} must look like sqlite:///relative/path.db, sqlite:////absolute/path.db "
            "or sqlite:///:memory:"
        )
    return url[len(prefix) :].split("?", 1)[0]


class SqliteStore(SqlStore):
    """The store in one SQLite file. See the module docstring for durability and concurrency."""

    q = SQLITE_QUERIES

    def __init__(
        self,
        url: str = "sqlite:///:memory:",
        *,
        busy_timeout_s: float = 30.0,
        poll_s: float = 0.025,
        create: bool = True,
    ) -> None:
        """``create=False`` refuses a file that does not exist (for readers) instead of creating it."""
        super().__init__()
        self.url = url
        self.path = parse_url(url)
        self.poll_s = poll_s
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._abandoned: list[sqlite3.Connection] = []
        self._readers: list[sqlite3.Connection] = []  # idle read connections (file databases only)
        self._readers_lock = threading.Lock()
        if self.path != ":memory:" and not create and not Path(self.path).is_file():
            raise ConfigError(
                f"sqlite store file {self.path} does not exist (resolved to {Path(self.path).resolve()}); "
                f"check the path in {url!r} (sqlite:///relative.db, sqlite:////absolute.db)"
            )
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = self._open()
        try:
            with self._lock:
                self._migrate()
        except sqlite3.Error as e:
            self._conn.close()
            raise self._translate(e) from e
        except TracerlError:
            self._conn.close()
            raise

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_s,
                cached_statements=256,
            )  # fmt: skip
        except sqlite3.Error as e:
            raise self._translate(e) from e
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            if self.path != ":memory:":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                if mode is None or str(mode[0]).lower() != "wal":
                    log.warning("sqlite store %s could not switch to WAL (journal_mode=%s)", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            conn.close()
            raise self._translate(e) from e
        return conn

    def _check_fork(self) -> None:
        """A store object inherited through ``fork`` opens its own connection (SQLite's must not be shared)."""
        if self._pid != os.getpid() and self.path != ":memory:":
            self._pid = os.getpid()
            self._lock = threading.RLock()  # another thread may have held the parent's at fork time
            self._abandoned.append(self._conn)  # never closed here: that could disturb the parent's locks
            self._abandoned.extend(self._readers)
            self._readers, self._readers_lock = [], threading.Lock()
            self._conn = self._open()

    # -- schema -----------------------------------------------------------------------------------
    def _version(self) -> int:
        if self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone() is None:
            return 0
        row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0) if row else 0

    def _migrate(self) -> None:
        """Create the tables of ``schema.py`` in a new file, or bring an older file's forward."""
        if self._version() == SCHEMA_VERSION:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(VERSION_TABLE)
            current = self._version()
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"sqlite store {self.path} has schema version {current}, newer than this tracerl "
                    f"understands ({SCHEMA_VERSION}); upgrade tracerl to open it"
                )
            for version, statements in migration_plan(SQLITE, current):
                for statement in statements:
                    self._conn.execute(statement)
                self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                log.info("sqlite store %s migrated to schema version %d", self.path, version)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- transactions -----------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Generator[_Tx, None, None]:
        self._check_fork()
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise self._translate(e) from e
            try:
                yield _Tx(self._conn)
            except BaseException as exc:
                self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc) from exc
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                self._conn.execute("ROLLBACK")
                raise self._translate(e) from e

    @contextmanager
    def _read(self) -> Generator[_Tx, None, None]:
        self._check_fork()
        if self.path == ":memory:":  # one private database, one connection
            with self._lock:
                yield from self._snapshot(self._conn)
            return
        with self._readers_lock:
            conn = self._readers.pop() if self._readers else None
        if conn is None:
            conn = self._open()
        try:
            yield from self._snapshot(conn)
        except BaseException:
            conn.close()  # never reuse a connection left in an unknown state
            raise
        with self._readers_lock:
            self._readers.append(conn)

    def _snapshot(self, conn: sqlite3.Connection) -> Iterator[_Tx]:
        """One read transaction on ``conn`` (a consistent snapshot), as a generator for :meth:`_read`."""
        try:
            conn.execute("BEGIN")
            try:
                yield _Tx(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise self._translate(e) from e

    def _external_version(self) -> int | None:
        with self._lock:
            row = self._conn.execute("PRAGMA data_version").fetchone()
        return int(row[0]) if row else None

    def _translate(self, e: sqlite3.Error) -> TracerlError:
        text = str(e)
        if "locked" in text or "busy" in text:
            return StoreUnavailable(
                f"sqlite store {self.path} stayed locked by another process for more than {self.busy_timeout_s:g} s "
                f"({text}); stop the process holding it, or raise busy_timeout_s"
            )
        if isinstance(e, sqlite3.DatabaseError) and "not a database" in text:
            return ConfigError(f"{self.path} is not a SQLite database ({text}); point the store URL at another file")
        return StoreUnavailable(
            f"sqlite store {self.path} failed: {text}; check that the path is writable and the disk is not full"
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
