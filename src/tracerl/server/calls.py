"""How the server runs store calls: never on the event loop, so no store can stall ``/healthz`` or others.

A store call can block for a long time — a sqlite write waits up to ``busy_timeout_s`` while another
process holds the write lock, a ``query_rollouts(limit=10000)`` reads for tens of milliseconds — and a
call made on the event loop would stop every other request (``/healthz`` included) for that long. So
:class:`Calls` sends each one to a thread:

* local backends (memory, sqlite) get **one dedicated thread per store**: their calls are serialised by the
  store's own lock anyway (sqlite has one connection), so more threads would only queue on that lock.
  Handing a call to a waiting thread costs ≈10 µs (a queue put and one ``call_soon_threadsafe``), against
  ≈60–130 µs for a general-purpose pool hop — which is why it is not ``anyio.to_thread``. The thread
  stops after :data:`IDLE_S` seconds without work and starts again on the next call;
* network backends (postgres, http) run in anyio's bounded worker-thread pool, where calls overlap;
* long polls (``claim`` with ``wait_s``, ``wait``) always take a separate pool of their own, so waiting
  runners never hold up short calls;
* heavy reads (a page of thousands of rollouts, traces, spans — read *and* encoded as JSON, which costs
  more than the read; see :mod:`tracerl.server.reads`) take a lane of their own (:meth:`Calls.heavy`): a
  child process per store where another process can open the store too (a sqlite file), so their Python
  work never holds this process's GIL; otherwise a second thread per local store, or at most
  :data:`HEAVY_READS` at a time for a network store. One client looping
  ``query(limit=10000)`` then waits on its own lane and light requests keep theirs (``tracerl bench stall``
  measures it).

Usage (inside an async route handler)::

    call = Calls(store)
    rollouts = await call(store.enqueue, specs)
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from tracerl.server.reads import HeavyRead, ReadProcess, reopenable
from tracerl.store.base import Store

T = TypeVar("T")
LOCAL_SCHEMES = ("memory", "sqlite")
IDLE_S = 10.0  # an idle store thread exits after this long; the next call starts a new one

# Long polls get their own thread budget so many waiting runners never starve the short calls.
_long_polls = anyio.CapacityLimiter(256)
HEAVY_READS = 2
"""Heavy reads of a network store (postgres, http) that run at once; more wait their turn."""
_heavy_reads = anyio.CapacityLimiter(HEAVY_READS)

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class StoreThread:
    """One thread that runs the calls handed to it in order and resolves each caller's future."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn`` and return a future (of the running loop) that gets its result or exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._jobs.put((loop, future, fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()
        return future

    def _serve(self) -> None:
        while True:
            try:
                loop, future, fn = self._jobs.get(timeout=IDLE_S)
            except queue.Empty:
                with self._lock:  # a job put after the timeout is seen here, before the thread is let go
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            try:
                result, error = fn(), None
            except BaseException as e:  # handed to the caller, who re-raises it
                result, error = None, e
            try:
                loop.call_soon_threadsafe(_resolve, future, result, error)
            except RuntimeError:  # the caller's loop has closed: nobody is waiting any more
                pass


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


_threads: dict[str, weakref.WeakKeyDictionary[Store, StoreThread]] = {
    "calls": weakref.WeakKeyDictionary(), "reads": weakref.WeakKeyDictionary()}  # fmt: skip
_threads_lock = threading.Lock()
_processes: weakref.WeakKeyDictionary[Store, ReadProcess] = weakref.WeakKeyDictionary()


def store_thread(store: Store, lane: str = "calls") -> StoreThread:
    """The one thread that runs ``store``'s calls of ``lane`` (``calls`` or heavy ``reads``), shared by every
    :class:`Calls` of that store."""
    with _threads_lock:
        found = _threads[lane].get(store)
        if found is None:
            found = _threads[lane][store] = StoreThread(f"tracerl-store-{lane}-{type(store).__name__}")
        return found


def read_process(store: Store) -> ReadProcess:
    """The one child process that runs ``store``'s heavy reads (the store must be :func:`reopenable`)."""
    with _threads_lock:
        found = _processes.get(store)
        if found is None:
            found = _processes[store] = ReadProcess(store.url)
        return found


def close_read_process(store: Store) -> None:
    """End ``store``'s heavy-reads process, if it has one (the server does when it stops)."""
    with _threads_lock:
        found = _processes.pop(store, None)
    if found is not None:
        found.close()


class Calls:
    """Runs store calls off the event loop: a dedicated thread for local backends, else worker threads."""

    def __init__(self, store: Store) -> None:
        local = store.url.split("://", 1)[0].lower() in LOCAL_SCHEMES
        self.thread = store_thread(store) if local else None
        self.store = store
        self.process = read_process(store) if reopenable(store.url) else None
        self.reads = store_thread(store, "reads") if local else None

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.thread is not None:
            return await self.thread.submit(functools.partial(fn, *args, **kwargs))
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    async def heavy(self, fn: HeavyRead, *args: Any, bulk: bool = True) -> bytes:
        """``fn(store, *args)`` — a heavy read that returns its encoded answer — on the heavy-reads lane
        (``fn`` a module-level function, so it can travel to the child process). ``bulk=False`` keeps a read
        that is usually small (one rollout's spans) on the thread: the hop to the child costs more than it."""
        if bulk and self.process is not None and self.process.ready():
            return await self.process.run(fn, *args)
        call = functools.partial(fn, self.store, *args)
        if self.reads is not None:
            return await self.reads.submit(call)
        return await anyio.to_thread.run_sync(call, limiter=_heavy_reads)

    @staticmethod
    async def long(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=_long_polls)
