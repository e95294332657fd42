"""Heavy reads of ``tracerl serve`` — a page of thousands of rollouts, spans, traces — and the process that runs them.

Each heavy read is a plain function ``fn(store, *args) -> bytes`` that reads *and* JSON-encodes its answer
(the encoding costs more than the read). Reading and encoding 10,000 rollouts is ~0.2 s of Python holding
the GIL; run in a thread of the server, it made every light request wait for the GIL in 5 ms slices (with
one client looping ``query(limit=10000)``, 8 light clients fell to 0.11–0.5 of their rate alone,
``tracerl bench stall``). So where the store can be opened again from another process (a sqlite file),
:class:`ReadProcess` runs bulk reads (query pages over 200 rows, ``get_traces``) in **one child process of
its own**: the server's process only passes the finished bytes on, and all greedy readers together share
that one process — one core at most — however many of them there are. (``get_spans``, one rollout's spans,
stays on a thread: the hop to the child costs more than it usually saves.) Stores that live inside the server (``memory://``,
``sqlite:///:memory:``), postgres and ``http://`` stores read on a thread lane instead
(:class:`~tracerl.server.calls.Calls`).

The child is started (``spawn``: the server has threads, so no ``fork``) by the :data:`START_AFTER`-th bulk
read, which does not wait for it (it and any other read before the child is up take the thread lane); the child opens
its own store from the server store's URL, and ends with the server (within :data:`PARENT_CHECK_S` of a
SIGKILL of it).
A sqlite file in WAL mode lets the child read beside the server's writer and see every committed write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from tracerl.errors import StoreUnavailable
from tracerl.store.base import Store
from tracerl.store.wire import dumps, rollout_to_wire, span_to_wire, trace_to_wire
from tracerl.types import RolloutQuery

logger = logging.getLogger(__name__)

HeavyRead = Callable[..., bytes]


def page(store: Store, query: RolloutQuery) -> bytes:
    """``query_rollouts`` as the JSON the API answers: ``{"items", "total", "offset", "limit"}``."""
    got = store.query_rollouts(query)
    items = [rollout_to_wire(x) for x in got.items]
    return dumps({"items": items, "total": got.total, "offset": got.offset, "limit": got.limit})


def spans(store: Store, rollout_id: str | None, attempt_id: str | None, packed: bool) -> bytes:
    """``get_spans`` as JSON: ``{"spans": [...]}`` (token ids base64-packed when ``packed``)."""
    found = store.get_spans(rollout_id=rollout_id, attempt_id=attempt_id)
    return dumps({"spans": [span_to_wire(s, packed=packed) for s in found]})


def traces(store: Store, rollout_ids: Sequence[str], packed: bool) -> bytes:
    """``get_traces`` as JSON: ``{"traces": [...]}``."""
    return dumps({"traces": [trace_to_wire(t, packed=packed) for t in store.get_traces(rollout_ids)]})


def reopenable(url: str) -> bool:
    """Whether another process can open the store at ``url`` and see the same data: a sqlite file.

    (A postgres store could be too, but its ``url`` has the password redacted; its heavy reads stay on
    threads for now.)"""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not rest.startswith("/"):
        return False
    return rest[1:].split("?", 1)[0] not in ("", ":memory:")


_child_stores: dict[str, Store] = {}


def _in_child(url: str, fn: HeavyRead, args: tuple[Any, ...]) -> bytes:
    """Runs in the child: ``fn`` on the child's own store for ``url`` (opened once)."""
    store = _child_stores.get(url)
    if store is None:
        from tracerl.store import connect

        store = _child_stores[url] = connect(url)
    return fn(store, *args)


START_AFTER = 3
"""The bulk read that starts the child: a server that makes one or two (a test, a dashboard glance) spawns none."""
RETRY_S = 10.0
"""After a heavy-reads process failed to start, how long heavy reads stay on a thread before another try."""
PARENT_CHECK_S = 1.0
"""How often the child checks that the server is still its parent (it exits within this long of the server)."""


def _watch_parent(parent: int) -> None:
    """The child's initializer: a thread that ends the child once the server has gone (even by SIGKILL; the
    executor's own pipes do not tell the child, which holds both ends of its job queue)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="tracerl-reads-parent-watch", daemon=True).start()


def _open(store: Store) -> bytes:
    """The child's first job: open its store (so the first real read does not pay for it)."""
    return b""


class ReadProcess:
    """One child process that runs the heavy reads of the store at ``url``, one at a time, in order.

    :meth:`ready` starts it in the background; until it has started and opened its store (a second or so),
    heavy reads take the thread lane, so no request ever waits for the child to start."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._started: concurrent.futures.Future[bytes] | None = None
        self._retry_at = 0.0  # monotonic time before which no new child is started
        self._asked = 0  # bulk reads so far
        self._lock = threading.Lock()

    def ready(self) -> bool:
        """Whether the child is up; if it is not, start it (in the background; from the :data:`START_AFTER`-th
        call on) and answer ``False``. A child
        that failed to start (or died before it was up) is tried again :data:`RETRY_S` later."""
        with self._lock:
            self._asked += 1
            if self._pool is None and self._asked >= START_AFTER and time.monotonic() >= self._retry_at:
                ctx = multiprocessing.get_context("spawn")  # the server has threads: no fork
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=1, mp_context=ctx, initializer=_watch_parent, initargs=(os.getpid(),)
                )
                self._started = self._pool.submit(_in_child, self.url, _open, ())
                self._started.add_done_callback(self._check_start)
            started, failed = self._started, None
            if started is not None and started.done() and (started.cancelled() or started.exception() is not None):
                failed, self._pool, self._started = self._pool, None, None
                self._retry_at = time.monotonic() + RETRY_S
        if failed is not None:
            failed.shutdown(wait=False, cancel_futures=True)
            return False
        return started is not None and started.done()

    @staticmethod
    def _check_start(started: concurrent.futures.Future[bytes]) -> None:
        error = None if started.cancelled() else started.exception()
        if error is not None:
            logger.warning("the heavy-reads process did not start (%s); heavy reads take a thread meanwhile", error)

    async def run(self, fn: HeavyRead, *args: Any) -> bytes:
        """``fn(store, *args)`` in the child (call when :meth:`ready`); its exceptions (``NotFound``,
        ``InvalidInput``, ...) are raised here."""
        with self._lock:
            pool = self._pool
        if pool is None:
            raise StoreUnavailable("the server's heavy-reads process has stopped; retry the request")
        try:
            return await asyncio.wrap_future(pool.submit(_in_child, self.url, fn, args))
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:  # the next heavy read starts a new child
                    self._pool = self._started = None
            pool.shutdown(wait=False, cancel_futures=True)
            logger.error("the heavy-reads process ended unexpectedly; the next heavy read starts a new one")
            raise StoreUnavailable("the server's heavy-reads process ended unexpectedly; retry the request") from None

    def close(self) -> None:
        """End the child (a later :meth:`ready` starts a new one)."""
        with self._lock:
            pool, self._pool, self._started = self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
