"""The postgres backend's connection pool: at most ``size`` connections, opened on demand and reused.

Why not ``psycopg_pool``: it would add a dependency for what is ~80 lines here, and this pool also knows
about ``fork`` (a child process must never touch its parent's sockets: it starts with an empty pool),
which ``psycopg_pool`` leaves to the caller. What it guarantees:

* a thread that finds every connection in use waits at most ``timeout_s`` and then gets
  :class:`~tracerl.errors.StoreUnavailable` naming the pool size and what to change — never a silent hang;
* a connection that comes back broken or inside a transaction is closed, not reused;
* :meth:`close` closes the idle connections at once and every checked-out one when it comes back; later
  checkouts raise :class:`~tracerl.errors.StoreUnavailable`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from tracerl.errors import StoreUnavailable

DEFAULT_TIMEOUT_S = 30.0


class Pool:
    """See the module docstring. ``connect`` opens one connection (raising tracerl errors)."""

    def __init__(
        self, connect: Callable[[], psycopg.Connection[Any]], size: int, *, timeout_s: float = DEFAULT_TIMEOUT_S,
        name: str = "postgres store",
    ) -> None:  # fmt: skip
        if size < 1:
            raise ValueError(f"pool size must be ≥ 1, got {size}")
        self._connect, self.size, self.timeout_s, self._name = connect, size, timeout_s, name
        self._idle: list[psycopg.Connection[Any]] = []
        self._open = 0
        self._closed = False
        self._cond = threading.Condition()
        self._pid = os.getpid()
        self._abandoned: list[psycopg.Connection[Any]] = []

    @property
    def in_use(self) -> int:
        """Connections checked out now."""
        with self._cond:
            return self._open - len(self._idle)

    def _check_fork(self) -> None:
        """After ``fork`` the child must not touch the parent's sockets: start an empty pool."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._abandoned.extend(self._idle)  # never closed here: closing would end the parent's sessions
            self._idle, self._open, self._cond = [], 0, threading.Condition()

    def _checkout(self) -> psycopg.Connection[Any] | None:
        """An idle connection, or ``None`` after reserving a slot for a new one; waits at most ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while True:
                if self._closed:
                    raise StoreUnavailable(f"the {self._name} is closed; open a new one with tracerl.connect(url)")
                if self._idle:
                    return self._idle.pop()
                if self._open < self.size:
                    self._open += 1
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StoreUnavailable(
                        f"all {self.size} connections of the {self._name} stayed in use for {self.timeout_s:g} s; "
                        f"use fewer threads per store, or a larger pool (pool_size=…, pool_timeout_s=…)"
                    )
                self._cond.wait(remaining)

    @contextmanager
    def connection(self) -> Generator[psycopg.Connection[Any], None, None]:
        self._check_fork()
        conn = self._checkout()
        if conn is None:
            try:
                conn = self._connect()
            except BaseException:
                self._release(None)
                raise
        try:
            yield conn
        finally:
            if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
                conn.close()
                self._release(None)
            else:
                self._release(conn)

    def _release(self, conn: psycopg.Connection[Any] | None) -> None:
        with self._cond:
            if conn is not None and not self._closed:
                self._idle.append(conn)
            else:
                if conn is not None:
                    conn.close()  # returned after close(): closed now
                self._open -= 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for conn in self._idle:
                conn.close()
            self._open -= len(self._idle)
            self._idle.clear()
            self._cond.notify_all()  # waiters learn that the pool is closed
