"""When rollouts do not finish in time, ``run_rollouts`` cancels them and says so; a cancel that fails is named
in the error, never dropped quietly."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tracerl.errors import Timeout
from tracerl.store.sqlite import SqliteStore
from tracerl.train.launcher import run_rollouts
from tracerl.types import Mode, RolloutQuery, RolloutStatus

pytestmark = pytest.mark.timeout(60)


def _run(store: SqliteStore, on_progress: Callable[[int, int], None] | None = None) -> None:
    run_rollouts(store, [{"q": 1}, {"q": 2}], group_size=2, mode=Mode.TRAIN, resources_version=None, max_attempts=1,
                 timeout_s=0.3, on_progress=on_progress)  # fmt: skip  (no runner: nothing finishes)


def test_rollouts_that_time_out_are_cancelled(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path / 'store.db'}")
    with pytest.raises(Timeout, match=r"4 of 4 rollouts did not finish within 0 s") as err:
        _run(store)
    assert "cancelling" not in str(err.value)
    assert {r.status for r in store.query_rollouts(RolloutQuery(limit=10)).items} == {RolloutStatus.CANCELLED}
    store.close()


def test_a_cancel_that_fails_is_named_in_the_timeout_error(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = SqliteStore(f"sqlite:///{db}", busy_timeout_s=0.2)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)

    def take_the_write_lock(done: int, total: int) -> None:  # as another process writing would, once enqueued
        if not holder.in_transaction:
            holder.execute("BEGIN IMMEDIATE")

    with pytest.raises(Timeout, match=r"cancelling 4 of them failed too \(ro") as err:
        _run(store, take_the_write_lock)
    assert "locked" in str(err.value)
    holder.execute("ROLLBACK")
    holder.close()
    assert {r.status for r in store.query_rollouts(RolloutQuery(limit=10)).items} == {RolloutStatus.QUEUED}
    store.close()
