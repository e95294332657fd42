"""Runners claim in batches and hold claims for busy workers (``tracerl.runner.prefetch``): on real sqlite and
postgres stores, with real runner and agent processes — no rollout runs twice, held claims keep their leases
(heartbeated) and go back to the queue on stop (released at no cost) or, after ``kill -9``, when their leases
run out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tracerl
from postgres_schemas import fresh_schema
from tracerl.runner import Runner
from tracerl.store import Store
from tracerl.types import AttemptStatus, RolloutSpec, RolloutStatus

pytestmark = pytest.mark.timeout(240)


AGENT = """
import os
import time


def logged(task, llm):
    # one line per run of the agent: which rollout, which attempt (a rollout run twice shows up twice)
    with open(os.path.join(task["dir"], f"{os.getpid()}.runs"), "a") as f:
        f.write(f"{llm.rollout_id} {llm.attempt_id}\\n")
    if os.environ.get("PREFETCH_TEST_SLOW") == "1":
        time.sleep(task.get("sleep", 0.0))
    return 1.0
"""


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with fresh_schema("tracerl_prefetch") as (url, _):
        yield url


@pytest.fixture
def agent_dir(agent_module: Callable[[str, str], Path]) -> Path:
    return agent_module("prefetch_agent", AGENT)


def runs(folder: Path) -> list[tuple[str, str]]:
    """Every run of the agent recorded in ``folder``: ``(rollout_id, attempt_id)``."""
    lines = [line for f in folder.glob("*.runs") for line in f.read_text().splitlines()]
    return [(rid, aid) for rid, aid in (line.split() for line in lines)]


def start_cli_runner(url: str, agent_dir: Path, *extra: str, slow: bool = False) -> subprocess.Popen[bytes]:
    src = str(Path(tracerl.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "PREFETCH_TEST_SLOW": "1" if slow else "0"}
    cmd = [sys.executable, "-m", "tracerl", "runner", "--agent", "prefetch_agent:logged", "--store", url,
           "--app-dir", str(agent_dir), *extra]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_cli_runner(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return err.decode()


def test_two_runner_processes_run_every_rollout_exactly_once(store_url: str, agent_dir: Path) -> None:
    store = tracerl.connect(store_url)
    try:
        ids = [r.rollout_id for r in store.enqueue([RolloutSpec(task={"dir": str(agent_dir)}) for _ in range(40)])]
        procs = [start_cli_runner(store_url, agent_dir, "-n", "3", "--prefetch", "3") for _ in range(2)]
        try:
            done = store.wait(ids, timeout_s=180)
        finally:
            logs = [stop_cli_runner(p) for p in procs]
        assert [r.status for r in done] == [RolloutStatus.SUCCEEDED] * 40, logs
        ran = runs(agent_dir)
        assert sorted(rid for rid, _ in ran) == sorted(ids)  # each rollout ran once, none twice
        for rid in ids:  # one attempt each: nothing expired, nothing was retried
            [a] = store.get_attempts(rid)
            assert a.status is AttemptStatus.SUCCEEDED
        assert all(p.returncode == 0 for p in procs), logs
    finally:
        store.close()


def test_held_claims_are_heartbeated_while_the_worker_is_busy(store_url: str, agent_dir: Path) -> None:
    """One worker, 3 rollouts of 2 s each, a 1 s lease: the two claims held while the first runs would run
    out without heartbeats; every rollout succeeds on its first attempt."""
    os.environ["PREFETCH_TEST_SLOW"] = "1"  # inherited by the agent worker process
    store = tracerl.connect(store_url)
    try:
        ids = [r.rollout_id for r in store.enqueue([RolloutSpec(task={"dir": str(agent_dir), "sleep": 2.0})
                                                     for _ in range(3)])]  # fmt: skip
        runner = Runner("prefetch_agent:logged", store_url, n_workers=1, prefetch=2, lease_s=1.0, claim_wait_s=0.1)
        with runner:
            deadline = time.monotonic() + 60
            while runner.claims is not None and runner.claims.claimed < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert runner.claims is not None and runner.claims.held == 2  # claimed at once, two held
            done = store.wait(ids, timeout_s=120)
        assert [r.status for r in done] == [RolloutStatus.SUCCEEDED] * 3
        for rid in ids:
            assert [a.status for a in store.get_attempts(rid)] == [AttemptStatus.SUCCEEDED]  # no lease ran out
        assert runner.claims.dropped == 0
        assert sorted(rid for rid, _ in runs(agent_dir)) == sorted(ids)
    finally:
        os.environ.pop("PREFETCH_TEST_SLOW", None)
        store.close()


def test_stop_releases_held_claims_at_no_cost(store_url: str, agent_dir: Path) -> None:
    os.environ["PREFETCH_TEST_SLOW"] = "1"
    store = tracerl.connect(store_url)
    try:
        specs = [RolloutSpec(task={"dir": str(agent_dir), "sleep": 1.0}, max_attempts=1) for _ in range(4)]
        ids = [r.rollout_id for r in store.enqueue(specs)]
        runner = Runner("prefetch_agent:logged", store_url, n_workers=1, prefetch=3, claim_wait_s=0.1).start()
        try:
            deadline = time.monotonic() + 60
            while not runs(agent_dir) and time.monotonic() < deadline:  # the first rollout is running
                time.sleep(0.05)
            assert runner.claims is not None and runner.claims.held == 3
        finally:
            stats = runner.stop(grace_s=30)
        assert stats.succeeded == 1 and runner.claims.released == 3
        [(first, _)] = runs(agent_dir)
        statuses = Counter(store.get_rollout(rid).status for rid in ids)
        assert statuses == {RolloutStatus.SUCCEEDED: 1, RolloutStatus.QUEUED: 3}
        for rid in ids:
            if rid != first:  # handed back: no attempt recorded, and the one allowed attempt is still there
                assert store.get_attempts(rid) == [] and store.get_rollout(rid).attempts == 0
    finally:
        os.environ.pop("PREFETCH_TEST_SLOW", None)
        store.close()


def _attempts(store: Store, ids: list[str]) -> list[list[AttemptStatus]]:
    return [[a.status for a in store.get_attempts(rid)] for rid in ids]


def test_kill_9_loses_nothing_held_claims_come_back_by_lease_expiry(store_url: str, agent_dir: Path) -> None:
    store = tracerl.connect(store_url)
    try:
        specs = [RolloutSpec(task={"dir": str(agent_dir), "sleep": 3.0}) for _ in range(4)]
        ids = [r.rollout_id for r in store.enqueue(specs)]
        victim = start_cli_runner(store_url, agent_dir, "-n", "1", "--prefetch", "2", "--lease", "2", slow=True)
        try:
            deadline = time.monotonic() + 60
            while sum(s == [AttemptStatus.RUNNING] for s in _attempts(store, ids)) < 3:  # 1 running, 2 held
                assert time.monotonic() < deadline and victim.poll() is None, "the runner did not claim"
                time.sleep(0.05)
            while not runs(agent_dir):  # the agent has started on the first
                time.sleep(0.05)
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
        rescuer = start_cli_runner(store_url, agent_dir, "-n", "2", "--prefetch", "0", "--lease", "10")
        try:
            done = store.wait(ids, timeout_s=120)
        finally:
            log = stop_cli_runner(rescuer)
        assert [r.status for r in done] == [RolloutStatus.SUCCEEDED] * 4, log
        attempts = _attempts(store, ids)
        lost = [s for s in attempts if s[0] is AttemptStatus.UNRESPONSIVE]
        assert len(lost) == 3  # the running one and the two held ones came back when their leases ran out
        assert all(s == [AttemptStatus.UNRESPONSIVE, AttemptStatus.SUCCEEDED] for s in lost)
        assert [AttemptStatus.SUCCEEDED] in attempts  # the fourth was never claimed by the killed runner
    finally:
        store.close()
