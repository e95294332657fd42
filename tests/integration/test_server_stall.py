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


def test_light_requests_are_not_held_up_by_a_huge_query(tmp_path: Path) -> None:
    """While one client reads a 10,000-rollout page, light requests (``get_rollout``, a store call, and
    ``/healthz``) keep flowing: none waits for the huge one. Measured as a ratio in the same run: the slowest
    light round trip against the huge query's own time. Before heavy reads had a lane of their own (and were
    encoded off the event loop) a light call queued behind the huge one: 0.81-0.92 of it; now ≈0.25-0.35."""
    with start_server(f"sqlite:///{tmp_path / 'store.db'}") as server, httpx.Client(base_url=server.url) as http:
        for _ in range(10):
            specs = [{"task": {"text": "x" * 1000}} for _ in range(1000)]
            assert http.post("/api/v1/rollouts", json={"specs": specs}, timeout=120).status_code == 200
        rid = http.post("/api/v1/rollouts/query", json={"limit": 1}).json()["items"][0]["rollout_id"]
        ratios: list[float] = []
        for _ in range(3):
            window: list[float] = []
            done = threading.Event()

            def greedy(window: list[float] = window, done: threading.Event = done) -> None:
                with httpx.Client(base_url=server.url, timeout=120) as own:
                    window.append(time.monotonic())
                    resp = own.post("/api/v1/rollouts/query", json={"limit": 10_000})
                    window.append(time.monotonic())
                    assert resp.status_code == 200 and len(resp.json()["items"]) == 10_000
                done.set()

            thread = threading.Thread(target=greedy)
            thread.start()
            slowest = 0.0
            while not done.is_set():
                t0 = time.monotonic()
                assert http.get(f"/api/v1/rollouts/{rid}", timeout=120).status_code == 200
                assert http.get("/healthz", timeout=120).status_code == 200
                slowest = max(slowest, time.monotonic() - t0)
            thread.join()
            ratios.append(slowest / (window[1] - window[0]))
        assert min(ratios) < 0.6, f"a light request took this share of a huge query's time: {ratios}"
