"""Nothing a store call waits for may stall ``tracerl serve``: ``/healthz`` and other requests keep answering."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tracerl.server.testing import start_server

pytestmark = pytest.mark.timeout(120)

HOLD_S = 4.0


def test_healthz_answers_fast_while_another_process_holds_the_sqlite_write_lock(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with start_server(f"sqlite:///{db}") as server:
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # what another process writing would hold
        enqueued: list[httpx.Response] = []
        writer = threading.Thread(
            target=lambda: enqueued.append(
                httpx.post(f"{server.url}/api/v1/rollouts", json={"specs": [{"task": {"q": 1}}]}, timeout=60)
            )
        )
        started = time.monotonic()
        writer.start()
        time.sleep(0.5)  # the enqueue is now waiting for the lock inside the server
        took = []
        for _ in range(3):
            t0 = time.monotonic()
            assert httpx.get(f"{server.url}/healthz", timeout=60).status_code == 200
            took.append(time.monotonic() - t0)
        still_waiting = writer.is_alive()
        time.sleep(max(0.0, HOLD_S - (time.monotonic() - started)))
        holder.execute("COMMIT")
        holder.close()
        writer.join(30)
        assert max(took) < 0.5, f"/healthz took {max(took):.2f} s while a store call waited for the lock"
        assert still_waiting, "the enqueue should have waited for the lock"
        assert enqueued and enqueued[0].status_code == 200, enqueued  # the waiting write went through after
        page = httpx.post(f"{server.url}/api/v1/rollouts/query", json={}).json()
        assert page["total"] == 1
