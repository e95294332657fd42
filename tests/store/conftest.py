"""Fixtures for the store contract suite: one ``store`` fixture over every backend.

* ``memory``: a fresh :class:`MemoryStore`;
* ``sqlite``: a fresh file in the test's temporary directory;
* ``postgres``: a fresh schema per test in the PostgreSQL at ``TRACERL_TEST_POSTGRES_URL`` (default
  ``postgresql://postgres@127.0.0.1:5432/test``); every schema made in the session is dropped at its end.
  When that server cannot be reached the postgres cases are skipped, unless ``TRACERL_REQUIRE_POSTGRES=1``
  (CI sets it), which turns the skip into a failure;
* ``http``: a real ``tracerl serve`` subprocess on loopback over a fresh sqlite file, with ``HttpStore``.

``peer`` is a second, independent handle on the same data (what another process would open), so tests can
check that changes made elsewhere are seen and wake waiters. For memory it is the same object.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from postgres_schemas import drop_schemas, pg_url, require_postgres
from tracerl.store import Store, connect

BACKENDS = ["memory", "sqlite", "postgres", "http"]


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[Callable[[], str]]:
    """A factory of fresh postgres store URLs (one schema each), dropped at the end of the session."""
    require_postgres()
    made: list[str] = []

    def fresh() -> str:
        schema = f"tracerl_test_{uuid.uuid4().hex[:12]}"
        made.append(schema)
        return pg_url(schema)

    yield fresh
    drop_schemas(*made)


def http_modules() -> tuple[Callable[..., object], type[Store]]:
    """The server test helper and the HTTP client; skip (only) while they are not importable yet."""
    try:
        from tracerl.server.testing import start_server
        from tracerl.store.http import HttpStore
    except ImportError as e:
        pytest.skip(f"HTTP store not available yet: {e}")
    return start_server, HttpStore


class ServerPool:
    """Hands out fresh ``tracerl serve`` processes (each over its own new sqlite file).

    Starting a server takes about a second, so the next one is always starting in the background while a
    test runs, and finished servers are stopped in the background too."""

    def __init__(self, root: Path) -> None:
        self._start, _ = http_modules()
        self._root = root
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-servers")
        self._next: Future[Any] | None = None

    def _spawn(self) -> Future[Any]:
        return self._pool.submit(self._start, f"sqlite:///{self._root / f'{uuid.uuid4().hex[:8]}.db'}")

    def take(self) -> Any:
        server = (self._next or self._spawn()).result()
        self._next = self._spawn()
        return server

    def release(self, server: Any) -> None:
        self._pool.submit(server.close)

    def close(self) -> None:
        if self._next is not None:
            self._next.result().close()
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def http_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("servers"))
    yield pool
    pool.close()


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty store of the backend named by the test's parameter."""
    kind: str = request.param
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    elif kind == "postgres":
        yield request.getfixturevalue("pg_schema")()
    elif kind == "http":
        pool: ServerPool = request.getfixturevalue("http_servers")
        server = pool.take()
        try:
            yield server.url
        finally:
            pool.release(server)
    else:  # pragma: no cover
        raise ValueError(kind)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = connect(store_url)
    yield s
    s.close()


@pytest.fixture
def peer(store: Store, store_url: str) -> Iterator[Store]:
    """A second handle on the same store (as another process would have); the same object for memory."""
    if store_url.startswith("memory"):
        yield store
        return
    other = connect(store_url)
    yield other
    other.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_url" in metafunc.fixturenames:
        metafunc.parametrize("store_url", BACKENDS, indirect=True)
