"""In-memory store backend (``memory://``): for tests and quick scripts in one process.

A private SQLite database in memory (``sqlite:///:memory:``) behind the same code as the file backend, so
``memory://`` behaves exactly like the durable stores (JSON values, float32 log-probs, the status machine,
span order) with no code of its own to keep in step. Measured with ``tracerl bench store`` against the
dict-based backend it replaced: the same CPU per lifecycle, within the noise of this machine (see
``docs``/the issue 9 note). Nothing survives the process, so use ``sqlite:///path`` for anything you want
to keep.
"""

from __future__ import annotations

from tracerl.store.sqlite import SqliteStore


class MemoryStore(SqliteStore):
    """The store in a private in-memory SQLite database; gone when the store is closed."""

    def __init__(self, url: str = "memory://", *, poll_s: float = 0.25) -> None:
        """``poll_s``: how often a waiting claimer re-checks for leases that ran out (nothing else can change
        the database without waking it)."""
        super().__init__("sqlite:///:memory:", poll_s=poll_s)
        self.url = url
