"""Nothing a store call waits for may stall ``tracerl serve``: ``/healthz`` and other requests keep answering."""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tracerl import connect
from tracerl.bench import stall
from tracerl.server.testing import start_server
from tracerl.types import RolloutSpec

pytestmark = pytest.mark.timeout(240)

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


def test_one_greedy_client_cannot_take_most_of_the_server_from_light_ones(tmp_path: Path) -> None:
    """Light clients (separate processes looping ``get_rollout``) keep most of their rate while one more process
    loops ``query(limit=10000)``; measured as a ratio in one run, alone and beside the greedy client in turn.
    While the 10,000-row pages were read and encoded in the server's own process (a thread), their Python
    work held the GIL and the light rate fell to 0.02-0.51 of its rate alone (``tracerl bench stall``); with
    heavy reads in a child process, 0.6-0.9."""
    args = argparse.Namespace(light=4, seconds=2.0)
    url = _filled(tmp_path, 10_000)
    with start_server(url) as server, httpx.Client(base_url=server.url) as http:
        rid = http.post("/api/v1/rollouts/query", json={"limit": 1}).json()["items"][0]["rollout_id"]
        _wait_for_reader(server.proc.pid if server.proc else 0, http)
        rates: list[tuple[float, float]] = []
        pages = 0
        for _ in range(2):  # interleaved, so a change in the machine's load hits both phases alike
            alone = stall._phase(server.port, rid, args, greedy=False)["req_per_s"]
            beside = stall._phase(server.port, rid, args, greedy=True)
            rates.append((alone, beside["req_per_s"]))
            pages += int(beside["greedy_pages"])
    ratio = sum(b for _, b in rates) / sum(a for a, _ in rates)
    assert pages >= 2, f"the greedy client should have read pages too (light req/s alone, beside: {rates})"
    assert ratio > 0.55, f"light clients kept only {ratio:.2f} of their rate beside a greedy one (req/s: {rates})"


def _filled(tmp_path: Path, n: int) -> str:
    """A sqlite store URL holding ``n`` queued rollouts with ≈1 KB tasks (written in-process: faster than HTTP)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = connect(url)
    for i in range(0, n, 1000):
        store.enqueue([RolloutSpec(task={"text": "x" * 1000}) for _ in range(min(1000, n - i))])
    store.close()
    return url


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s multiprocessing workers (not its resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
            found.append(int(stat.parent.name))
    return found


def _wait_for_reader(pid: int, http: httpx.Client) -> int:
    """Make heavy reads until the server's heavy-reads child process is up and has answered; its pid."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert http.post("/api/v1/rollouts/query", json={"limit": 1000}, timeout=120).status_code == 200
        children = _children(pid)
        if children:
            for _ in range(3):  # the child answers these once it has opened the store
                assert http.post("/api/v1/rollouts/query", json={"limit": 1000}, timeout=120).status_code == 200
            return children[0]
        time.sleep(0.2)
    raise AssertionError("the server started no heavy-reads process")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_heavy_reads_run_in_a_child_that_sees_every_write_comes_back_and_ends_with_the_server(tmp_path: Path) -> None:
    url = _filled(tmp_path, 1000)
    with start_server(url) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        assert server.proc is not None
        child = _wait_for_reader(server.proc.pid, http)
        for i in range(3):  # a write is visible to the very next heavy read
            http.post("/api/v1/rollouts", json={"specs": [{"task": {"i": i}}]}).raise_for_status()
            page = http.post("/api/v1/rollouts/query", json={"limit": 5000}).json()
            assert page["total"] == len(page["items"]) == 1001 + i
            assert page["items"][-1]["task"] == {"i": i}
        spans = http.get("/api/v1/spans", params={"rollout_id": page["items"][0]["rollout_id"]})
        assert spans.status_code == 200 and spans.json() == {"spans": []}
        os.kill(child, signal.SIGKILL)
        codes = [http.post("/api/v1/rollouts/query", json={"limit": 5000}).status_code for _ in range(3)]
        assert codes[0] in (200, 503) and codes[1:] == [200, 200], codes  # at most one request sees the loss
        second = _wait_for_reader(server.proc.pid, http)
        assert second != child
        assert http.get("/healthz").status_code == 200
        server.kill()  # SIGKILL: the child must not outlive the server
        deadline = time.monotonic() + 10
        while _alive(second) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(second), "the heavy-reads process outlived a SIGKILLed server"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
