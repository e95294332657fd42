"""The durable store: rollouts, attempts, spans and resources behind one contract.

Pick a backend by URL with :func:`connect`:

* ``memory://`` — in-process, for tests and quick scripts;
* ``sqlite:///path/to/file.db`` — the embedded default (one file, WAL, several processes on one machine);
* ``postgresql://user@host:5432/db`` — shared by many machines (needs ``tracerl[postgres]``);
* ``http://host:port`` — a client for a running ``tracerl serve``.
"""

from __future__ import annotations

from typing import Any, cast

from tracerl.errors import ConfigError
from tracerl.store.base import Store

__all__ = ["Store", "connect"]


def connect(url: str, *, create: bool = True, token: str | None = None, **options: Any) -> Store:
    """Open the store named by ``url`` (see the module docstring for the schemes).

    ``create=False`` is for commands that only read: a sqlite file that does not exist is refused
    (:class:`ConfigError` naming the path) instead of being created empty. ``token``: the bearer token of
    a ``tracerl serve --token`` store (``http://`` only; default: the ``TRACERL_TOKEN`` variable)."""
    if not isinstance(cast(object, url), str) or "://" not in url:  # callers may pass anything
        raise ConfigError(
            f"store URL {url!r} has no scheme; use memory://, sqlite:///path.db, postgresql://... or http://host:port"
        )
    scheme = url.split("://", 1)[0].lower()
    if token is not None and scheme not in ("http", "https"):
        raise ConfigError(
            f"a token is for http:// stores (a `tracerl serve --token` server); {scheme}:// stores take none"
        )
    if scheme == "memory":
        from tracerl.store.memory import MemoryStore

        return MemoryStore(url, **options)
    if scheme == "sqlite":
        from tracerl.store.sqlite import SqliteStore

        return SqliteStore(url, create=create, **options)
    if scheme in ("postgres", "postgresql"):
        from tracerl.store.postgres import PostgresStore

        return PostgresStore(url, **options)
    if scheme in ("http", "https"):
        from tracerl.store.http import HttpStore

        return HttpStore(url, token=token, **options)
    raise ConfigError(
        f"unknown store scheme {scheme!r} in {url!r}; use memory://, sqlite:///path.db, postgresql://... or http://host:port"
    )
